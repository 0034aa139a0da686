"""History that outlives Redis: what a history sink receives, and how an archived run
reads back. No I/O here: sinks live in ``fanout_celery.sinks`` (or your code)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from ..errors import ConfigurationError
from .records import pack_step, unpack_step
from .runs import Run


class HistorySink(Protocol):
    """Receives every finished run before it expires from Redis.

    ``write(runs)`` gets a list of archive records (``archive_record``); when it raises,
    the same runs are offered again a minute later, so make it idempotent on ``run["id"]``.
    A sink may also have ``get(run_id) -> record | None``: ``fanout.get_run`` then finds
    runs that expired from Redis there (``Run.archived``)."""

    def write(self, runs: list[dict[str, Any]]) -> None: ...


class CallableSink:
    """A plain function ``hook(runs)`` as a sink."""

    def __init__(self, hook: Callable[[list[dict[str, Any]]], Any]) -> None:
        self.hook = hook

    def write(self, runs: list[dict[str, Any]]) -> None:
        self.hook(runs)

    def __repr__(self) -> str:
        return f"CallableSink({getattr(self.hook, '__qualname__', self.hook)!r})"


def coerce_sink(value: Any, what: str = "fanout_history_sink") -> HistorySink | None:
    """A sink from a setting: None, an object with ``write``, a callable, or the import
    path of one (``"package.module:name"``)."""
    if value is None:
        return None
    if isinstance(value, str):
        module, _, name = value.partition(":")
        if not module or not name:
            raise ConfigurationError(f"{what} is 'package.module:name', not {value!r}")
        try:
            value = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ConfigurationError(f"{what} {value!r} cannot be imported: {exc}") from None
    if callable(getattr(value, "write", None)):
        return value  # type: ignore[no-any-return]
    if callable(value):
        return CallableSink(value)
    raise ConfigurationError(f"{what} must have a write(runs) method or be callable, "
                             f"not {value!r}")


def archive_record(run_id: str, raw: dict[str, str], steps: dict[str, str],
                   children: list[str], archived_at: int) -> dict[str, Any]:
    """One finished run as its sink receives it: a summary (id, function, status, times,
    output, error, events, parent, child run ids) and, under ``record``, the run's fields
    and step records as stored, from which ``run_from_record`` rebuilds the ``Run``."""
    run = Run.from_store(run_id, raw, steps)
    assert run is not None
    return {
        "id": run.id, "function_id": run.function_id, "status": run.status,
        "created_at": raw.get("created_at"), "ended_at": raw.get("ended_at"),
        "output": run.output, "error": run.error, "events": run.events,
        "parent_run_id": run.parent_run_id, "parent_step_id": run.parent_step_id,
        "children": children, "rerun_of": run.rerun_of, "archived_at": archived_at,
        "steps": [{"id": s.id, "kind": s.kind, "status": s.status, "attempts": s.attempts,
                   "output": s.output, "error": s.error} for s in run.steps],
        "record": {"run": dict(raw), "steps": {k: unpack_step(v) for k, v in steps.items()}},
    }


def run_from_record(record: dict[str, Any]) -> Run | None:
    """The ``Run`` of an archive record (``archived`` set)."""
    stored = record.get("record") or {}
    steps = {k: pack_step(v) for k, v in (stored.get("steps") or {}).items()}
    run = Run.from_store(str(record.get("id", "")), dict(stored.get("run") or {}), steps)
    return None if run is None else replace(run, archived=True)
