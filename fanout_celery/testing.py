"""Run a function in-process, with no broker and no Redis: unit tests of handlers.

    from fanout_celery.testing import run_function

    result = run_function(send_reminder, {"name": "app/weekly-email-activity.send",
                                          "data": {"user": user}},
                          steps={"load-user-data": {"sessions": 3}})
    assert result.status == "completed"

The handler gets the real ``ctx.step`` and each attempt goes through the real attempt
logic (``Execution.execute``): step ids get the same ``:N`` counters, outputs the same
JSON round trip, errors the same types, retries the same policy, and the run is replayed
from the top after every suspension, as on a worker. Only what would leave the process is
replaced: the run's state is a dict, events sent are captured, no time passes (sleeps and
retry back-offs end at once), ``wait_for_event`` and ``invoke`` steps take their outcome
from stubs, and ``parallel`` branches run one after the other in this process.
Flow control, ``cancel_on`` and ``timeouts`` do not apply: they act between runs.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .errors import ConfigurationError, FanoutError, InvalidEventError, StepError
from .events import (
    FUNCTION_INVOKED,
    SCHEDULED_TIMER,
    Event,
    derived_id,
    dumps,
    now_ms,
    prepare,
    prepare_batch,
    resolve_path,
)
from .execution import Execution
from .function import Function, FunctionDef
from .parallel import branch_field
from .retry import RetryPolicy
from .routing import Subscription
from .runs import FINAL, Run, StepRecord
from .scheduler import timer_event
from .settings import Settings
from .step import RunPlan, Step, error_info
from .waiting import event_matches

if TYPE_CHECKING:
    from .fanout import Fanout

__all__ = [
    "TIMED_OUT",
    "FunctionResult",
    "Invocation",
    "Retry",
    "Sleep",
    "StubError",
    "UnusedStubWarning",
    "run_function",
]

T = TypeVar("T")

# Every attempt either finishes the run or records progress (a retry, a sleep, a
# resolved wait), so this is only reached by a bug; it stops an endless loop in a test.
MAX_ATTEMPTS = 100_000
_COUNTER = re.compile(r"(.+):\d+")
_BRANCH = re.compile(r"(.+)\[(\d+)\]")


class _TimedOut:
    def __repr__(self) -> str:
        return "TIMED_OUT"


TIMED_OUT: Any = _TimedOut()
"""The stub of a ``wait_for_event`` or ``invoke`` step that times out."""


class StubError(FanoutError):
    """A stub given to ``run_function`` is malformed, missing (a ``wait_for_event`` or
    ``invoke`` step was reached without one) or impossible (an event that would not
    resolve the wait). A mistake in the test, raised by ``run_function`` itself."""


class UnusedStubWarning(UserWarning):
    """A stub was given for a step id that the run never reached (a typo?)."""


class _Abort(BaseException):
    """Carries a ``StubError`` out of the handler: no ``except`` there may catch it."""

    def __init__(self, error: StubError) -> None:
        super().__init__(str(error))
        self.error = error


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


@dataclass(frozen=True)
class FunctionResult:
    """What one in-process run did.

    ``run`` is the run as ``fanout.get_run`` would show it. ``steps`` lists every step in
    execution order, the steps of each parallel branch right after that branch's result
    record (``group[i]``). ``events_sent`` are the events of ``send_event`` steps (not
    published), ``lifecycle_event`` the ``fanout/function.finished`` or ``.failed``
    event the run emitted (feed it to an ``on_failure`` function).
    """

    run: Run
    steps: list[StepRecord]
    events_sent: list[Event]
    sleeps: list[Sleep]
    retries: list[Retry]
    invocations: list[Invocation]
    stubbed: frozenset[str]
    lifecycle_event: Event | None

    @property
    def status(self) -> str:
        return self.run.status

    @property
    def output(self) -> Any:
        return self.run.output

    @property
    def error(self) -> dict[str, Any] | None:
        return self.run.error

    @property
    def run_id(self) -> str:
        return self.run.id

    @property
    def attempt(self) -> int:
        """Retries of the handler body (errors raised outside steps)."""
        return self.run.attempt

    def step(self, step_id: str) -> StepRecord:
        """The first step with this id (with its ``:N`` counter for repeats)."""
        for record in self.steps:
            if record.id == step_id:
                return record
        raise KeyError(f"no step {step_id!r}; the run's steps are "
                       f"{[s.id for s in self.steps]}")

    def __repr__(self) -> str:
        outcome = f"output={self.output!r}" if self.status == "completed" else \
            f"error={(self.error or {}).get('type')}: {(self.error or {}).get('message')}"
        return f"<FunctionResult {self.run.function_id} {self.status} {outcome}>"


# -- stubs -----------------------------------------------------------------------------
def _exception(value: Any, what: str) -> Exception:
    if isinstance(value, type) and issubclass(value, Exception):
        return value()
    if isinstance(value, Exception):
        return value
    raise StubError(f"{what}: expected an exception (or its class), got {value!r}")


def _base(key: str) -> str:
    match = _COUNTER.fullmatch(key)
    return match.group(1) if match else key


class _Stubs:
    """The stubs of one ``run_function`` call, by step key (``id:2``) or step id."""

    def __init__(self, steps: Mapping[str, Any] | None, fail_steps: Mapping[str, Any] | None,
                 waits: Mapping[str, Any] | None, invokes: Mapping[str, Any] | None) -> None:
        self.tables: dict[str, dict[str, Any]] = {}
        for name, table in (("steps", steps), ("waits", waits), ("invokes", invokes),
                            ("fail_steps", fail_steps)):
            if table is not None and not isinstance(table, Mapping):
                raise StubError(f"{name} must be a dict keyed by step id, not "
                                f"{type(table).__name__}")
            self.tables[name] = dict(table or {})
        self.failures: dict[str, tuple[bool, list[Exception]]] = {}
        for step_id, value in self.tables["fail_steps"].items():
            what = f"fail_steps[{step_id!r}]"
            if isinstance(value, (list, tuple)):
                self.failures[step_id] = (False, [_exception(v, what) for v in value])
            else:
                self.failures[step_id] = (True, [_exception(value, what)])
        for step_id, value in self.tables["invokes"].items():
            if isinstance(value, type) and issubclass(value, Exception):
                self.tables["invokes"][step_id] = value()
        self.used: set[tuple[str, str]] = set()

    def find(self, table: str, key: str, step_id: str | None = None) -> tuple[bool, Any]:
        stubs = self.tables[table]
        for name in (key, _base(key) if step_id is None else step_id):
            if name in stubs:
                self.used.add((table, name))
                return True, stubs[name]
        return False, None

    def failure(self, key: str, step_id: str, attempt: int) -> Exception | None:
        """The exception attempt ``attempt`` (0-based) of the step raises, if any."""
        found, _ = self.find("fail_steps", key, step_id)
        if not found:
            return None
        always, errors = self.failures[key if key in self.failures else step_id]
        if always:
            return errors[0]
        return errors[attempt] if attempt < len(errors) else None

    def unused(self) -> list[str]:
        return [f"{table}[{name!r}]" for table, stubs in self.tables.items()
                for name in stubs if (table, name) not in self.used]


# -- the in-process run ----------------------------------------------------------------
@dataclass
class _RunState:
    """A run's record and step table, as the Redis store would hold them."""

    run_id: str
    fields: dict[str, str]
    steps: dict[str, str] = field(default_factory=dict)
    waiters: dict[str, str] = field(default_factory=dict)
    # The real timeout_at of waits and invokes whose timeout was brought forward.
    deadlines: dict[str, int] = field(default_factory=dict)
    branches: dict[str, list[_RunState]] = field(default_factory=dict)
    stubbed: set[str] = field(default_factory=set)

    def stored(self, key: str) -> dict[str, Any] | None:
        raw = self.steps.get(key)
        return None if raw is None else dict(json.loads(raw))

    def walk(self) -> Iterator[_RunState]:
        yield self
        for states in self.branches.values():
            for state in states:
                yield from state.walk()


def _sleep_of(key: str, record: dict[str, Any]) -> Sleep:
    wake = int(record["wake_at"])
    return Sleep(key, datetime.fromtimestamp(wake / 1000, tz=UTC),
                 max(wake - int(record.get("started_at") or wake), 0) / 1000)


class _StubbedStep(Step):
    """``ctx.step`` with ``steps=`` and ``fail_steps=`` applied to ``step.run``."""

    def _plan(self, step_id: str, fn: Any, retries: int | RetryPolicy | None) -> RunPlan:
        plan = super()._plan(step_id, fn, retries)
        if plan.memoized:
            return plan
        x = cast("_LocalExecution", self._x)
        failure = x.kit.stubs.failure(plan.key, step_id, plan.attempt)
        if failure is not None:
            self._failed(plan, failure)  # as if the body had raised it
        found, value = x.kit.stubs.find("steps", plan.key, step_id)
        if not found:
            return plan
        x.state.stubbed.add(plan.key)
        return replace(plan, memoized=True, output=self._completed(plan, value))


class _LocalExecution(Execution):
    """One attempt whose writes go to a ``_RunState`` instead of Redis."""

    step_class = _StubbedStep

    def __init__(self, kit: _InProcessFanout, function: FunctionDef, state: _RunState,
                 parent_steps: dict[str, str] | None) -> None:
        super().__init__(cast("Fanout", kit), function, state.run_id, "in-process",
                         dict(state.fields), dict(state.steps), parent_steps)
        self.kit = kit
        self.state = state

    def _write(self, key: str, record: dict[str, Any]) -> None:
        self.state.steps[key] = dumps(record)
        self.memo[key] = record

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
        resolved = self.kit.resolve(self, key, current)
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
            resolved = self.kit.resolve(self, key, current)
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


def _drive(kit: _InProcessFanout, function: FunctionDef, state: _RunState,
           parent_steps: dict[str, str] | None = None) -> None:
    """Attempt the run until it is final; a parked run resumes at once."""
    for _ in range(MAX_ATTEMPTS):
        state.fields["status"] = "running"
        state.fields.setdefault("started_at", str(now_ms()))
        if _LocalExecution(kit, function, state, parent_steps).execute() in FINAL:
            return
    raise RuntimeError(f"run {state.run_id} of {function.function_id!r} did not finish "
                       f"in {MAX_ATTEMPTS} attempts")


def _off_loop(call: Callable[[], T]) -> T:
    """``call()``, in a thread of its own when an event loop runs in this one (an async
    test, or an async handler's branches): an async handler is run with asyncio.run."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
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


class _InProcessFanout:
    """What ``Execution`` and ``Step`` reach through ``execution.fanout``, in memory."""

    def __init__(self, fanout: Fanout, settings: Settings, stubs: _Stubs) -> None:
        self.real = fanout
        self.settings = settings
        self.stubs = stubs
        # register_wait is the one store call a step makes itself.
        self.store = self
        self.runs: dict[str, _RunState] = {}
        self.events_sent: list[Event] = []
        self.sleeps: list[Sleep] = []
        self.retries: list[Retry] = []
        self.invocations: list[Invocation] = []
        self.lifecycle: dict[str, Event] = {}

    # -- sending -------------------------------------------------------------------------
    def send_from_step(self, events: Any, id_for: Callable[[int], str],
                       parent: tuple[str, str]) -> list[str]:
        records = prepare_batch(events, max_bytes=self.settings.max_event_bytes, id_for=id_for)
        self.events_sent.extend(Event(**r) for r in records)
        return [r["id"] for r in records]

    def send_system(self, event: dict[str, Any], parent: tuple[str, str]) -> None:
        record = prepare(event, max_bytes=self.settings.max_event_bytes * 4, allow_system=True)
        self.lifecycle[parent[0]] = Event(**record)

    def run_ended(self, run_id: str, run: dict[str, str], outcome: dict[str, Any]) -> None:
        """Nothing to notify: invoke parents and parallel groups resolve from stubs."""

    # -- invoke and wait_for_event -------------------------------------------------------
    def subscription_of(self, function_id: Any) -> Subscription | None:
        if not isinstance(function_id, str):
            return None
        local = self.real.functions.get(function_id)
        if local is not None:
            return local.subscription()
        # Declared in another code base (in production it is published to Redis): the
        # invoke step's stub stands in for it.
        return Subscription(function_id=function_id, events=(), task="")

    def start_child(self, sub: Subscription, event: dict[str, Any],
                    parent: tuple[str, str]) -> None:
        record = prepare(event, max_bytes=self.settings.max_event_bytes, allow_system=True)
        self.invocations.append(Invocation(parent[1], sub.function_id, record["data"]))

    def register_wait(self, run_id: str, token: str, step_key: str, step_json: str,
                      event_name: str, field: str, waiter_json: str, timeout_ms: int,
                      since_ms: int) -> tuple[int, list[str]]:
        state = self.runs[run_id]
        state.steps[step_key] = step_json
        state.waiters[step_key] = waiter_json
        state.fields["status"] = "waiting"
        return 1, []

    def resolve(self, x: _LocalExecution, key: str,
                current: dict[str, Any]) -> dict[str, Any] | None:
        """The record a waiting step resolves to, from its stub; None for a timeout."""
        kind = current.get("kind")
        now = now_ms()
        if kind == "wait_for_event":
            found, value = self.stubs.find("waits", key)
            if not found:
                raise _Abort(StubError(
                    f"wait_for_event step {key!r} has no stub: pass waits={{{key!r}: "
                    "<the event that arrives, or None for a timeout>}"))
            if value is None or value is TIMED_OUT:
                return None
            event = self._arriving_event(x, key, current, value)
            return {**current, "status": "completed", "output": event, "attempts": 1,
                    "ended_at": now}
        if kind == "invoke":
            found, value = self.stubs.find("invokes", key)
            if not found:
                raise _Abort(StubError(
                    f"invoke step {key!r} has no stub: pass invokes={{{key!r}: <the child "
                    "run's output, an exception for a failure, or TIMED_OUT>}"))
            if value is TIMED_OUT:
                return None
            if isinstance(value, BaseException):
                error = {**value.error, "step": value.step_id} \
                    if isinstance(value, StepError) else error_info(value)
                return {**current, "status": "failed", "error": error, "attempts": 1,
                        "ended_at": now}
            try:
                output = json.loads(dumps(value))
            except (TypeError, ValueError) as exc:
                raise _Abort(StubError(f"the stub of invoke step {key!r} is not JSON: {exc}"))
            return {**current, "status": "completed", "output": output, "attempts": 1,
                    "ended_at": now}
        raise RuntimeError(f"step {key!r} ({kind}) cannot be resolved in-process")

    def _arriving_event(self, x: _LocalExecution, key: str, current: dict[str, Any],
                        value: Any) -> dict[str, Any]:
        raw = value.model_dump(exclude_none=True) if isinstance(value, Event) else value
        if isinstance(raw, dict) and "name" not in raw:
            raw = {**raw, "name": current["event"]}
        try:
            record = prepare(raw, max_bytes=self.settings.max_event_bytes, allow_system=True)
        except InvalidEventError as exc:
            raise _Abort(StubError(f"the stub of wait_for_event step {key!r}: {exc}"))
        if record["name"] != current["event"]:
            raise _Abort(StubError(
                f"the stub of wait_for_event step {key!r} is a {record['name']!r} event; "
                f"the step waits for {current['event']!r}"))
        waiter = json.loads(x.state.waiters.get(key, "{}"))
        if not event_matches(waiter, record):
            path = waiter.get("path")
            raise _Abort(StubError(
                f"the stub event of wait_for_event step {key!r} would not resolve it: its "
                f"{path} is {resolve_path(record, path)!r}, the run waits for "
                f"{waiter.get('value')!r}"))
        return record

    # -- parallel ------------------------------------------------------------------------
    def start_branches(self, execution: Any, key: str, n: int) -> None:
        """Run each branch to its end, one after the other, and join them."""
        x = cast(_LocalExecution, execution)
        parent = x.state
        group = json.loads(parent.steps[key])
        snapshot = dict(parent.steps)
        branches: list[_RunState] = []
        for index in range(n):
            state = _RunState(derived_id(parent.run_id, key, str(index)), {
                **{f: parent.fields[f] for f in ("function", "task", "queue", "events",
                                                 "event_name") if f in parent.fields},
                "status": "queued", "created_at": str(now_ms()), "attempt": "0",
                "parent_run_id": parent.run_id, "parent_step_id": branch_field(key, index),
                "branch_of": parent.run_id, "branch_step": key, "branch_index": str(index)})
            self.runs[state.run_id] = state
            _off_loop(partial(_drive, self, x.function, state, snapshot))
            branches.append(state)
            now = now_ms()
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


# -- run_function ----------------------------------------------------------------------
def _settings(fanout: Fanout) -> Settings:
    try:
        return fanout.settings
    except ConfigurationError:
        # No Redis configured where the tests run: none is needed here.
        return Settings.from_app(fanout.app, redis_url="redis://in-process")


def _trigger(definition: FunctionDef, event: Any, settings: Settings) -> list[dict[str, Any]]:
    if event is None:
        event = timer_event(definition.function_id, now_ms() // 60_000 * 60_000,
                            definition.crons) if definition.crons \
            else {"name": FUNCTION_INVOKED, "data": {}}
    records = prepare_batch(event, max_bytes=settings.max_event_bytes, allow_system=True)
    if not records:
        raise InvalidEventError("run_function needs at least one event")
    sub = definition.subscription()
    for record in records:
        if record["name"] not in (FUNCTION_INVOKED, SCHEDULED_TIMER) \
                and not sub.accepts(record):
            raise InvalidEventError(
                f"event {record['name']!r} would not start function "
                f"{definition.function_id!r}, which subscribes to "
                f"{', '.join(sub.events) or 'no events'}"
                + (f" where {dict(sub.where)}" if sub.where else ""))
    return records


def _steps_of(state: _RunState) -> list[StepRecord]:
    run = Run.from_store(state.run_id, state.fields, state.steps)
    out: list[StepRecord] = []
    for record in run.steps if run else []:
        out.append(record)
        match = _BRANCH.fullmatch(record.id)
        if record.kind == "branch" and match and match.group(1) in state.branches:
            out += _steps_of(state.branches[match.group(1)][int(match.group(2))])
    return out


def run_function(function: Function, event: Any = None, *,
                 steps: Mapping[str, Any] | None = None,
                 fail_steps: Mapping[str, Any] | None = None,
                 waits: Mapping[str, Any] | None = None,
                 invokes: Mapping[str, Any] | None = None) -> FunctionResult:
    """Run ``function`` (what ``@fanout.function`` returned) to its end, in-process.

    ``event`` is the trigger: an ``Event``, a dict, or a list of them (``ctx.events`` of
    a batch); by default a cron function gets this minute's ``fanout/scheduled.timer``
    event and others the ``fanout/function.invoked`` event of ``fanout.invoke``.
    Stubs are keyed by step id (every ``id``, ``id:1``…) or by one key (``id:1``):

    - ``steps``: outputs of ``step.run`` steps, whose functions are then not called;
    - ``fail_steps``: an exception each attempt of a step raises, or a list of them for
      its first attempts (then it runs, or takes its ``steps`` stub);
    - ``waits``: the event a ``wait_for_event`` step receives (a dict without ``name``
      gets the awaited name), or ``None`` / ``TIMED_OUT`` for a timeout;
    - ``invokes``: the child run's output for an ``invoke`` step, an exception (or a
      ``StepError``) for a failed child, or ``TIMED_OUT``.

    Unstubbed steps run for real. Returns a ``FunctionResult``; raises ``StubError``
    for a missing or impossible stub and warns (``UnusedStubWarning``) about unused ones.
    """
    if not isinstance(function, Function):
        raise TypeError(f"run_function takes a fanout function (what @fanout.function "
                        f"returns), got {function!r}")
    definition = function.definition
    settings = _settings(function.fanout)
    stubs = _Stubs(steps, fail_steps, waits, invokes)
    records = _trigger(definition, event, settings)
    kit = _InProcessFanout(function.fanout, settings, stubs)
    state = _RunState(derived_id(definition.function_id, records[0]["id"]), {
        "function": definition.function_id, "task": definition.task_name,
        "queue": definition.queue, "status": "queued", "created_at": str(now_ms()),
        "attempt": "0", "events": json.dumps(records, separators=(",", ":")),
        "event_name": records[0]["name"]})
    kit.runs[state.run_id] = state
    try:
        _off_loop(lambda: _drive(kit, definition, state))
    except _Abort as abort:
        raise abort.error from None
    unused = stubs.unused()
    if unused:
        warnings.warn(UnusedStubWarning(
            f"run {definition.function_id!r} never reached the steps of "
            f"{', '.join(unused)}"), stacklevel=2)
    run = Run.from_store(state.run_id, state.fields, state.steps)
    assert run is not None
    return FunctionResult(
        run=run, steps=_steps_of(state), events_sent=kit.events_sent, sleeps=kit.sleeps,
        retries=kit.retries, invocations=kit.invocations,
        stubbed=frozenset(k for s in state.walk() for k in s.stubbed),
        lifecycle_event=kit.lifecycle.get(state.run_id))
