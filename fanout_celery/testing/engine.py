"""The engine of ``run_function``: a run's attempts in this process, its state in a dict.

Each attempt is the real ``Execution.execute`` with the real ``Step`` API; what differs
is where writes go (a ``RunState``, shaped like the run's hash and step table in Redis)
and what parks: a parked run resumes at once, as if its timer had fired, so a test waits
for nothing. ``InProcessFanout`` is the app's ``Fanout`` with its edges to Redis and the
broker replaced.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, NoReturn, TypeVar, cast

from ..errors import Suspend
from ..events import Event, derived_id, dumps, now_ms, prepare
from ..execution import Execution
from ..fanout import Fanout
from ..function import FunctionDef
from ..parallel import branch_field
from ..retry import RetryPolicy
from ..routing import Subscription
from ..runs import FINAL
from ..settings import Settings
from ..step import RunPlan, Step
from ..store.redis import RedisStore
from .stubs import Stubs

T = TypeVar("T")

# Every attempt either finishes the run or records progress (a retry, a sleep, a
# resolved wait), so this is only reached by a bug; it stops an endless loop in a test.
MAX_ATTEMPTS = 100_000


@dataclass(frozen=True)
class Sleep:
    """A ``sleep``/``sleep_until`` step: ``seconds`` is how long the run would have been
    parked (0 when the time had already come); in a test it ends at once."""

    step_id: str
    until: datetime
    seconds: float


@dataclass(frozen=True)
class Retry:
    """A failed attempt that was retried: of a step, or of the handler body when
    ``step_id`` is None. ``delay`` is the back-off a worker would have waited."""

    step_id: str | None
    attempt: int  # 1-based number of the attempt that failed
    error: dict[str, Any]
    delay: float


@dataclass(frozen=True)
class Invocation:
    """A child run an ``invoke`` step started (its outcome came from a stub)."""

    step_id: str
    function_id: str
    data: dict[str, Any]


@dataclass
class RunState:
    """A run's record and step table, as the Redis store would hold them."""

    run_id: str
    fields: dict[str, str]
    steps: dict[str, str] = field(default_factory=dict)
    waiters: dict[str, str] = field(default_factory=dict)
    # The real timeout_at of waits and invokes whose timeout was brought forward.
    deadlines: dict[str, int] = field(default_factory=dict)
    branches: dict[str, list[RunState]] = field(default_factory=dict)
    stubbed: set[str] = field(default_factory=set)

    def stored(self, key: str) -> dict[str, Any] | None:
        raw = self.steps.get(key)
        return None if raw is None else dict(json.loads(raw))

    def walk(self) -> Iterator[RunState]:
        """This run, then its parallel branch runs (and theirs)."""
        yield self
        for states in self.branches.values():
            for state in states:
                yield from state.walk()


def _sleep_of(key: str, record: dict[str, Any]) -> Sleep:
    wake = int(record["wake_at"])
    return Sleep(key, datetime.fromtimestamp(wake / 1000, tz=UTC),
                 max(wake - int(record.get("started_at") or wake), 0) / 1000)


class StubbedStep(Step):
    """``ctx.step`` with the stubs applied: ``steps``/``fail_steps`` to ``step.run``, and
    a ``wait_for_event`` registered in the run's state rather than in Redis."""

    def _plan(self, step_id: str, fn: Any, retries: int | RetryPolicy | None,
              *args: Any, **kwargs: Any) -> RunPlan:
        plan = super()._plan(step_id, fn, retries, *args, **kwargs)
        if plan.memoized:
            return plan
        x = cast("LocalExecution", self._x)
        failure = x.kit.stubs.failure(plan.key, step_id, plan.attempt)
        if failure is not None:
            self._failed(plan, failure)  # as if the body had raised it
        found, value = x.kit.stubs.find("steps", plan.key, step_id)
        if not found:
            return plan
        x.state.stubbed.add(plan.key)
        return replace(plan, memoized=True, output=self._completed(plan, value))

    def _register(self, key: str, encoded: str, record: dict[str, Any], event: str,
                  field: str, waiter: str, timeout_at: int) -> NoReturn:
        # In Redis, registering the waiter parks the run; here it parks the run's state.
        x = cast("LocalExecution", self._x)
        x.state.steps[key] = encoded
        x.state.waiters[key] = waiter
        x.state.fields["status"] = "waiting"
        parked = Suspend("waiting", timeout_at)
        parked.parked = True
        raise parked


class LocalExecution(Execution):
    """One attempt whose writes go to a ``RunState`` instead of Redis."""

    step_class = StubbedStep

    def __init__(self, kit: InProcessFanout, function: FunctionDef, state: RunState,
                 parent_steps: dict[str, str] | None) -> None:
        super().__init__(kit, function, state.run_id, "in-process", dict(state.fields),
                         dict(state.steps), parent_steps)
        self.kit = kit
        self.state = state

    def _write(self, key: str, record: dict[str, Any]) -> None:
        self.state.steps[key] = dumps(record)
        self.memo[key] = record

    def _resolve(self, key: str, current: dict[str, Any]) -> dict[str, Any] | None:
        return self.kit.stubs.resolve(key, current, self.state.waiters.get(key),
                                      self.kit.settings.max_event_bytes)

    def checkpoint(self, key: str, encoded: str, record: dict[str, Any]) -> None:
        self.state.steps[key] = encoded
        self.memo[key] = record
        if record.get("kind") == "sleep":  # a sleep whose time had already come
            self.kit.sleeps.append(_sleep_of(key, record))

    def settle(self, key: str, expect: str, encoded: str, record: dict[str, Any],
               waits: tuple[str, str] | None = None) -> dict[str, Any]:
        current = self.state.stored(key)
        if current is None or current["status"] != expect:
            self.memo[key] = current or record
            return current or record
        resolved = self._resolve(key, current)
        if resolved is None:  # the timeout wins: the record the step built itself
            resolved = {**record, "timeout_at": self.state.deadlines.pop(
                key, record.get("timeout_at"))}
        self._write(key, resolved)
        return resolved

    def park(self, status: str, wake_at: int | None, step: tuple[str, str, Any] | None = None,
             expect: tuple[str, str] | None = None, **fields: str) -> dict[str, Any] | None:
        if expect is not None:
            key, wanted = expect
            current = self.state.stored(key)
            if current is None or current["status"] != wanted:
                self.memo[key] = current or {}
                return current or {}
            resolved = self._resolve(key, current)
            if resolved is not None:
                self._write(key, resolved)
                return resolved
            # A timeout: bring the deadline forward; the next attempt settles it through
            # the step's own code, as a worker woken by the timer would.
            self.state.deadlines.setdefault(key, int(current["timeout_at"]))
            self._write(key, {**current, "timeout_at": now_ms()})
        elif step is not None:
            key, _, record = step
            if record["status"] == "retrying":
                self.kit.retries.append(Retry(
                    key, int(record["attempts"]), record.get("error") or {},
                    max(int(record["retry_at"]) - int(record["ended_at"]), 0) / 1000))
                record = {**record, "retry_at": record["ended_at"]}  # no back-off
            elif record["status"] == "sleeping":
                self.kit.sleeps.append(_sleep_of(key, record))
                record = {**record, "status": "completed", "attempts": 1,
                          "ended_at": now_ms()}
            self._write(key, record)
        elif "attempt" in fields:  # the handler body raised: it is retried from the top
            self.kit.retries.append(Retry(
                None, int(fields["attempt"]), json.loads(fields.get("error") or "{}"),
                max((wake_at or 0) - now_ms(), 0) / 1000))
        self.state.fields.update(status=status, **fields)
        return None

    def finish(self, status: str, **fields: str) -> None:
        self.state.fields.update(status=status, ended_at=str(now_ms()), **fields)

    def reload_steps(self) -> None:
        self.memo.update({k: json.loads(v) for k, v in self.state.steps.items()})


def drive(kit: InProcessFanout, function: FunctionDef, state: RunState,
          parent_steps: dict[str, str] | None = None) -> None:
    """Attempt the run until it is final; a parked run resumes at once."""
    for _ in range(MAX_ATTEMPTS):
        state.fields["status"] = "running"
        state.fields.setdefault("started_at", str(now_ms()))
        if LocalExecution(kit, function, state, parent_steps).execute() in FINAL:
            return
    raise RuntimeError(f"run {state.run_id} of {function.function_id!r} did not finish "
                       f"in {MAX_ATTEMPTS} attempts")


def off_loop(call: Callable[[], T]) -> T:
    """``call()``, in a thread of its own when an event loop runs in this one (an async
    test, or an async handler's branches): an async handler is run with asyncio.run."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        running = False  # (call() out of this block: its errors would chain this one)
    else:
        running = True
    if not running:
        return call()
    outcome: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # handed to the caller's thread
            outcome.append((False, exc))

    thread = threading.Thread(target=target, name="fanout-testing")
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return cast(T, value)


class InProcessFanout(Fanout):
    """The app's ``Fanout`` with its edges to Redis and the broker replaced.

    Sending (``send_event``, ``invoke``) runs the real code (validation, event types,
    middleware) up to ``_dispatch``, which captures instead of creating runs. Nothing else
    may reach Redis: ``store`` raises.
    """

    def __init__(self, fanout: Fanout, settings: Settings, stubs: Stubs) -> None:
        # Not Fanout.__init__, which would bind a second Fanout to the app: the real one's
        # declarations, middleware and event types, shared, with settings of its own.
        self.__dict__.update(fanout.__dict__)
        self._settings = settings
        self.stubs = stubs
        self.events_sent: list[Event] = []
        self.sleeps: list[Sleep] = []
        self.retries: list[Retry] = []
        self.invocations: list[Invocation] = []
        self.lifecycle: dict[str, Event] = {}

    @property
    def store(self) -> RedisStore:
        raise RuntimeError("run_function runs without Redis; this step needs it (please "
                           "report it: fanout_celery.testing should have stood in for it)")

    def _dispatch(self, records: list[dict[str, Any]], parent: tuple[str, str] | None,
                  only: Subscription | None = None, notify_parent: bool = False) -> int:
        if notify_parent and only is not None and parent is not None:  # an invoke step
            self.invocations.append(Invocation(parent[1], only.function_id,
                                               dict(records[0]["data"])))
        else:
            self.events_sent.extend(Event(**r) for r in records)
        return len(records)

    def send_system(self, event: dict[str, Any], parent: tuple[str, str]) -> None:
        record = prepare(event, max_bytes=self.settings.max_event_bytes * 4, allow_system=True)
        self.lifecycle[parent[0]] = Event(**record)

    def run_ended(self, run_id: str, run: dict[str, str], outcome: dict[str, Any]) -> None:
        """Nothing to notify: invoke parents and parallel groups resolve from stubs."""

    def subscription_of(self, function_id: Any) -> Subscription | None:
        if not isinstance(function_id, str):
            return None
        local = self.functions.get(function_id)
        if local is not None:
            return local.subscription()
        # Declared in another code base (in production it is published to Redis): the
        # invoke step's stub stands in for it.
        return Subscription(function_id=function_id, events=(), task="")

    def start_branches(self, execution: Any, key: str, n: int) -> None:
        """Run each branch run to its end, one after the other, and join them."""
        x = cast(LocalExecution, execution)
        parent = x.state
        group = json.loads(parent.steps[key])
        snapshot = dict(parent.steps)
        branches: list[RunState] = []
        for index in range(n):
            state = RunState(derived_id(parent.run_id, key, str(index)), {
                **{f: parent.fields[f] for f in ("function", "task", "queue", "events",
                                                 "event_name") if f in parent.fields},
                "status": "queued", "created_at": str(now_ms()), "attempt": "0",
                "parent_run_id": parent.run_id, "parent_step_id": branch_field(key, index),
                "branch_of": parent.run_id, "branch_step": key, "branch_index": str(index)})
            off_loop(partial(drive, self, x.function, state, snapshot))
            branches.append(state)
            now = now_ms()
            # The result record parallel.join writes into the parent's step table.
            result: dict[str, Any] = {
                "status": "completed" if state.fields["status"] == "completed" else "failed",
                "kind": "branch", "attempts": 1, "ended_at": now, "seq": group.get("seq", 0),
                "started_at": int(state.fields.get("started_at") or now), "branch": index}
            if result["status"] == "completed":
                result["output"] = json.loads(state.fields.get("output") or "null")
            else:
                result["error"] = json.loads(state.fields.get("error") or "{}")
            parent.steps[branch_field(key, index)] = dumps(result)
        parent.steps[key] = dumps({**group, "status": "joined", "ended_at": now_ms()})
        parent.branches[key] = branches
