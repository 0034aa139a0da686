"""History sinks shipped with the package (``fanout_history_sink``; the protocol is
``fanout_celery.model.history.HistorySink``).

``JsonLinesSink(path)`` appends each finished run as one JSON line, written with a single
``write`` on a file opened for appending, so workers on one host can share the file; a run
offered again after a failure is appended again (``get`` returns its last line). For a
database, see ``example_project/history_sql.py``.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


class JsonLinesSink:
    """Finished runs as JSON lines in ``path`` (created with its directory if needed)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"JsonLinesSink({str(self.path)!r})"

    def write(self, runs: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(run, default=str, ensure_ascii=False) + "\n"
                       for run in runs).encode()
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)

    def get(self, run_id: str) -> dict[str, Any] | None:
        """The last record of ``run_id`` (a scan of the file: for occasional lookups)."""
        found = None
        try:
            with self.path.open(encoding="utf-8") as f:
                for line in f:
                    if run_id in line:
                        record = json.loads(line)
                        if record.get("id") == run_id:
                            found = record
        except FileNotFoundError:
            return None
        return found
