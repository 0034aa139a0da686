"""The example's user store: a small SQLite database with users, their weekly activity,
and the mail outbox.

The database file is ``$EXAMPLE_DB``, or ``fanout-example-weekly-activity.db`` in the
system temp directory. Every process (the demo, each worker thread) opens its own
connection per call: SQLite connections must not be shared across threads.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ENV_VAR = "EXAMPLE_DB"

SCHEMA = """
CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL,
    email         TEXT NOT NULL,
    plan          TEXT NOT NULL,
    sessions      INTEGER NOT NULL,  -- this week's activity
    projects      INTEGER NOT NULL,
    minutes       INTEGER NOT NULL,
    email_status  TEXT NOT NULL DEFAULT 'ok'  -- 'bouncing' once on_failure marked it
);
CREATE TABLE outbox (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id  INTEGER NOT NULL,
    email    TEXT NOT NULL,
    subject  TEXT NOT NULL,
    body     TEXT NOT NULL,
    sent_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
-- Connection attempts the mail server saw per user (it fails some first attempts).
CREATE TABLE mail_attempts (
    user_id   INTEGER PRIMARY KEY,
    attempts  INTEGER NOT NULL
);
-- How many times a step body actually executed, per user (replays do not count).
CREATE TABLE step_executions (
    step     TEXT NOT NULL,
    user_id  INTEGER NOT NULL,
    n        INTEGER NOT NULL,
    PRIMARY KEY (step, user_id)
);
-- What the on_failure handler recorded.
CREATE TABLE bounces (
    user_id        INTEGER PRIMARY KEY,
    email          TEXT NOT NULL,
    reason         TEXT NOT NULL,
    failed_run_id  TEXT NOT NULL,
    handler_run_id TEXT NOT NULL
);
"""

# (name, email, plan, sessions, projects, minutes); ids are 1..12 in this order.
SEED_USERS: list[tuple[str, str, str, int, int, int]] = [
    ("Ada Lovelace", "ada@example.com", "pro", 14, 3, 412),
    ("Alan Turing", "alan@example.com", "free", 5, 1, 96),
    ("Grace Hopper", "grace@example.com", "team", 22, 6, 980),
    ("Edsger Dijkstra", "edsger@example.com", "free", 2, 1, 31),
    ("Barbara Liskov", "barbara@example.com", "pro", 11, 4, 377),
    ("Donald Knuth", "don@example.com", "team", 19, 2, 1204),
    ("Ken Thompson", "not-an-email", "free", 7, 2, 158),
    ("Margaret Hamilton", "margaret@example.com", "pro", 9, 3, 265),
    ("Dennis Ritchie", "dennis@example.com", "free", 3, 1, 44),
    ("Frances Allen", "frances@example.com", "team", 16, 5, 731),
    ("John McCarthy", "john@example.com", "pro", 8, 2, 210),
    ("Radia Perlman", "radia@example.com", "free", 6, 1, 120),
]

#: The seeded user whose address the mail server rejects.
INVALID_EMAIL = "not-an-email"


def db_path() -> Path:
    """The database file: ``$EXAMPLE_DB`` or a fixed name in the temp directory."""
    configured = os.environ.get(ENV_VAR, "").strip()
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / "fanout-example-weekly-activity.db"


@contextmanager
def connect(path: Path | None = None) -> Iterator[sqlite3.Connection]:
    """A connection in one transaction: committed on success, rolled back on error."""
    conn = sqlite3.connect(path or db_path(), timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def seed(path: Path | None = None) -> Path:
    """Create a fresh database (any previous one is replaced) with the seed users."""
    path = path or db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with connect(path) as conn:
        # WAL lets the worker's threads write while the demo reads.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
        conn.executemany(
            "INSERT INTO users (name, email, plan, sessions, projects, minutes) "
            "VALUES (?, ?, ?, ?, ?, ?)", SEED_USERS)
    return path


def list_users() -> list[dict[str, Any]]:
    """Every user whose address is not bouncing, as JSON-able dicts (what the cron
    function fans out over)."""
    with connect() as conn:
        rows = conn.execute("SELECT id, name, email, plan FROM users "
                            "WHERE email_status = 'ok' ORDER BY id").fetchall()
    return [dict(row) for row in rows]


def weekly_activity(user_id: int) -> dict[str, Any]:
    """One user's numbers for the week."""
    with connect() as conn:
        row = conn.execute("SELECT sessions, projects, minutes FROM users WHERE id = ?",
                           (user_id,)).fetchone()
    if row is None:
        raise LookupError(f"no user with id {user_id}")
    return dict(row)


def count_execution(step: str, user_id: int) -> None:
    """Record that ``step``'s body ran for ``user_id`` (durable, across processes)."""
    with connect() as conn:
        conn.execute(
            "INSERT INTO step_executions (step, user_id, n) VALUES (?, ?, 1) "
            "ON CONFLICT (step, user_id) DO UPDATE SET n = n + 1", (step, user_id))


def mark_bouncing(user_id: int, email: str, reason: str, failed_run_id: str,
                  handler_run_id: str) -> None:
    """Flag the user's address as bouncing, so next week's mail skips it."""
    with connect() as conn:
        conn.execute("UPDATE users SET email_status = 'bouncing' WHERE id = ?", (user_id,))
        conn.execute(
            "INSERT OR REPLACE INTO bounces VALUES (?, ?, ?, ?, ?)",
            (user_id, email, reason, failed_run_id, handler_run_id))


def query(sql: str, *params: Any) -> list[dict[str, Any]]:
    """Rows of a read-only query, as dicts (for the demo's report and the tests)."""
    with connect() as conn:
        return [dict(row) for row in conn.execute(sql, params).fetchall()]
