"""ConversationStore: chats on disk in one SQLite file (WAL, so a kill loses at most a second)."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from engine.errors import UserError

DB_NAME = "conversations.sqlite3"
ENV_DATA_DIR = "LLAMA_TUI_DATA_DIR"

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
)


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


class ConversationStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, isolation_level=None)  # autocommit: each write lands
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(SCHEMA)
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise UserError(f"cannot open conversation store {path}: {exc}") from None

    def close(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        for table, column, kind in MIGRATIONS:
            have = {row["name"] for row in self.db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def _write(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Cursor:
        try:
            return self.db.execute(sql, params)
        except sqlite3.Error as exc:
            raise UserError(f"cannot write conversation store {self.path}: {exc}") from None

    def new_conversation(self, title: str, profile: dict[str, Any]) -> int:
        now = time.time()
        cur = self._write(
            "INSERT INTO conversations (title, created, updated, profile_json) VALUES (?,?,?,?)",
            (title, now, now, json.dumps(profile, default=str)),
        )
        return int(cur.lastrowid or 0)

    def add_message(
        self, conv: int, role: str, content: str, metrics: dict[str, Any] | None = None
    ) -> int:
        self.get(conv)
        now = time.time()
        row = self.db.execute(
            "SELECT COALESCE(MAX(seq), -1) + 1 FROM messages WHERE conversation_id = ?", (conv,)
        ).fetchone()
        cur = self._write(
            "INSERT INTO messages (conversation_id, seq, role, content, created, metrics_json)"
            " VALUES (?,?,?,?,?,?)",
            (conv, row[0], role, content, now, _dump(metrics)),
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
            " forked_at) VALUES (?,?,?,?,?,?)",
            (title or parent["title"], now, now, parent["profile_json"], conv, at),
        )
        fork = int(cur.lastrowid or 0)
        self._write(
            "INSERT INTO messages (conversation_id, seq, role, content, created, metrics_json,"
            " stopped) SELECT ?, seq, role, content, created, metrics_json, stopped"
            " FROM messages WHERE conversation_id = ? AND seq < ? ORDER BY seq",
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
            "profile": json.loads(c["profile_json"]),
            "messages": [
                {
                    "role": m["role"],
                    "content": m["content"],
                    "created": m["created"],
                    "stopped": bool(m["stopped"]),
                    "metrics": json.loads(m["metrics_json"]) if m["metrics_json"] else None,
                }
                for m in self.messages(conv)
            ],
        }

    def export_markdown(self, conv: int) -> str:
        c = self.get(conv)
        parts = [f"# {c['title']}\n"]
        for m in self.messages(conv):
            stopped = " (stopped)" if m["stopped"] else ""
            parts.append(f"## {m['role']}{stopped}\n\n{m['content']}\n")
        return "\n".join(parts)


def _dump(metrics: dict[str, Any] | None) -> str | None:
    return None if metrics is None else json.dumps(metrics, default=str)
