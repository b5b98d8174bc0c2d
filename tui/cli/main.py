"""The `llama-tui` entry point: argument parsing, config resolution, one-line errors."""

from __future__ import annotations

import argparse
import atexit
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import (
    Profile,
    ServerError,
    UserError,
    find_config_path,
    load_config,
    resolve_profile,
)

if TYPE_CHECKING:
    from tui.app.app import LlamaTuiApp

SAMPLING_FLAGS = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "seed")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        help="a .gguf file, a Meta checkpoint folder or a Hugging Face folder "
        "(default: the embedded SmolLM2-135M-Instruct)",
    )
    p.add_argument("--tokenizer", help="tokenizer file for a Meta/HF folder (default: beside it)")
    p.add_argument(
        "--chat-format",
        help="auto | template | llama2 | llama3 | chatml | raw (auto: the model's template, "
        "else from its tokenizer)",
    )
    p.add_argument("--profile", help="profile name from the config file")
    p.add_argument("--config", type=Path, help="config file (default: ./llama-tui.toml)")
    p.add_argument("--system", dest="system_prompt", help="system prompt")
    p.add_argument("--device", help="cpu | cuda | cuda:N | auto")
    p.add_argument("--dtype", help="float32 | bfloat16 | float16 | auto")
    p.add_argument(
        "--quantization",
        help="none | int8 | nf4: bitsandbytes layers for the block projections "
        "(pip install 'llama-tui[bnb]')",
    )
    p.add_argument(
        "--offload",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="CUDA: keep the blocks' weights in CPU memory and stream them to the GPU",
    )
    p.add_argument(
        "--offload-exclusion",
        metavar="W1,W2",
        help="with --offload: block weights kept on the GPU (wq wk wv wo w1 w2 w3 "
        "attention_norm ffn_norm), comma-separated",
    )
    p.add_argument("--context-length", type=int, help="tokens the KV cache holds")
    p.add_argument(
        "--native-4bit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bfloat16 on CPU: run Q4_0/Q4_1 blocks 4-bit on the int4 kernel (default on)",
    )
    p.add_argument("--max-new-tokens", type=int, help="most tokens per reply")
    p.add_argument("--temperature", type=float, help="0 = greedy")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--min-p", type=float)
    p.add_argument("--repeat-penalty", type=float)
    p.add_argument("--seed", type=int, help="same seed and settings give the same tokens")
    p.add_argument("--raw", action="store_true", help="no chat template: free-form completion")
    p.add_argument("--json", action="store_true", help="print one JSON object per reply")


def _data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        help="where conversations are saved (default: $LLAMA_TUI_DATA_DIR, else the user data dir)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llama-tui", description="Chat with Llama-family models in the terminal."
    )
    sub = parser.add_subparsers(dest="command")
    ask = sub.add_parser("ask", help="answer one prompt and exit")
    _common(ask)
    ask.add_argument("prompt", help="the prompt ('-' reads it from stdin)")
    prepare = sub.add_parser(
        "prepare",
        help="write the weights cache and build the compiled decode step now, so the next ask "
        "or chat starts on them",
    )
    _common(prepare)
    chat = sub.add_parser("chat", help="chat; --plain for line mode (one stdin line per turn)")
    _common(chat)
    chat.add_argument("--plain", action="store_true", help="line mode for pipes and dumb terminals")
    chat.add_argument("--no-save", action="store_true", help="do not save the chat")
    _data_dir(chat)
    history = sub.add_parser(
        "history", help="list, show, search, export or import saved conversations"
    )
    hsub = history.add_subparsers(dest="history_command", required=True)
    _data_dir(hsub.add_parser("list", help="one saved conversation per line, newest first"))
    show = hsub.add_parser("show", help="print a conversation's messages")
    show.add_argument("id", type=int)
    _data_dir(show)
    export = hsub.add_parser("export", help="print a conversation as Markdown or JSON")
    export.add_argument("id", type=int)
    export.add_argument("--format", choices=("md", "json"), default="md")
    export.add_argument(
        "--code", action="store_true", help="only the replies' fenced code blocks, in order"
    )
    _data_dir(export)
    search = hsub.add_parser("search", help="messages matching every word, best match first")
    search.add_argument("query", nargs="+", help="words to find (whole words)")
    search.add_argument("--limit", type=int, default=50, help="most hits (default 50)")
    _data_dir(search)
    imp = hsub.add_parser(
        "import", help='a llama-tui JSON export, or an OpenAI-style {"messages": [...]} file'
    )
    imp.add_argument("file", type=Path)
    _data_dir(imp)
    serve = sub.add_parser("serve", help="serve the local engine over an OpenAI-compatible API")
    _common(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    serve.add_argument("--port", type=int, default=8090)
    serve.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="require a bearer key: the one in environment variable NAME",
    )
    models = sub.add_parser("models", help="list the models a profile's server offers")
    models.add_argument("--profile", help="profile name from the config file")
    models.add_argument("--config", type=Path, help="config file (default: ./llama-tui.toml)")
    bench = sub.add_parser("bench", help="measure load, prefill and decode speed vs transformers")
    _common(bench)
    bench.add_argument("--tokens", type=int, default=128, help="tokens to decode")
    bench.add_argument("--runs", type=int, default=3, help="timed runs (median is reported)")
    bench.add_argument("--no-peers", action="store_true", help="skip the transformers run")
    bench.add_argument("--threads", type=int, help="threads for every engine (torch, llama.cpp)")
    bench.add_argument(
        "--shape",
        help="placement table on a random-weight model of these Llama dimensions "
        "(7b, 13b, 1b, 135m, tiny) instead of the speed comparison",
    )
    bench.add_argument(
        "--modes",
        help="with --shape: comma-separated modes (gpu, int8, nf4, off_all, off_ff, off_att, "
        "off_att_int8, cpu, cpu_bf16, cpu_int8, cpu_nf4); default: all for this machine",
    )
    bench.add_argument(
        "--prompt-tokens", type=int, help="prompt length (--shape: default 128; --vs: 256)"
    )
    bench.add_argument(
        "--conversation",
        action="store_true",
        help="time to first token over a long chat with trims, cache vs re-prefill each turn",
    )
    bench.add_argument("--turns", type=int, default=30, help="--conversation: user turns")
    bench.add_argument(
        "--remote",
        metavar="PROFILE",
        help="the standard prompt through this remote profile and the local engine side by side",
    )
    bench.add_argument(
        "--vs",
        metavar="ENGINES",
        help="compare with peers, each in its own processes: llama.cpp, transformers "
        "(comma-separated)",
    )
    bench.add_argument(
        "--speculative",
        action="store_true",
        help="prompt-lookup decoding vs plain decoding on a rewrite, a code edit and an open "
        "question",
    )
    bench.add_argument(
        "--sampling",
        choices=("greedy", "default"),
        default="greedy",
        help="--vs, --speculative: greedy, or the profile's sampler chain (top-k, top-p, "
        "min-p, ...) everywhere",
    )
    bench.add_argument(
        "--processes", type=int, default=3, help="--vs: processes per engine, interleaved"
    )
    bench.add_argument(
        "--max-other-load",
        type=float,
        default=0.10,
        help="--vs, --speculative: drop samples taken while other processes used more of the "
        "CPU than this",
    )
    return parser


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    keys: tuple[str, ...] = (
        "model",
        "device",
        "dtype",
        "context_length",
        "native_4bit",
        "max_new_tokens",
    )
    keys += ("quantization", "offload", "offload_exclusion")
    keys += ("system_prompt", "tokenizer", "chat_format")
    out: dict[str, Any] = {k: getattr(args, k) for k in keys + SAMPLING_FLAGS}
    if args.raw:
        out["chat_template"] = False
    return {k: v for k, v in out.items() if v is not None}


def load_profile(args: argparse.Namespace) -> Profile:
    """The profile the command runs: config file (found as documented), then the CLI flags."""
    config = load_config(find_config_path(args.config))
    return resolve_profile(config, args.profile, overrides_from(args))


def app_from_args(args: argparse.Namespace) -> LlamaTuiApp:
    """The Textual app for the CLI's profile and flags (--data-dir and --no-save included)."""
    from tui.app.app import make_app

    return make_app(
        args.profile,
        args.config,
        overrides_from(args),
        data_dir=args.data_dir,
        save=not args.no_save,
    )


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    commands = ("ask", "chat", "prepare", "history", "serve", "models", "bench", "-h", "--help")
    if not words or words[0] not in commands:  # no command: chat, with chat's flags
        words = ["chat", *([] if interactive else ["--plain"]), *words]
    args = build_parser().parse_args(words)
    try:
        return dispatch(args, interactive)
    except ServerError as exc:  # the server's fault, not the configuration's
        print(f"llama-tui: error: {exc}", file=sys.stderr)
        return 1
    except UserError as exc:
        print(f"llama-tui: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head -1`): stop quietly, as `cat` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error later
        return 128 + 13  # SIGPIPE's exit status


def dispatch(args: argparse.Namespace, interactive: bool) -> int:
    """Run one command; each front end is imported only when it is the one asked for."""
    if args.command == "history":
        from tui.cli.history import run_history

        return run_history(args)
    if args.command == "chat" and not args.plain and not args.json and interactive:
        app = app_from_args(args)
        app.run()  # the Textual app; line mode otherwise
        for line in app.exit_notes:  # e.g. where a chat the store could not take was exported
            print(f"llama-tui: note: {line}", file=sys.stderr)
        return app.return_code or 0
    if args.command == "models":
        from tui.cli.plain import run_models

        config = load_config(find_config_path(args.config))
        return run_models(resolve_profile(config, args.profile, {}))
    if args.command == "bench" and args.shape:
        from tui.bench.placement import run_placement_bench

        return run_placement_bench(args)
    profile = load_profile(args)
    if args.command == "serve":
        from tui.serve.run import run_serve

        return run_serve(args, profile)
    if args.command == "bench":
        if args.remote:
            from tui.bench.remote import run_remote_bench

            config = load_config(find_config_path(args.config))
            return run_remote_bench(args, profile, resolve_profile(config, args.remote, {}))
        if args.conversation:
            from tui.bench.conversation import run_conversation_bench

            return run_conversation_bench(args, profile)
        if args.vs:
            from tui.bench.vs import run_vs

            return run_vs(args, profile)
        if args.speculative:
            from tui.bench.speculative import run_speculative_bench

            return run_speculative_bench(args, profile)
        from tui.bench.speed import run_bench

        return run_bench(args, profile)
    if args.command == "prepare":
        from tui.cli.prepare import run_prepare

        return run_prepare(profile)
    from tui.cli import plain

    if args.command == "ask":
        return plain.run_ask(args, profile)
    personas = load_config(find_config_path(args.config)).prompts  # read again: it is small
    return plain.run_chat(args, profile, personas=personas)


def run() -> None:
    """The console entry point: ``main``, then ``os._exit`` once the output is flushed.

    The interpreter's own teardown after the last line (freeing torch's modules one by one)
    took about 0.6 s of an `ask`'s 3 s; the exit handlers (logging, temporary folders) still
    run. While engine work runs in the background (the compiled step's build), they are
    skipped as well: a daemon thread inside native code at shutdown aborts the process
    (engine/background.py)."""
    import engine  # its background module is light: no torch

    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a reader that went away: nothing left to write to
            pass
    if not engine.background_busy():
        atexit._run_exitfuncs()
    os._exit(code)


if __name__ == "__main__":
    run()
