"""The store's defences: checking a file at open, moving a broken one aside, waiting out busy.

No schema here (engine/store.py has it): these helpers only know SQLite and the file system.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

SQLITE_BUSY, SQLITE_LOCKED, SQLITE_CORRUPT, SQLITE_NOTADB = 5, 6, 11, 26
BUSY_RETRIES = 3  # after the busy timeout ran out, tries more before a write gives up
BROKEN_SUFFIXES = ("", "-wal", "-shm")  # the database and the files SQLite keeps beside it


class BrokenStore(Exception):
    """The file is not a sound SQLite database (corrupt, truncated, something else)."""

    kept: Path | None = None  # where it was moved aside


def _code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+: the extended result code
    return None if code is None else int(code) & 0xFF


def is_busy(exc: sqlite3.Error) -> bool:
    if _code(exc) is not None:
        return _code(exc) in (SQLITE_BUSY, SQLITE_LOCKED)
    text = str(exc)
    return "locked" in text or "busy" in text


def is_broken(exc: sqlite3.Error) -> bool:
    if _code(exc) is not None:
        return _code(exc) in (SQLITE_CORRUPT, SQLITE_NOTADB)
    text = str(exc)
    return "not a database" in text or "malformed" in text


def quick_check(db: sqlite3.Connection) -> None:
    """PRAGMA quick_check (the first query that reads the file): BrokenStore unless "ok"."""
    try:
        rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        if is_broken(exc):
            raise BrokenStore(str(exc)) from None
        raise
    verdict = [str(row[0]) for row in rows]
    if verdict != ["ok"]:
        first = verdict[0] if verdict else "no answer"
        more = f" and {len(verdict) - 1} more problems" if len(verdict) > 1 else ""
        raise BrokenStore(f"quick_check: {first}{more}")


def move_aside(path: Path) -> Path:
    """Rename a broken store (and its -wal/-shm files) to PATH.broken-TIMESTAMP; the new name."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kept = path.with_name(f"{path.name}.broken-{stamp}")
    n = 1
    while any(Path(f"{kept}{s}").exists() for s in BROKEN_SUFFIXES):
        n += 1
        kept = path.with_name(f"{path.name}.broken-{stamp}-{n}")
    for suffix in BROKEN_SUFFIXES:
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(f"{kept}{suffix}")
    return kept


def retry_busy(action: Callable[[], T], timeout: float, retries: int = BUSY_RETRIES) -> T:
    """Run `action`, again up to `retries` times while SQLite answers busy or locked (each try
    already waited `timeout` inside SQLite's busy handler; a short pause between tries)."""
    for attempt in range(retries + 1):
        try:
            return action()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or attempt == retries:
                raise
            time.sleep(min(0.05 * 2**attempt, max(timeout, 0.05)))
    raise AssertionError("unreachable")
