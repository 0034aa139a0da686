"""Looking back: listing runs and events, replaying events, rerunning runs."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import FanoutError, UnknownFunctionError
from .events import derived_id, now_ms
from .runs import Run

if TYPE_CHECKING:
    from .fanout import Fanout


@dataclass(frozen=True)
class RunPage:
    """One page of runs, newest first, and whether more match."""

    runs: list[Run]
    more: bool


def list_runs(fanout: Fanout, *, function: str | None = None, status: str | None = None,
              since_ms: int | None = None, until_ms: int | None = None,
              event_id: str | None = None, limit: int = 50, offset: int = 0) -> RunPage:
    """Runs newest first, filtered; statuses are read in one pipeline before whole runs
    are loaded, so a page costs the same on a history of thousands."""
    store = fanout.store
    if event_id is not None:
        candidates = [(0.0, rid) for rid in store.runs_for_event(event_id)]
    else:
        functions = [function] if function else sorted(fanout.router.all())
        candidates = store.function_run_ids(functions, since_ms, until_ms)
    ids = [rid for _, rid in candidates]
    if status is not None:
        ids = [rid for rid, st in zip(ids, store.statuses(ids), strict=True) if st == status]
    page = ids[offset:offset + limit]
    loaded = store.load_runs(page)
    runs = [r for r in (Run.from_store(rid, raw, steps)
                        for rid, (raw, steps) in zip(page, loaded, strict=True)) if r]
    return RunPage(runs=runs, more=len(ids) > offset + limit)


def list_events(fanout: Fanout, *, name: str | None = None, since_ms: int | None = None,
                limit: int = 50) -> list[tuple[dict[str, Any], list[str]]]:
    """Recent stored events (newest first), each with the ids of the runs it started."""
    store = fanout.store
    out: list[tuple[dict[str, Any], list[str]]] = []
    cursor = 0
    batch = max(limit * 4, 200)
    while len(out) < limit:
        ids = store.event_ids(since_ms, cursor, batch)
        if not ids:
            break
        cursor += len(ids)
        events = store.get_events(ids)
        kept = [e for e in events if e is not None and (name is None or e["name"] == name)]
        runs = store.runs_for_events([e["id"] for e in kept])
        out.extend(zip(kept, runs, strict=True))
    return out[:limit]


def replay(fanout: Fanout, events: Sequence[dict[str, Any]]) -> list[str]:
    """Send stored events again as new events (new ids, ``replay_of`` set)."""
    fresh = [{"name": e["name"], "data": e.get("data", {}), "replay_of": e["id"],
              **({"user": e["user"]} if e.get("user") is not None else {})}
             for e in events]
    return fanout.send(fresh) if fresh else []


class RerunError(FanoutError, ValueError):
    """A rerun was asked for a run that cannot be rerun (unknown run or step)."""


def rerun(fanout: Fanout, run_id: str, from_step: str | None = None) -> str:
    """Start a new run of the same function and event that reuses the recorded outputs
    of the steps before ``from_step`` (by default, every step before the first one that
    did not complete) and executes the rest. Returns the new run's id."""
    store = fanout.store
    raw, steps = store.load_runs([run_id])[0]
    run = Run.from_store(run_id, raw, steps)
    if run is None:
        raise RerunError(f"no run {run_id} (unknown or expired)")
    sub = fanout.subscription_of(run.function_id)
    if sub is None:
        raise UnknownFunctionError(f"function {run.function_id!r} is not declared or published")
    ordered = [s.id for s in run.steps]
    if from_step is not None and from_step not in ordered:
        raise RerunError(f"run {run_id} has no step {from_step!r}; its steps: "
                         f"{', '.join(ordered) or '(none)'}")
    keep: dict[str, str] = {}
    for step in run.steps:
        if step.id == from_step or step.status != "completed":
            break
        keep[step.id] = steps[step.id]
    new_id = derived_id(run_id, "rerun", uuid.uuid4().hex)
    now = now_ms()
    fields = {
        "function": run.function_id, "task": sub.task, "queue": sub.queue, "status": "queued",
        "created_at": str(now), "attempt": "0", "events": json.dumps(run.events),
        "event_name": run.events[0]["name"] if run.events else "",
        "rerun_of": run_id,
        **({"rerun_from": from_step} if from_step else {}),
    }
    store.create_rerun(new_id, run.function_id, fields, keep, run.event_ids,
                       int(fanout.settings.retention * 1000), now)
    fanout.publish_run(new_id, sub.task, sub.queue, run.events[0]["name"] if run.events else "")
    store.confirm_dispatched([new_id], now_ms() + int(fanout.settings.redispatch_seconds * 1000))
    return new_id
