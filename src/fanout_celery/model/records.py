"""The records of runs, steps and waiters, built in one place.

A run record has static fields, set once when the run is created (its function, task,
queue, parent...), and fields that change while it executes (status, attempt, lease,
output, error, timestamps). ``NewRun`` carries the static ones; the store adds the rest.
Step records are JSON objects in the run's step table (written by ``pack_step``, read by
``unpack_step``); their ``status`` is one of ``STEP_STATUSES``.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .definition import Subscription
from .events import derived_id, dumps
from .patterns import resolve_path

STATUSES = ("queued", "running", "sleeping", "waiting", "paused", "completed", "failed",
            "cancelled", "skipped")
# "skipped": created but never run, by a rate limit, a singleton or an idempotency key.
# "paused": held while its function is paused (fanout.pause); fanout.resume publishes it.
FINAL = frozenset({"completed", "failed", "cancelled", "skipped"})
STEP_STATUSES = ("completed", "failed", "retrying", "sleeping", "waiting", "invoking",
                 "parallel", "joined")

# Errors are kept to this many characters on a step or a run: the message, and the end
# of the traceback (where the error was raised).
MAX_ERROR_MESSAGE = 4000
MAX_TRACEBACK = 8000

WAIT_SEP = "\x1f"

# -- step records as stored -------------------------------------------------------------
# The fields every record has are stored under one letter, a completed record leaves its
# status out, a record of one attempt its attempt count (one without a count says so,
# with null), and its end is kept as a duration from its start. A ten-step run's records
# of small outputs then stay within Redis's listpack limit for hash values
# (hash-max-listpack-value, 64 bytes), so its step table is a listpack, not a hash table
# (about a third of the memory: BENCHMARKS.md, figure 6). Records in the format before
# this one (long names, always a "status") are read as they are.
_SHORT = {"status": "s", "output": "o", "attempts": "a", "started_at": "t", "seq": "q"}
_LONG = {short: name for name, short in _SHORT.items()}
_DURATION = "d"


def pack_step(record: Mapping[str, Any], compact: bool = True) -> str:
    """A step record as stored (strict JSON: see ``dumps``); ``compact=False``: in the
    earlier format, with full names (``fanout_compact_records``)."""
    if not compact:
        return dumps(record)
    out: dict[str, Any] = {} if "attempts" in record else {"a": None}
    start = record.get("started_at")
    for name, value in record.items():
        if (name == "status" and value == "completed") or (name == "attempts" and value == 1):
            continue
        if name == "ended_at" and type(start) is int and type(value) is int:
            out[_DURATION] = value - start
            continue
        out[_SHORT.get(name, name)] = value
    return dumps(out)


def unpack_step(text: str | bytes) -> dict[str, Any]:
    """A stored step record, with its fields' full names."""
    stored: dict[str, Any] = json.loads(text)
    if "status" in stored:  # written before the compact format
        return stored
    record: dict[str, Any] = {"status": stored.pop("s", "completed")}
    attempts = stored.pop("a", 1)
    if attempts is not None:
        record["attempts"] = attempts
    for name, value in stored.items():
        record[_LONG.get(name, name)] = value
    if _DURATION in record:
        record["ended_at"] = record["started_at"] + record.pop(_DURATION)
    return record


def step_status(text: str | bytes | None) -> str | None:
    """The status of a stored step record (None: no record), in either format, as the
    scripts read it (``step_status`` in ``scripts/prelude.lua``)."""
    if text is None:
        return None
    stored = json.loads(text)
    return str(stored.get("s") or stored.get("status") or "completed")


@dataclass(frozen=True)
class Route:
    """Where a run's task message goes: its task, its queue, and the event name shown
    by monitors."""

    task: str
    queue: str = ""
    event_name: str = ""
    # The Celery task (and its root) that created the run, so that every attempt's message
    # links to it in monitors, however the attempt was published (by the pump, say).
    parent_task: str = ""
    root_task: str = ""
    priority: int | None = None


@dataclass(frozen=True)
class RunMessage:
    """One run's task message: the run id is the only argument that matters."""

    run_id: str
    route: Route


@dataclass(frozen=True)
class NewRun:
    """A run to create: id, function, trigger events and static fields."""

    run_id: str
    function_id: str
    events: tuple[dict[str, Any], ...]
    meta: dict[str, str] = field(default_factory=dict)
    # The ids the run is listed under (``runs_for_event``): its events' by default; a
    # branch run is listed under its parent only, never under the trigger event.
    listed_under: tuple[str, ...] | None = None

    @property
    def event_ids(self) -> list[str]:
        """The ids the run is listed under."""
        if self.listed_under is not None:
            return list(self.listed_under)
        return [e["id"] for e in self.events]

    @cached_property
    def events_json(self) -> str:
        return json.dumps(list(self.events), separators=(",", ":"))

    @property
    def route(self) -> Route:
        return route_of_meta(self.meta)

    @property
    def message(self) -> RunMessage:
        return RunMessage(self.run_id, self.route)

    def with_meta(self, **extra: str) -> NewRun:
        return NewRun(self.run_id, self.function_id, self.events, {**self.meta, **extra},
                      self.listed_under)


def route_of_meta(meta: dict[str, Any]) -> Route:
    """The route of a run, from its static fields."""
    priority = meta.get("priority")
    return Route(str(meta.get("task", "")), str(meta.get("queue", "")),
                 str(meta.get("event_name", "")), str(meta.get("parent_task", "")),
                 str(meta.get("root_task", "")),
                 None if priority in (None, "") else int(priority))


def run_id_for(function_id: str, event_id: str) -> str:
    """The id of the run an event starts for a function: one run per (function, event)."""
    return derived_id(function_id, event_id)


def new_run(sub: Subscription, events: list[dict[str, Any]] | tuple[dict[str, Any], ...], *,
            parent: tuple[str, str] | None = None, notify_parent: bool = False,
            run_id: str | None = None, extra: dict[str, str] | None = None) -> NewRun:
    """The run ``events`` start for ``sub`` (``parent``: the run and step that started
    it; ``notify_parent``: an ``invoke`` child, which resolves its parent's step)."""
    meta = {"function": sub.function_id, "task": sub.task, "queue": sub.queue,
            "event_name": events[0]["name"]}
    if sub.priority is not None:
        meta["priority"] = str(sub.priority)
    if parent is not None:
        meta["parent_run_id"], meta["parent_step_id"] = parent
        if notify_parent:
            meta["notify_parent"] = "1"
    meta.update(extra or {})
    return NewRun(run_id or run_id_for(sub.function_id, events[0]["id"]), sub.function_id,
                  tuple(events), meta)


def branch_field(group: str, index: int) -> str:
    """The key of one branch's result in its parent's step table."""
    return f"{group}[{index}]"


def branch_runs(sub: Subscription, parent_id: str, events: list[dict[str, Any]], key: str,
                n: int) -> list[NewRun]:
    """The branch runs of parallel group ``key`` of run ``parent_id``: the parent's events,
    listed under ``branch-<parent id>`` (not under the events, whose run is the parent)."""
    runs = [new_run(sub, events, parent=(parent_id, branch_field(key, i)),
                    run_id=derived_id(parent_id, key, str(i)),
                    extra={"branch_of": parent_id, "branch_step": key, "branch_index": str(i)})
            for i in range(n)]
    return [NewRun(r.run_id, r.function_id, r.events, r.meta, (f"branch-{parent_id}",))
            for r in runs]


def waiter_field(run_id: str, step_key: str) -> str:
    """The field naming one waiting step in its event name's index of waiters."""
    return f"{run_id}{WAIT_SEP}{step_key}"


def split_waiter_field(name: str) -> tuple[str, str]:
    run_id, _, step_key = name.partition(WAIT_SEP)
    return run_id, step_key


# The bucket of waiters (and cancel_on entries) without a match path: every event of
# their name can match them.
ANY_BUCKET = "*"


def match_bucket(path: str | None, value: Any) -> str:
    """The bucket a waiter with this match path and value sits in, and that an event with
    this value at this path is noted under: senders read only the buckets their events
    fall in, never every waiter of a name."""
    if path is None:
        return ANY_BUCKET
    return f"{path}={derived_id(json.dumps(value, sort_keys=True, default=str))[:20]}"


def event_buckets(event: dict[str, Any], paths: Iterable[str]) -> list[str]:
    """The buckets ``event`` falls in, for the match paths in use (an event without a
    value at a path can match no waiter of it)."""
    out = []
    for path in paths:
        value = resolve_path(event, path)
        if value is not None:
            out.append(match_bucket(path, value))
    return out


def event_matches(waiter: dict[str, Any], event: dict[str, Any]) -> bool:
    """Whether ``event`` satisfies a waiter's (or cancel_on entry's) match: the same
    value at the same dotted path; any event when the waiter has no path."""
    path = waiter.get("path")
    return path is None or resolve_path(event, path) == waiter.get("value")


def _storable_text(text: str) -> str:
    """Text Redis can store (UTF-8): lone surrogates become escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_info(exc: BaseException) -> dict[str, Any]:
    """The JSON form of an error as recorded on a step or run: its type, its message
    (at most ``MAX_ERROR_MESSAGE`` characters, marked when cut) and the last
    ``MAX_TRACEBACK`` characters of its traceback."""
    try:
        message = str(exc)
    except Exception as failure:  # a __str__ that raises
        message = f"<message unavailable: {type(failure).__name__}>"
    if len(message) > MAX_ERROR_MESSAGE:
        message = message[:MAX_ERROR_MESSAGE] + f"... [{len(message)} characters, cut]"
    try:
        trace = "".join(traceback.format_exception(exc))[-MAX_TRACEBACK:]
    except Exception:  # pragma: no cover - a traceback that cannot be formatted
        trace = ""
    return {"type": type(exc).__name__, "message": _storable_text(message),
            "traceback": _storable_text(trace)}


# A step keeps the errors of its earlier failed attempts (``errors`` on its record, oldest
# first): at most this many, each message and traceback shortened to these sizes, so a
# step retried many times keeps a record of bounded size.
MAX_EARLIER_ERRORS = 10
MAX_EARLIER_MESSAGE = 1000
MAX_EARLIER_TRACEBACK = 2000


def earlier_errors(record: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The errors of the attempts before the next one of a step whose record is
    ``record``: those it kept, and its own error when it waits to retry. Each is the
    ``error_info`` of one attempt (shortened) with its ``attempt`` number and times."""
    if not record:
        return []
    kept: list[dict[str, Any]] = list(record.get("errors") or [])
    error = record.get("error")
    if record.get("status") == "retrying" and error:
        message = str(error.get("message", ""))
        if len(message) > MAX_EARLIER_MESSAGE:
            message = message[:MAX_EARLIER_MESSAGE] + "... [cut]"
        kept.append({"attempt": int(record.get("attempts", len(kept) + 1)),
                     "type": error.get("type"), "message": message,
                     "traceback": str(error.get("traceback", ""))[-MAX_EARLIER_TRACEBACK:],
                     "started_at": record.get("started_at"),
                     "ended_at": record.get("ended_at")})
    return kept[-MAX_EARLIER_ERRORS:]


def cancelled_info(reason: str) -> dict[str, Any]:
    return {"type": "Cancelled", "message": reason}
