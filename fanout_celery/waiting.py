"""Steps that park a run without holding a worker: sleep, wait_for_event, invoke.

A parked run has a timer in Redis (its wake time or timeout) and no broker message. An
event or a finished child run resolves the waiting step and wakes the run at once.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

from .durations import MAX_SECONDS, instant_ms, parse_duration
from .errors import InvalidStepError, LeaseLostError, StepError, Suspend, UnknownFunctionError
from .events import FUNCTION_INVOKED, Event, derived_id, now_ms, resolve_path
from .flow import check_path
from .routing import check_pattern
from .stepbase import StepBase

if TYPE_CHECKING:
    pass

# Events sent up to this long before a wait is registered still match it, so clocks a
# little apart on the sender and the worker do not open a gap.
CLOCK_SKEW_MS = 2000
WAIT_SEP = "\x1f"


def waiter_field(run_id: str, step_key: str) -> str:
    return f"{run_id}{WAIT_SEP}{step_key}"


def split_waiter_field(field: str) -> tuple[str, str]:
    run_id, _, step_key = field.partition(WAIT_SEP)
    return run_id, step_key


def event_matches(waiter: dict[str, Any], event: dict[str, Any]) -> bool:
    path = waiter.get("path")
    return path is None or resolve_path(event, path) == waiter.get("value")


class WaitingSteps(StepBase):
    """The parking steps of ``ctx.step`` (mixed into ``Step``)."""

    def _memo(self, key: str, kinds: tuple[str, ...]) -> dict[str, Any] | None:
        record = self._x.memo.get(key)
        if record is not None and record.get("kind", "run") not in kinds:
            raise InvalidStepError(
                f"step {key!r} was recorded as a {record.get('kind', 'run')} step; a step id "
                "must keep its kind across replays (did the handler change while runs were "
                "in flight?)"
            )
        return record

    # -- sleep -----------------------------------------------------------------------
    def sleep(self, step_id: str, duration: float | Any) -> None:
        """Park the run for ``duration`` (seconds, a ``timedelta``, or ``"30s"``, ``"2h"``,
        ``"7d"``; at most a year). Holds no worker while sleeping."""
        key = self._key(step_id)
        seconds = parse_duration(duration, f"sleep {key!r} duration")
        self._sleep(key, now_ms() + int(seconds * 1000))

    def sleep_until(self, step_id: str, when: datetime) -> None:
        """Park the run until ``when`` (a ``datetime``; naive means UTC)."""
        key = self._key(step_id)
        wake = instant_ms(when, f"sleep_until {key!r} time")
        if wake > now_ms() + MAX_SECONDS * 1000:
            raise InvalidStepError(f"sleep_until {key!r}: {when} is more than a year away")
        self._sleep(key, wake)

    def _sleep(self, key: str, wake: int) -> None:
        record = self._memo(key, ("sleep",))
        if record is not None and record["status"] == "completed":
            self._x.replayed(key)
            return
        self._x.replay_done()
        if record is not None:
            wake = int(record["wake_at"])  # the first recorded wake time wins
        now = now_ms()
        started = int(record["started_at"]) if record else now
        seq = self._seq(record)
        if now >= wake:
            encoded, stored = self._encode(key, {
                "status": "completed", "kind": "sleep", "wake_at": wake, "attempts": 1,
                "started_at": started, "ended_at": now, "seq": seq})
            self._x.checkpoint(key, encoded, stored)
            return
        if record is not None:
            raise Suspend("sleeping", wake)
        encoded, stored = self._encode(key, {
            "status": "sleeping", "kind": "sleep", "wake_at": wake, "attempts": 0,
            "started_at": now, "seq": seq})
        raise Suspend("sleeping", wake, step=(key, encoded, stored))

    # -- wait_for_event --------------------------------------------------------------
    def wait_for_event(self, step_id: str, *, event: str, timeout: float | Any,
                       match: str | None = None) -> Event | None:
        """Wait for an event named ``event`` whose ``match`` path (e.g. ``data.user_id``)
        equals the same path in this run's trigger event; returns it, or ``None`` after
        ``timeout``. An event sent after the previous step and before this wait is
        registered is not missed."""
        key = self._key(step_id)
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
            expected = resolve_path(self._x.events[0], match)
            if expected is None:
                raise InvalidStepError(
                    f"wait_for_event {key!r}: match path {match!r} is not in this run's "
                    "trigger event, so no event could ever match it")
        record = self._memo(key, ("wait_for_event",))
        if record is not None and record["status"] == "completed":
            self._x.replayed(key)
            return self._waited(key, record)
        self._x.replay_done()
        field = waiter_field(self._x.run_id, key)
        now = now_ms()
        if record is None:
            timeout_at = now + int(seconds * 1000)
            encoded, stored = self._encode(key, {
                "status": "waiting", "kind": "wait_for_event", "event": event,
                "timeout_at": timeout_at, "attempts": 0, "started_at": now,
                "seq": self._seq(None)})
            waiter = json.dumps({"path": match, "value": expected, "timeout_at": timeout_at})
            self._register(key, encoded, stored, event, field, waiter, timeout_at)
        timeout_at = int(record["timeout_at"])
        if now < timeout_at:  # woken early (a duplicate message): park again
            resolved = self._x.park("waiting", timeout_at, expect=(key, "waiting"))
            if resolved is None:
                raise _parked("waiting", timeout_at)
            return self._waited(key, resolved)
        encoded, stored = self._encode(key, {
            **record, "status": "completed", "output": None, "ended_at": now})
        return self._waited(key, self._x.settle(key, "waiting", encoded, stored,
                                                waits=(event, field)))

    def _register(self, key: str, encoded: str, record: dict[str, Any], event: str,
                  field: str, waiter: str, timeout_at: int) -> NoReturn:
        x = self._x
        previous = [int(r.get("ended_at") or 0) for r in x.memo.values()]
        since = max([int(x.run.get("created_at") or 0), *previous]) - CLOCK_SKEW_MS
        code, recent = x.fanout.store.register_wait(
            x.run_id, x.token, key, encoded, event, field, waiter, timeout_at, since)
        if code == 0:
            raise LeaseLostError(f"run {x.run_id} lost its lease at step {key!r}")
        if code == -1:
            from .errors import CancelRequested

            raise CancelRequested()
        # An event resolves at most one wait of a run: one that resolved an earlier wait
        # is still recent when the run resumes, and would resolve this one too.
        used = {r["output"].get("id") for r in x.memo.values()
                if r.get("kind") == "wait_for_event" and isinstance(r.get("output"), dict)}
        recent = [i for i in recent if i not in used]
        if recent:
            # Events that came just before the wait was registered: resolve it now.
            x.fanout.resolve_waits(event, {field: waiter}, [e for e in
                                   x.fanout.store.get_events(recent) if e is not None])
        raise _parked("waiting", timeout_at)

    def _waited(self, key: str, record: dict[str, Any]) -> Event | None:
        output = record.get("output")
        if output is not None and self._x.mw:  # e.g. decrypts data["encrypted"]
            output = self._x.mw.transform_input(self._x.ctx, key, output)
        return None if output is None else Event(**output)

    # -- invoke ----------------------------------------------------------------------
    def invoke(self, step_id: str, *, function: Any, data: dict[str, Any] | None = None,
               timeout: float | Any = "1h") -> Any:
        """Start a run of ``function`` with ``data`` and return its output. The parent is
        parked until the child finishes; a failed or timed-out child raises
        ``StepError`` here."""
        key = self._key(step_id)
        x = self._x
        fid = function if isinstance(function, str) else getattr(function, "function_id", None)
        sub = x.fanout.subscription_of(fid)
        if sub is None:
            raise UnknownFunctionError(f"invoke {key!r}: no function {function!r} is declared "
                                       "or published")
        if data is not None and not isinstance(data, dict):
            raise InvalidStepError(f"invoke {key!r}: data must be a dict, not "
                                   f"{type(data).__name__}")
        seconds = parse_duration(timeout, f"invoke {key!r} timeout", allow_zero=False)
        record = self._memo(key, ("invoke",))
        if record is not None and record["status"] in ("completed", "failed"):
            self._x.replayed(key)
            return self._invoked(key, record)
        x.replay_done()
        now = now_ms()
        event_id = derived_id(x.run_id, key, "invoke")
        child_run_id = derived_id(sub.function_id, event_id)
        if record is None:
            encoded, record = self._encode(key, {
                "status": "invoking", "kind": "invoke", "child_run_id": child_run_id,
                "function_id": sub.function_id, "timeout_at": now + int(seconds * 1000),
                "attempts": 0, "started_at": now, "seq": self._seq(None)})
            x.checkpoint(key, encoded, record)
        timeout_at = int(record["timeout_at"])
        if now >= timeout_at:
            error = {"type": "InvokeTimeout", "message": f"child run {child_run_id} of "
                     f"{sub.function_id!r} did not finish within the timeout"}
            encoded, stored = self._encode(key, {**record, "status": "failed", "error": error,
                                                 "ended_at": now})
            return self._invoked(key, x.settle(key, "invoking", encoded, stored))
        # Idempotent: the child's run id derives from this run and step.
        x.fanout.start_child(sub, {"name": FUNCTION_INVOKED, "data": data or {},
                                   "id": event_id}, parent=(x.run_id, key), ctx=x.ctx)
        resolved = x.park("waiting", timeout_at, expect=(key, "invoking"))
        if resolved is None:
            raise _parked("waiting", timeout_at)
        return self._invoked(key, resolved)

    def _invoked(self, key: str, record: dict[str, Any]) -> Any:
        if record["status"] == "failed":
            raise StepError(key, record.get("error") or {})
        # The child's output as stored, i.e. transformed by its middleware (encrypted).
        output = record.get("output")
        return self._x.mw.transform_input(self._x.ctx, key, output) if self._x.mw else output


def _parked(status: str, wake: int) -> Suspend:
    sus = Suspend(status, wake)
    sus.parked = True
    return sus
