"""The store port in memory: the same verbs as ``RedisStore``, on dicts behind one lock.

For unit tests and ``fanout_celery.testing``: each verb does what its Lua script does,
atomically (one lock), so code under test sees the same answers it would from Redis.
Expiry is lazy, against ``clock`` (epoch ms): a record past its expiry reads as gone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from ...errors import CancelRequested
from ...model.records import ANY_BUCKET, FINAL, NewRun, event_buckets, step_status
from ..port import (
    CancelEntry,
    Created,
    NotStarted,
    Resolution,
    Started,
    WaiterRef,
    Waiters,
)
from .flow import MemoryFlow
from .queries import MemoryQueries
from .timers import MemoryTimers


class MemoryStore(MemoryQueries, MemoryFlow, MemoryTimers):
    """Run state in this process; see the module docstring."""

    # -- creating runs ----------------------------------------------------------------
    def create_runs(self, runs: Sequence[NewRun], events: Sequence[dict[str, Any]], *,
                    now: int, dispatch_deadline: int, keep_events_ms: int,
                    lookback_ms: int) -> Created:
        with self._lock:
            clock = self.clock()  # the store's clock dates runs and events, as in Redis
            for ev in events:
                current = self.events.get(ev["id"])
                if current is None or current[1] <= self.clock():
                    self.events[ev["id"]] = (json.dumps(ev, separators=(",", ":")),
                                             now + keep_events_ms)
                self._z("events").setdefault(ev["id"], now)
            created = []
            for run in runs:
                if self._run(run.run_id) is not None or \
                        run.run_id in self.event_runs.get(run.event_ids[0], ()):
                    created.append(False)
                    continue
                self.runs[run.run_id] = {"status": "queued", "created_at": str(clock),
                                         "attempt": "0", "events": run.events_json}
                self.meta[run.run_id] = dict(run.meta)
                self.steps.setdefault(run.run_id, {})
                self._z("dispatch")[run.run_id] = dispatch_deadline
                self._z(f"function:{run.function_id}")[run.run_id] = clock
                for eid in run.event_ids:
                    self.event_runs.setdefault(eid, set()).add(run.run_id)
                created.append(True)
            names: dict[str, None] = dict.fromkeys(ev["name"] for ev in events)
            waiters = []
            for name in names:
                named = [ev for ev in events if ev["name"] == name]
                wait_paths = self._live_paths(self.wait_paths, name, clock)
                cancel_paths = self._live_paths(self.cancel_paths, name, clock)
                noted: dict[str, None] = {ANY_BUCKET: None}
                for ev in named:
                    self._z(f"recent:{name}")[ev["id"]] = clock
                    for bucket in event_buckets(ev, wait_paths):
                        self._z(f"recent:{name}:{bucket}")[ev["id"]] = clock
                        noted[bucket] = None
                for zname, zset in self.zsets.items():
                    if zname == f"recent:{name}" or zname.startswith(f"recent:{name}:"):
                        for eid in [e for e, at in zset.items() if at <= clock - lookback_ms]:
                            del zset[eid]
                cancel_buckets = [ANY_BUCKET, *(b for ev in named
                                                for b in event_buckets(ev, cancel_paths))]
                steps = {f: j for b in noted for f, j in self.waits.get((name, b), {}).items()}
                cancels = {r: j for b in cancel_buckets
                           for r, j in self.cancels.get((name, b), {}).items()}
                waiters.append(Waiters(name, steps, cancels))
            return Created(created, waiters)

    def record_skipped(self, runs: Sequence[NewRun], reasons: Sequence[str], *, now: int,
                       retention_ms: int) -> None:
        with self._lock:
            for run, reason in zip(runs, reasons, strict=True):
                if self._run(run.run_id) is not None:
                    continue
                self.runs[run.run_id] = {
                    "status": "skipped", "created_at": str(now), "ended_at": str(now),
                    "attempt": "0", "events": run.events_json,
                    "error": json.dumps({"type": "Skipped", "message": reason})}
                self.meta[run.run_id] = dict(run.meta)
                self.steps[run.run_id] = {}
                self.expires[run.run_id] = now + retention_ms
                self._z(f"function:{run.function_id}")[run.run_id] = now
                self.event_runs.setdefault(run.event_ids[0], set()).add(run.run_id)
            self._finished.notify_all()

    def create_rerun(self, run: NewRun, steps: dict[str, str], *, now: int,
                     retention_ms: int, dispatch_deadline: int) -> None:
        with self._lock:
            self.runs[run.run_id] = {"status": "queued", "created_at": str(now),
                                     "attempt": "0", "events": run.events_json}
            self.meta[run.run_id] = dict(run.meta)
            self.steps[run.run_id] = dict(steps)
            self._z("dispatch")[run.run_id] = dispatch_deadline
            self._z(f"function:{run.function_id}")[run.run_id] = now
            for eid in run.event_ids:
                self.event_runs.setdefault(eid, set()).add(run.run_id)

    def confirm_dispatched(self, run_ids: Sequence[str], redispatch_at: int) -> None:
        with self._lock:
            dispatch = self._z("dispatch")
            for run_id in run_ids:
                if run_id in dispatch:
                    dispatch[run_id] = redispatch_at

    # -- one execution ----------------------------------------------------------------
    def start(self, run_id: str, token: str, *, now: int, lease_exp: int,
              attempt: str = "") -> Started | NotStarted:
        with self._lock:
            run = self._run(run_id)
            if run is None:
                return NotStarted("missing")
            if run["status"] in FINAL:
                return NotStarted("done", run["status"])
            if run.get("lease") and int(run.get("lease_exp", 0)) > now:
                return NotStarted("busy", run["lease_exp"])
            wake = run.get("wake_at")
            if wake and int(wake) > now:
                self._z("timers")[run_id] = int(wake)
                return NotStarted("early", wake)
            run.update(status="running", lease=token, lease_exp=str(lease_exp))
            run.pop("wake_at", None)
            run.setdefault("started_at", str(now))
            run["executions"] = str(int(run.get("executions", 0)) + 1)
            if attempt:
                ids = [i for i in run.get("attempts", "").split(",") if i] + [attempt]
                run["attempts"] = ",".join(ids[-20:])
            self._z("leases")[run_id] = lease_exp
            self._z("timers").pop(run_id, None)
            self._z("dispatch").pop(run_id, None)
            return Started(self._expanded(run_id), dict(self.steps.get(run_id, {})))

    def checkpoint(self, run_id: str, token: str, key: str, record: str, *,
                   lease_exp: int) -> None:
        with self._lock:
            run = self._holds(run_id, token)
            self.steps.setdefault(run_id, {})[key] = record
            run["lease_exp"] = str(lease_exp)
            self._z("leases")[run_id] = lease_exp
            if "cancel" in run:
                raise CancelRequested()

    def checkpoint_many(self, run_id: str, token: str, records: Sequence[tuple[str, str]],
                        *, lease_exp: int) -> None:
        if not records:
            return
        with self._lock:
            run = self._holds(run_id, token)
            self.steps.setdefault(run_id, {}).update(records)
            run["lease_exp"] = str(lease_exp)
            self._z("leases")[run_id] = lease_exp
            if "cancel" in run:
                raise CancelRequested()

    def settle(self, run_id: str, token: str, key: str, expect: str, record: str, *,
               lease_exp: int, waiter: WaiterRef | None = None) -> str | None:
        with self._lock:
            run = self._holds(run_id, token)
            current = self.steps.get(run_id, {}).get(key)
            if step_status(current) != expect:
                return current or ""
            if waiter is not None:
                self.waits.get((waiter.name, waiter.bucket), {}).pop(waiter.field, None)
            self.steps[run_id][key] = record
            run["lease_exp"] = str(lease_exp)
            self._z("leases")[run_id] = lease_exp
            if "cancel" in run:
                raise CancelRequested()
            return None

    def park(self, run_id: str, token: str, status: str, *, wake_at: int | None,
             step: tuple[str, str] | None = None, expect: tuple[str, str] | None = None,
             fields: dict[str, str] | None = None) -> str | None:
        with self._lock:
            run = self._holds(run_id, token)
            if expect is not None:
                current = self.steps.get(run_id, {}).get(expect[0])
                if step_status(current) != expect[1]:
                    return current or ""
            if step is not None:
                self.steps.setdefault(run_id, {})[step[0]] = step[1]
            if "cancel" in run:
                raise CancelRequested()
            run["status"] = status
            run.update(fields or {})
            self._unlease(run_id, run)
            if wake_at is not None:
                run["wake_at"] = str(wake_at)
                self._z("timers")[run_id] = wake_at
            return None

    def park_waiting(self, run_id: str, token: str, key: str, record: str, *,
                     ref: WaiterRef, path: str | None, waiter: str, timeout_at: int,
                     path_expires: int, any_limit: int, lease_exp: int = 0) -> list[str]:
        with self._lock:
            run = self._holds(run_id, token)
            if "cancel" in run:
                raise CancelRequested()
            since = int(run.get("created_at") or 0)
            self.steps.setdefault(run_id, {})[key] = record
            self.waits.setdefault((ref.name, ref.bucket), {})[ref.field] = waiter
            run.update(status="waiting", wake_at=str(timeout_at))
            self._unlease(run_id, run)
            self._z("timers")[run_id] = timeout_at
            return self._recent_since(ref, path, since, path_expires, any_limit)

    def register_waiter(self, ref: WaiterRef, *, path: str | None, waiter: str, since: int,
                        path_expires: int, any_limit: int) -> list[str]:
        with self._lock:
            self.waits.setdefault((ref.name, ref.bucket), {})[ref.field] = waiter
            return self._recent_since(ref, path, since, path_expires, any_limit)

    def _recent_since(self, ref: WaiterRef, path: str | None, since: int,
                      path_expires: int, any_limit: int) -> list[str]:
        source = f"recent:{ref.name}"
        if path is not None and self._use_path(self.wait_paths, ref.name, path,
                                               self.clock(), path_expires) < since:
            source = f"recent:{ref.name}:{ref.bucket}"
        recent = self._z(source)
        found = [eid for eid, at in sorted(recent.items(), key=lambda i: (i[1], i[0]))
                 if at >= since]
        return found[:any_limit] if path is None else found

    def finish(self, run_id: str, token: str, status: str, fields: dict[str, str], *,
               retention_ms: int, steps: Sequence[tuple[str, str]] = (),
               steps_retention_ms: int | None = None, archive_at: int = 0) -> None:
        with self._lock:
            if archive_at:
                self._z("archive")[run_id] = archive_at
            run = self._holds(run_id, token)
            self.steps.setdefault(run_id, {}).update(steps)
            run["status"] = status
            for name, value in fields.items():
                if value == "":
                    run.pop(name, None)
                else:
                    run[name] = value
            self._unlease(run_id, run)
            for name in ("wake_at", "cancel"):
                run.pop(name, None)
            self._z("timers").pop(run_id, None)
            self.expires[run_id] = self.clock() + retention_ms
            self._finished.notify_all()

    def renew(self, leases: Sequence[tuple[str, str]], lease_exp: int) -> list[bool]:
        out = []
        with self._lock:
            for run_id, token in leases:
                run = self._run(run_id)
                held = run is not None and run.get("lease") == token
                if held and run is not None:
                    run["lease_exp"] = str(lease_exp)
                    self._z("leases")[run_id] = lease_exp
                out.append(held)
        return out

    def step_record(self, run_id: str, key: str) -> str | None:
        return self.load_steps(run_id).get(key)

    def run_field(self, run_id: str, name: str) -> str | None:
        with self._lock:
            run = self._run(run_id)
            return None if run is None else run.get(name)

    # -- from outside a run -----------------------------------------------------------
    def _wake(self, run_id: str, run: dict[str, str], deadline: int) -> Resolution:
        if run["status"] in ("waiting", "sleeping"):
            run["status"] = "queued"
            run.pop("wake_at", None)
            self._z("timers")[run_id] = deadline
            return Resolution("woken", self._route(run_id))
        return Resolution("executing")

    def resolve(self, run_id: str, key: str, expect: str, record: str, *, deadline: int,
                waiter: WaiterRef | None = None) -> Resolution:
        with self._lock:
            if waiter is not None:
                self.waits.get((waiter.name, waiter.bucket), {}).pop(waiter.field, None)
            run = self._run(run_id)
            current = self.steps.get(run_id, {}).get(key)
            if run is None or step_status(current) != expect or run["status"] in FINAL:
                return Resolution("none")
            self.steps[run_id][key] = record
            return self._wake(run_id, run, deadline)

    def join(self, parent: str, group: str, branch: str, record: str, *, branches: int,
             joined: str, deadline: int) -> Resolution:
        with self._lock:
            run = self._run(parent)
            steps = self.steps.setdefault(parent, {})
            steps.setdefault(branch, record)
            if any(f"{group}[{i}]" not in steps for i in range(branches)) \
                    or step_status(steps.get(group)) != "parallel":
                return Resolution("none")
            steps[group] = joined
            if run is None:
                return Resolution("none")
            return self._wake(parent, run, deadline)

    def cancel(self, run_id: str, *, now: int, retention_ms: int, error: str,
               archive: bool = False) -> Literal["cancelled", "requested", "final", "missing"]:
        with self._lock:
            run = self._run(run_id)
            if run is None:
                return "missing"
            if run["status"] in FINAL:
                return "final"
            if run.get("lease") and int(run.get("lease_exp", 0)) > now:
                run["cancel"] = error
                return "requested"
            run.update(status="cancelled", ended_at=str(now), error=error)
            self._unlease(run_id, run)
            for name in ("wake_at", "cancel"):
                run.pop(name, None)
            for index in ("timers", "dispatch"):
                self._z(index).pop(run_id, None)
            self.expires[run_id] = now + retention_ms
            if archive:
                self._z("archive")[run_id] = now
            self._finished.notify_all()
            return "cancelled"

    def drop_waiters(self, entries: Sequence[WaiterRef]) -> None:
        with self._lock:
            for w in entries:
                self.waits.get((w.name, w.bucket), {}).pop(w.field, None)

    def add_cancels(self, entries: Sequence[CancelEntry]) -> None:
        with self._lock:
            for e in entries:
                self.cancels.setdefault((e.name, e.bucket), {})[e.run_id] = e.entry
                if e.path is not None:
                    self._use_path(self.cancel_paths, e.name, e.path, self.clock(), e.expires)

    def drop_cancels(self, entries: Sequence[tuple[str, str, str]]) -> None:
        with self._lock:
            for name, bucket, run_id in entries:
                self.cancels.get((name, bucket), {}).pop(run_id, None)
