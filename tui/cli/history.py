"""`llama-tui history list | show | search | export | import`: saved conversations on the
command line."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TextIO

from engine import MARK, ConversationStore, code_blocks, open_store, read_import


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def run_history(args: argparse.Namespace) -> int:
    """`llama-tui history list | show ID | search QUERY | export ID [--format md|json]
    [--code] | import FILE`."""
    data_dir: Path | None = args.data_dir
    if args.history_command == "import":
        data = read_import(args.file)  # checked before the store is touched
    store = open_store(data_dir)
    if store.notice:  # a broken file moved aside, a newer release's store opened read-only
        print(f"llama-tui: note: {store.notice}", file=sys.stderr)
    out = sys.stdout
    if args.history_command == "list":
        for c in store.list_conversations():
            fork = "" if c["parent_id"] is None else f"\t↳ fork of #{c['parent_id']}"
            out.write(
                f"{c['id']}\t{_when(c['updated'])}\t{c['message_count']} msgs\t{c['title']}{fork}\n"
            )
    elif args.history_command == "show":
        for m in store.messages(args.id):
            stopped = " [stopped]" if m["stopped"] else ""
            out.write(f"{m['role']}: {m['content']}{stopped}\n")
    elif args.history_command == "search":
        search(store, " ".join(args.query), args.limit, out)
    elif args.history_command == "import":
        conv = store.import_conversation(data)
        print(f"imported {args.file} as conversation #{conv} ({len(data['messages'])} messages)")
    elif args.code:
        blocks = [
            block
            for m in store.messages(args.id)
            if m["role"] == "assistant"
            for block in code_blocks(m["content"])
        ]
        out.write("\n".join(block.code + "\n" for block in blocks))
    elif args.format == "json":
        out.write(json.dumps(store.export_json(args.id), ensure_ascii=False, indent=2) + "\n")
    else:
        out.write(store.export_markdown(args.id))
    store.close()
    return 0


def search(store: ConversationStore, query: str, limit: int, out: TextIO) -> None:
    """One hit per line: conversation id, message number (from 1), role, and the snippet with
    each match in [brackets] (bold on a terminal)."""
    start, end = ("\x1b[1m", "\x1b[0m") if out.isatty() else ("[", "]")
    for hit in store.search(query, limit):
        snippet = " ".join(hit["snippet"].split()).replace(MARK[0], start).replace(MARK[1], end)
        out.write(f"{hit['conversation_id']}\t{hit['seq'] + 1}\t{hit['role']}\t{snippet}\n")
