"""The bad-input corpus, one table: each row a CLI subprocess given one mistake, the exit code
it must end with and a fragment its one-line message must hold (never a traceback). Rows run a
few at a time (they are independent processes)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.cli.test_cli import run

Setup = Callable[[Path, Path], list[str]]  # (folder, tiny model) -> the command's arguments


def file(name: str, data: bytes | str) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return path

    return write


def config(text: str | bytes) -> Setup:
    return lambda d, m: ["ask", "--config", str(file("c.toml", text)(d)), "hi"]


def model(data: Callable[[Path], bytes]) -> Setup:
    return lambda d, m: ["ask", "--model", str(file("bad.gguf", data(m))(d)), "hi"]


ROWS: list[tuple[str, Setup, str, int, str]] = [  # (what, setup, stdin, exit code, fragment)
    ("missing model", lambda d, m: ["ask", "--model", "nope.gguf", "hi"], "", 2, "not found"),
    ("text as a model", model(lambda m: b"not a model"), "", 2, "not a GGUF file"),
    ("prepare a missing model", lambda d, m: ["prepare", "--model", "no.gguf"], "", 2, "no.gguf"),
    ("empty model", model(lambda m: b""), "", 2, "bad.gguf"),
    ("truncated model", model(lambda m: m.read_bytes()[:4096]), "", 2, "truncated"),
    ("model is a folder", lambda d, m: ["ask", "--model", str(d), "hi"], "", 2, "model-is-a"),
    ("TOML syntax", config("[defaults]\ntemperature = = 1\n"), "", 2, "c.toml:2:"),
    ("unknown key", config("[defaults]\ntemprature = 0.5\n"), "", 2, "temprature"),
    ("negative temperature", config("[defaults]\ntemperature = -1\n"), "", 2, "temperature"),
    ("wrong type", config('[defaults]\ntop_k = "many"\n'), "", 2, "top_k"),
    ("top_p out of range", config("[defaults]\ntop_p = 1.5\n"), "", 2, "top_p"),
    ("bad dtype", config('[defaults]\ndtype = "float8"\n'), "", 2, "dtype"),
    ("not UTF-8 config", config(b"[defaults]\n\xff\xfe = 1\n"), "", 2, "c.toml"),
    ("profiles not a table", config("profiles = 3\n"), "", 2, "profiles"),
    ("missing config", lambda d, m: ["ask", "--config", "no.toml", "hi"], "", 2, "no.toml"),
    ("unknown profile", lambda d, m: ["ask", "--profile", "nope", "hi"], "", 2, "nope"),
    ("bad flag value", lambda d, m: ["ask", "--temperature", "-3", "hi"], "", 2, "--temperature"),
    ("bad device", lambda d, m: ["ask", "--model", str(m), "--device", "tpu", "hi"], "", 2, "tpu"),
    (
        "zero context",
        lambda d, m: ["ask", "--model", str(m), "--context-length", "0", "hi"],
        "",
        2,
        "context",
    ),
    (
        "history of a missing id",
        lambda d, m: ["history", "show", "999", "--data-dir", str(d)],
        "",
        2,
        "999",
    ),
    (
        "data dir is a file",
        lambda d, m: ["history", "list", "--data-dir", str(file("f", "x")(d))],
        "",
        2,
        "cannot open",
    ),
]


def test_every_bad_input_is_one_line_and_the_right_exit_code(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    def one(row: tuple[str, Setup, str, int, str]) -> str | None:
        what, setup, stdin, code, fragment = row
        folder = tmp_path / what.replace(" ", "-")
        folder.mkdir()
        proc = run(setup(folder, tiny_gguf), folder, stdin)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        if proc.returncode != code or len(lines) != 1 or "Traceback" in proc.stderr:
            return f"{what}: exit {proc.returncode}, stderr {proc.stderr!r}"
        if fragment not in lines[0] or not lines[0].startswith("llama-tui: error: "):
            return f"{what}: {fragment!r} not in {lines[0]!r}"
        return None

    with ThreadPoolExecutor(4) as pool:
        problems = [p for p in pool.map(one, ROWS) if p]
    assert problems == []
