"""`llama-tui history list | show ID | export ID`: saved conversations on the command line."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from engine import open_store


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def run_history(args: argparse.Namespace) -> int:
    """`llama-tui history list | show ID | export ID [--format md|json]`."""
    data_dir: Path | None = args.data_dir
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
    elif args.history_command == "export":
        if args.format == "json":
            out.write(json.dumps(store.export_json(args.id), ensure_ascii=False, indent=2) + "\n")
        else:
            out.write(store.export_markdown(args.id))
    store.close()
    return 0
