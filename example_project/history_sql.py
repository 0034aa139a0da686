"""A history sink on a SQL database (sqlite3 here; the same shape on PostgreSQL): every
finished run is kept, one row per run, long after Redis let it expire.

    app.conf.fanout_history_sink = SqlSink("history.sqlite3")
    # or, in a celeryconfig module: fanout_history_sink = "myproject.history:sink", where
    # myproject/history.py holds sink = SqlSink(...)

``write`` upserts by run id, so a batch offered again after a failure changes nothing;
``get`` lets ``fanout.get_run`` find runs that left Redis.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS fanout_runs (
    id TEXT PRIMARY KEY, function_id TEXT NOT NULL, status TEXT NOT NULL,
    created_at INTEGER, ended_at INTEGER, parent_run_id TEXT, record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS fanout_runs_function ON fanout_runs (function_id, created_at);
CREATE INDEX IF NOT EXISTS fanout_runs_status ON fanout_runs (status, created_at);
"""


class SqlSink:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        with self._connect() as db:
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def write(self, runs: list[dict[str, Any]]) -> None:
        rows = [(r["id"], r["function_id"], r["status"], _int(r.get("created_at")),
                 _int(r.get("ended_at")), r.get("parent_run_id"), json.dumps(r, default=str))
                for r in runs]
        with self._lock, self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO fanout_runs VALUES (?, ?, ?, ?, ?, ?, ?)",
                           rows)

    def get(self, run_id: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT record FROM fanout_runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def failed_since(self, function_id: str, since_ms: int) -> list[str]:
        """An example of what SQL adds: failed runs of a function, months back."""
        with self._connect() as db:
            return [r[0] for r in db.execute(
                "SELECT id FROM fanout_runs WHERE function_id = ? AND status = 'failed' "
                "AND created_at >= ? ORDER BY created_at", (function_id, since_ms))]


def _int(value: Any) -> int | None:
    return None if value in (None, "") else int(value)
