"""Steps that park a run without holding a worker: sleep, wait_for_event, invoke.

A parked run has a timer in the store (its wake time or timeout) and no broker message.
An event or a finished child run resolves the waiting step and wakes the run at once.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, NoReturn

from ..errors import InvalidStepError, StepError, Suspend, UnknownFunctionError
from ..model.durations import MAX_SECONDS, instant_ms, parse_duration
from ..model.events import FUNCTION_INVOKED, Event, derived_id
from ..model.patterns import check_path, check_pattern, resolve_path
from ..model.records import match_bucket, run_id_for, waiter_field
from ..store.port import WaiterRef
from .core import StepCore


def parked(status: str, wake: int | None) -> Suspend:
    """The signal that unwinds a handler whose run is already parked."""
    sus = Suspend(status, wake)
    sus.parked = True
    return sus


class WaitingSteps:
    """The parking steps of ``ctx.step`` (mixed into ``Step``)."""

    _core: StepCore

    # -- sleep ------------------------------------------------------------------------
    def sleep(self, step_id: str, duration: float | Any) -> None:
        """Park the run for ``duration`` (seconds, a ``timedelta``, or ``"30s"``, ``"2h"``,
        ``"7d"``; at most a year). Holds no worker while sleeping."""
        key = self._core.key(step_id)
        seconds = parse_duration(duration, f"sleep {key!r} duration")
        now = self._core.state.clock()
        self._sleep(key, now + int(seconds * 1000), now)

    def sleep_until(self, step_id: str, when: datetime) -> None:
        """Park the run until ``when`` (a ``datetime``; naive means UTC)."""
        key = self._core.key(step_id)
        wake = instant_ms(when, f"sleep_until {key!r} time")
        now = self._core.state.clock()
        if wake > now + MAX_SECONDS * 1000:
            raise InvalidStepError(f"sleep_until {key!r}: {when} is more than a year away")
        self._sleep(key, wake, now)

    def _sleep(self, key: str, wake: int, now: int) -> None:
        core = self._core
        x = core.state
        record = core.recorded(key, ("sleep",))
        if record is not None and record["status"] == "completed":
            x.replayed(key)
            return
        x.replay_done()
        if record is not None:
            wake = int(record["wake_at"])  # the first recorded wake time wins
        started = int(record["started_at"]) if record else now
        seq = core.seq(record)
        if now >= wake:
            encoded, stored = core.encode(key, {
                "status": "completed", "kind": "sleep", "wake_at": wake, "attempts": 1,
                "started_at": started, "ended_at": now, "seq": seq})
            x.checkpoint(key, encoded, stored)
            return
        if record is not None:
            raise Suspend("sleeping", wake)
        encoded, stored = core.encode(key, {
            "status": "sleeping", "kind": "sleep", "wake_at": wake, "attempts": 0,
            "started_at": now, "seq": seq})
        raise Suspend("sleeping", wake, step=(key, encoded, stored))

    # -- wait_for_event ---------------------------------------------------------------
    def wait_for_event(self, step_id: str, *, event: str, timeout: float | Any,
                       match: str | None = None) -> Event | None:
        """Wait for an event named ``event`` whose ``match`` path (e.g. ``data.user_id``)
        equals the same path in this run's trigger event; returns it, or ``None`` after
        ``timeout``. An event sent before this wait is registered (since the run was
        created, within ``fanout_wait_lookback``) is not missed, unless an earlier wait of
        the run consumed it."""
        core = self._core
        x = core.state
        key = core.key(step_id)
        if not isinstance(event, str) or "*" in event:
            raise InvalidStepError(f"wait_for_event {key!r}: event must be an exact event "
                                   f"name, got {event!r}")
        try:
            check_pattern(event)
        except ValueError as exc:
            raise InvalidStepError(f"wait_for_event {key!r}: {exc}") from None
        seconds = parse_duration(timeout, f"wait_for_event {key!r} timeout", allow_zero=False)
        expected: Any = None
        if match is not None:
            check_path(match, f"wait_for_event {key!r} match")
            expected = resolve_path(x.events[0], match)
            if expected is None:
                raise InvalidStepError(
                    f"wait_for_event {key!r}: match path {match!r} is not in this run's "
                    "trigger event, so no event could ever match it")
        record = core.recorded(key, ("wait_for_event",))
        if record is not None and record["status"] == "completed":
            x.replayed(key)
            return self._waited(key, record)
        x.replay_done()
        bucket = match_bucket(match, expected)
        ref = WaiterRef(event, bucket, waiter_field(x.run_id, key))
        now = x.clock()
        if record is None:
            timeout_at = now + int(seconds * 1000)
            encoded, stored = core.encode(key, {
                "status": "waiting", "kind": "wait_for_event", "event": event,
                "bucket": bucket, "timeout_at": timeout_at, "attempts": 0,
                "started_at": now, "seq": core.seq(None)})
            waiter = json.dumps({"path": match, "value": expected, "timeout_at": timeout_at,
                                 "bucket": bucket})
            self._register(key, encoded, ref, match, waiter, timeout_at)
        timeout_at = int(record["timeout_at"])
        if now < timeout_at:  # woken early (a duplicate message, a resumed run): park again
            waiter = json.dumps({"path": match, "value": expected, "timeout_at": timeout_at,
                                 "bucket": bucket})
            # Registered again first: on a cluster the waiter is registered after the
            # record is written, so a worker that died in between left none.
            self._resolve_recent(ref, waiter, x.journal.register_waiter(
                ref, path=match, waiter=waiter, since=int(x.run.get("created_at") or 0),
                timeout_at=timeout_at, any_limit=len(self._used()) + 1))
            resolved = x.park("waiting", timeout_at, expect=(key, "waiting"))
            if resolved is None:
                raise parked("waiting", timeout_at)
            return self._waited(key, resolved)
        encoded, stored = core.encode(key, {
            **record, "status": "completed", "output": None, "ended_at": now})
        return self._waited(key, x.settle(key, "waiting", encoded, stored, waits=ref))

    def _register(self, key: str, encoded: str, ref: WaiterRef, path: str | None,
                  waiter: str, timeout_at: int) -> NoReturn:
        x = self._core.state
        recent = x.journal.park_waiting(key, encoded, ref=ref, path=path, waiter=waiter,
                                        timeout_at=timeout_at, any_limit=len(self._used()) + 1)
        self._resolve_recent(ref, waiter, recent)
        raise parked("waiting", timeout_at)

    def _used(self) -> set[str]:
        """Ids of the events this run's earlier waits consumed: an event resolves at most
        one wait of a run, and one that resolved an earlier wait is still recent."""
        return {r["output"].get("id") for r in self._core.state.memo.values()
                if r.get("kind") == "wait_for_event" and isinstance(r.get("output"), dict)}

    def _resolve_recent(self, ref: WaiterRef, waiter: str, recent: list[str]) -> None:
        """Resolve the wait with events that came just before it was registered."""
        used = self._used()
        recent = [i for i in recent if i not in used]
        if recent:
            x = self._core.state
            found = [e for e in x.services.store.get_events(recent) if e is not None]
            x.effects.resolve_waits(ref.name, {ref.field: waiter}, found)

    def _waited(self, key: str, record: dict[str, Any]) -> Event | None:
        x = self._core.state
        output = record.get("output")
        if output is not None and x.mw:  # e.g. decrypts data["encrypted"]
            output = x.mw.transform_input(x.ctx, key, output)
        return None if output is None else Event(**output)

    # -- invoke -----------------------------------------------------------------------
    def invoke(self, step_id: str, *, function: Any, data: dict[str, Any] | None = None,
               timeout: float | Any = "1h") -> Any:
        """Start a run of ``function`` with ``data`` and return its output. The parent is
        parked until the child finishes; a failed or timed-out child raises
        ``StepError`` here."""
        core = self._core
        x = core.state
        key = core.key(step_id)
        fid = function if isinstance(function, str) else getattr(function, "function_id", None)
        sub = x.effects.subscription(fid)
        if sub is None:
            raise UnknownFunctionError(f"invoke {key!r}: no function {function!r} is declared "
                                       "or published")
        if data is not None and not isinstance(data, dict):
            raise InvalidStepError(f"invoke {key!r}: data must be a dict, not "
                                   f"{type(data).__name__}")
        seconds = parse_duration(timeout, f"invoke {key!r} timeout", allow_zero=False)
        record = core.recorded(key, ("invoke",))
        if record is not None and record["status"] in ("completed", "failed"):
            x.replayed(key)
            return self._invoked(key, record)
        x.replay_done()
        now = x.clock()
        event_id = derived_id(x.run_id, key, "invoke")
        child_run_id = run_id_for(sub.function_id, event_id)
        if record is None:
            encoded, record = core.encode(key, {
                "status": "invoking", "kind": "invoke", "child_run_id": child_run_id,
                "function_id": sub.function_id, "timeout_at": now + int(seconds * 1000),
                "attempts": 0, "started_at": now, "seq": core.seq(None)})
            x.checkpoint(key, encoded, record)
        timeout_at = int(record["timeout_at"])
        if now >= timeout_at:
            error = {"type": "InvokeTimeout", "message": f"child run {child_run_id} of "
                     f"{sub.function_id!r} did not finish within the timeout"}
            encoded, stored = core.encode(key, {**record, "status": "failed", "error": error,
                                                "ended_at": now})
            return self._invoked(key, x.settle(key, "invoking", encoded, stored))
        # Idempotent: the child's run id derives from this run and step.
        x.effects.start_child(sub, {"name": FUNCTION_INVOKED, "data": data or {},
                                    "id": event_id}, parent=(x.run_id, key), ctx=x.ctx)
        resolved = x.park("waiting", timeout_at, expect=(key, "invoking"))
        if resolved is None:
            raise parked("waiting", timeout_at)
        return self._invoked(key, resolved)

    def _invoked(self, key: str, record: dict[str, Any]) -> Any:
        x = self._core.state
        if record["status"] == "failed":
            raise StepError(key, record.get("error") or {})
        # The child's output as stored, i.e. transformed by its middleware (encrypted).
        output = record.get("output")
        return x.mw.transform_input(x.ctx, key, output) if x.mw else output
