"""ConversationStore: chats on disk in one SQLite file (WAL, so a kill loses at most a second).

Opening checks the file (``PRAGMA quick_check``): a broken one is moved aside, never deleted
(``conversations.sqlite3.broken-TIMESTAMP``), and a fresh store takes its place; ``notice`` says
so in one line. ``PRAGMA user_version`` is the schema version: older files are migrated, a file
from a newer release is opened read-only (its writes refused) rather than migrated blindly.
Several processes may share one store: each write is one short statement, waits up to
BUSY_TIMEOUT_S for a lock and is retried when SQLite still answers busy.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from engine.attachments import Attachment
from engine.errors import UserError
from engine.store_safety import BrokenStore, is_busy, move_aside, quick_check, retry_busy

DB_NAME = "conversations.sqlite3"
ENV_DATA_DIR = "LLAMA_TUI_DATA_DIR"
SCHEMA_VERSION = 2  # PRAGMA user_version this release writes; 0 and 1: older files, migrated
BUSY_TIMEOUT_S = 5.0  # how long one statement waits for another process's lock
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    profile_json TEXT NOT NULL,
    parent_id INTEGER,
    forked_at INTEGER
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    created REAL NOT NULL,
    metrics_json TEXT,
    stopped INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, seq);
"""
# columns added after the first release: (table, column, type); added to older files on open
MIGRATIONS = (
    ("conversations", "parent_id", "INTEGER"),  # the conversation this one was forked from
    ("conversations", "forked_at", "INTEGER"),  # messages[:forked_at] were copied from the parent
    ("conversations", "persona", "TEXT"),  # the [prompts.NAME] persona the chat started with
)
# files sent inside a user message: what was read, and the exact text that went to the model
ATTACHMENTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS attachments (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS attachments_by_message ON attachments(message_id);
"""
# full-text search over every message: an FTS5 index with messages as its external content,
# kept in step by triggers (a streaming reply's rewrites replace its indexed text); each step a
# no-op once done, as two processes opening a new store may both get here
SEARCH_SCHEMA = """
CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts
    USING fts5(content, content='messages', content_rowid='id');
CREATE TRIGGER IF NOT EXISTS messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER IF NOT EXISTS messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
END;
CREATE TRIGGER IF NOT EXISTS messages_fts_update AFTER UPDATE OF content ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
    INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
END;
INSERT INTO messages_fts(messages_fts) VALUES ('rebuild');
"""
MARK = ("\x02", "\x03")  # around a match in a search snippet (front ends pick the look)
SNIPPET_TOKENS = 12


def data_dir(flag: Path | None = None) -> Path:
    """--data-dir, else $LLAMA_TUI_DATA_DIR, else the platform's user data folder."""
    if flag is not None:
        return flag
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env)
    import platformdirs

    return platformdirs.user_data_path("llama-tui")


def open_store(flag: Path | None = None) -> ConversationStore:
    return ConversationStore(data_dir(flag) / DB_NAME)


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


class ConversationStore:
    def __init__(self, path: Path, busy_timeout: float = BUSY_TIMEOUT_S) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.notice: str | None = None  # one line for the user: moved aside, opened read-only
        self.read_only = False  # a newer release's file: read, never written
        self.searchable = False  # the FTS5 index exists (set at open)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.db = retry_busy(self._open, busy_timeout)
            except BrokenStore as broken:
                self.notice = (
                    f"{path} was broken ({broken}): moved aside to {broken.kept} (kept, not"
                    " deleted); a new empty store was created"
                )
                self.db = retry_busy(self._open, busy_timeout)
        except (OSError, sqlite3.Error) as exc:
            raise UserError(f"cannot open conversation store {path}: {exc}") from None

    def _open(self) -> sqlite3.Connection:
        """A checked connection: BrokenStore when the file is not a sound database."""
        db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            try:
                quick_check(db)
            except BrokenStore as broken:  # moved while still open: SQLite deletes a -wal
                broken.kept = move_aside(self.path)  # file when its last connection closes
                raise
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                db.close()
                return self._open_read_only(version)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.executescript(SCHEMA)  # each step a no-op once done
            self._migrate(db)
            if version < SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        return db

    def _open_read_only(self, version: int) -> sqlite3.Connection:
        self.read_only = True
        self.notice = (
            f"{self.path} is from a newer llama-tui (schema version {version}; this one knows"
            f" up to {SCHEMA_VERSION}): opened read-only, nothing in it is changed; upgrade"
            " llama-tui to save there, or pass --data-dir for another store"
        )
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        db = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout, isolation_level=None)
        db.row_factory = sqlite3.Row
        fts = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'messages_fts'").fetchone()
        self.searchable = fts is not None
        return db

    def close(self) -> None:
        self.db.close()

    def _migrate(self, db: sqlite3.Connection) -> None:
        """The columns that MIGRATIONS adds, where they are missing. Two processes opening one
        older (or new) file at once both saw a column missing, and the second ALTER failed
        ("duplicate column name"): the columns are looked at again under the write lock."""
        if not all(column in _columns(db, table) for table, column, _ in MIGRATIONS):
            db.execute("BEGIN IMMEDIATE")  # another process's migration waits, or is found done
            try:
                for table, column, kind in MIGRATIONS:
                    if column not in _columns(db, table):
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        self._migrate_search(db)

    def _migrate_search(self, db: sqlite3.Connection) -> None:
        """The attachments table, and the search index built over what the file holds already
        (once: a store from before search gets its index on first open)."""
        db.executescript(ATTACHMENTS_SCHEMA)
        self.searchable = True
        have = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'messages_fts'").fetchone()
        if have is None:
            try:
                # under the write lock: another process's creation waits or is found done
                db.executescript(f"BEGIN IMMEDIATE; {SEARCH_SCHEMA} COMMIT;")
            except sqlite3.OperationalError as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if "fts5" not in str(exc):
                    raise
                self.searchable = False  # this SQLite has no FTS5: chats work, search says so

    def _write(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Cursor:
        """One write statement (autocommit: it lands on its own), retried while SQLite answers
        busy; UserError naming the store when it cannot be written (disk full, read-only)."""
        if self.read_only:
            raise UserError(self.notice or f"{self.path} is read-only")
        return self._retrying(lambda: self.db.execute(sql, params))

    def _retrying(self, write: Callable[[], T]) -> T:
        try:
            return retry_busy(write, self.busy_timeout)
        except sqlite3.Error as exc:
            how = "busy: another process holds it" if is_busy(exc) else str(exc)
            raise UserError(f"cannot write conversation store {self.path}: {how}") from None

    def new_conversation(
        self, title: str, profile: dict[str, Any], persona: str | None = None
    ) -> int:
        now = time.time()
        cur = self._write(
            "INSERT INTO conversations (title, created, updated, profile_json, persona)"
            " VALUES (?,?,?,?,?)",
            (title, now, now, json.dumps(profile, default=str), persona),
        )
        return int(cur.lastrowid or 0)

    def add_attachment(
        self, msg_id: int, path: str, size: int, sha256: str, tokens: int, text: str
    ) -> None:
        """A file sent inside user message `msg_id`: where it was read, its size and hash, its
        token count and the text the model was given."""
        self._write(
            "INSERT INTO attachments (message_id, path, size, sha256, tokens, text)"
            " VALUES (?,?,?,?,?,?)",
            (msg_id, path, size, sha256, tokens, text),
        )

    def attached(self, msg_id: int) -> tuple[Attachment, ...]:
        """The files sent inside message `msg_id`, in the order they were attached."""
        return tuple(
            Attachment(a["path"], a["size"], a["sha256"], a["text"], a["tokens"])
            for a in self.attachments(msg_id)
        )

    def attachments(self, msg_id: int) -> list[sqlite3.Row]:
        return self.db.execute(
            "SELECT * FROM attachments WHERE message_id = ? ORDER BY id", (msg_id,)
        ).fetchall()

    def search(self, query: str, limit: int = 50, prefix: bool = False) -> list[sqlite3.Row]:
        """Messages matching every word of `query` (`prefix`: words may be word starts, as
        while typing), best match first (FTS5's bm25): conversation_id, title, seq, role and
        a snippet with each match between MARK's two characters."""
        if not self.searchable:
            raise UserError(
                f"search needs SQLite's FTS5, which this Python's sqlite3 "
                f"({sqlite3.sqlite_version}) lacks: use a Python built with FTS5 (python.org and "
                "most distributions have it)"
            )
        match = fts_query(query, prefix)
        if not match:
            return []
        start, end = MARK
        return self.db.execute(
            "SELECT m.conversation_id, c.title, m.id, m.seq, m.role,"
            f" snippet(messages_fts, 0, '{start}', '{end}', '…', {SNIPPET_TOKENS}) AS snippet"
            " FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid"
            " JOIN conversations c ON c.id = m.conversation_id"
            " WHERE messages_fts MATCH ? ORDER BY bm25(messages_fts), m.id LIMIT ?",
            (match, limit),
        ).fetchall()

    def add_message(
        self, conv: int, role: str, content: str, metrics: dict[str, Any] | None = None
    ) -> int:
        self.get(conv)
        now = time.time()
        cur = self._write(  # one statement: its seq cannot race another writer's
            "INSERT INTO messages (conversation_id, seq, role, content, created, metrics_json)"
            " SELECT ?, COALESCE(MAX(seq), -1) + 1, ?, ?, ?, ? FROM messages"
            " WHERE conversation_id = ?",
            (conv, role, content, now, _dump(metrics), conv),
        )
        self._write("UPDATE conversations SET updated = ? WHERE id = ?", (now, conv))
        return int(cur.lastrowid or 0)

    def update_message(
        self,
        msg_id: int,
        content: str,
        metrics: dict[str, Any] | None = None,
        stopped: bool = False,
    ) -> None:
        self._write(
            "UPDATE messages SET content = ?, metrics_json = COALESCE(?, metrics_json),"
            " stopped = ? WHERE id = ?",
            (content, _dump(metrics), int(stopped), msg_id),
        )
        self._write(
            "UPDATE conversations SET updated = ? WHERE id ="
            " (SELECT conversation_id FROM messages WHERE id = ?)",
            (time.time(), msg_id),
        )

    def get(self, conv: int) -> sqlite3.Row:
        row = self.db.execute("SELECT * FROM conversations WHERE id = ?", (conv,)).fetchone()
        if row is None:
            raise UserError(f"no conversation with id {conv} in {self.path}")
        return row  # type: ignore[no-any-return]

    def exists(self, conv: int) -> bool:
        return (
            self.db.execute("SELECT 1 FROM conversations WHERE id = ?", (conv,)).fetchone()
            is not None
        )

    def list_conversations(self) -> list[sqlite3.Row]:
        """Newest first, each with a message count."""
        return self.db.execute(
            "SELECT c.*, (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id)"
            " AS message_count FROM conversations c ORDER BY c.updated DESC, c.id DESC"
        ).fetchall()

    def messages(self, conv: int) -> list[sqlite3.Row]:
        self.get(conv)
        return self.db.execute(
            "SELECT * FROM messages WHERE conversation_id = ? ORDER BY seq", (conv,)
        ).fetchall()

    def rename(self, conv: int, title: str) -> None:
        self.get(conv)
        self._write("UPDATE conversations SET title = ? WHERE id = ?", (title, conv))

    def set_persona(self, conv: int, persona: str | None) -> None:
        self._write("UPDATE conversations SET persona = ? WHERE id = ?", (persona, conv))

    def delete(self, conv: int) -> None:
        self.get(conv)
        self._write("DELETE FROM messages WHERE conversation_id = ?", (conv,))
        self._write("DELETE FROM conversations WHERE id = ?", (conv,))

    def truncate(self, conv: int, keep: int) -> None:
        """Delete the messages from seq `keep` on (a reply answered again, a failed turn)."""
        self.get(conv)
        self._write("DELETE FROM messages WHERE conversation_id = ? AND seq >= ?", (conv, keep))

    def fork(self, conv: int, at: int, title: str | None = None) -> int:
        """A new conversation holding copies of conv's messages[:at]; conv is left unchanged."""
        parent = self.get(conv)
        now = time.time()
        cur = self._write(
            "INSERT INTO conversations (title, created, updated, profile_json, parent_id,"
            " forked_at, persona) VALUES (?,?,?,?,?,?,?)",
            (
                title or parent["title"],
                now,
                now,
                parent["profile_json"],
                conv,
                at,
                parent["persona"],
            ),
        )
        fork = int(cur.lastrowid or 0)
        self._write(
            "INSERT INTO messages (conversation_id, seq, role, content, created, metrics_json,"
            " stopped) SELECT ?, seq, role, content, created, metrics_json, stopped"
            " FROM messages WHERE conversation_id = ? AND seq < ? ORDER BY seq",
            (fork, conv, at),
        )
        self._write(  # the copied messages keep their files
            "INSERT INTO attachments (message_id, path, size, sha256, tokens, text)"
            " SELECT n.id, a.path, a.size, a.sha256, a.tokens, a.text FROM attachments a"
            " JOIN messages o ON o.id = a.message_id"
            " JOIN messages n ON n.conversation_id = ? AND n.seq = o.seq"
            " WHERE o.conversation_id = ? AND o.seq < ? ORDER BY a.id",
            (fork, conv, at),
        )
        return fork

    def export_json(self, conv: int) -> dict[str, Any]:
        c = self.get(conv)
        return {
            "id": c["id"],
            "title": c["title"],
            "created": c["created"],
            "updated": c["updated"],
            "parent_id": c["parent_id"],
            "forked_at": c["forked_at"],
            "persona": c["persona"],
            "profile": json.loads(c["profile_json"]),
            "messages": [self._export_message(m) for m in self.messages(conv)],
        }

    def _export_message(self, m: sqlite3.Row) -> dict[str, Any]:
        out = {
            "role": m["role"],
            "content": m["content"],
            "created": m["created"],
            "stopped": bool(m["stopped"]),
            "metrics": json.loads(m["metrics_json"]) if m["metrics_json"] else None,
        }
        files = self.attached(m["id"])
        if files:
            out["attachments"] = [a.record() for a in files]
        return out

    def import_conversation(self, data: dict[str, Any]) -> int:
        """A new conversation from checked export-shaped data (engine/importing.py): every
        field as given, so exporting it again gives the same JSON but for its id."""
        profile = json.dumps(data.get("profile", {}), default=str)
        now = time.time()
        self.db.execute("BEGIN")
        try:
            cur = self.db.execute(
                "INSERT INTO conversations (title, created, updated, profile_json, parent_id,"
                " forked_at, persona) VALUES (?,?,?,?,?,?,?)",
                (
                    data["title"],
                    data.get("created", now),
                    data.get("updated", now),
                    profile,
                    data.get("parent_id"),
                    data.get("forked_at"),
                    data.get("persona"),
                ),
            )
            conv = int(cur.lastrowid or 0)
            for seq, m in enumerate(data["messages"]):
                cur = self.db.execute(
                    "INSERT INTO messages (conversation_id, seq, role, content, created,"
                    " metrics_json, stopped) VALUES (?,?,?,?,?,?,?)",
                    (
                        conv,
                        seq,
                        m["role"],
                        m["content"],
                        m.get("created", now),
                        _dump(m.get("metrics")),
                        int(bool(m.get("stopped", False))),
                    ),
                )
                for a in m.get("attachments", ()):
                    self.db.execute(
                        "INSERT INTO attachments (message_id, path, size, sha256, tokens, text)"
                        " VALUES (?,?,?,?,?,?)",
                        (cur.lastrowid, a["path"], a["size"], a["sha256"], a["tokens"], a["text"]),
                    )
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            self.db.execute("ROLLBACK")
            raise UserError(f"cannot write conversation store {self.path}: {exc}") from None
        return conv

    def export_markdown(self, conv: int) -> str:
        c = self.get(conv)
        parts = [f"# {c['title']}\n"]
        for m in self.messages(conv):
            stopped = " (stopped)" if m["stopped"] else ""
            parts.append(f"## {m['role']}{stopped}\n\n{m['content']}\n")
        return "\n".join(parts)


def fts_query(text: str, prefix: bool = False) -> str:
    """`text` as an FTS5 query matching all its words, each quoted (so "-", ":" or "OR" are
    words, not operators); `prefix`: each word may start a longer one."""
    words = [w.replace('"', '""') for w in text.split()]
    star = "*" if prefix else ""
    return " ".join(f'"{w}"{star}' for w in words)


def _dump(metrics: dict[str, Any] | None) -> str | None:
    return None if metrics is None else json.dumps(metrics, default=str)
