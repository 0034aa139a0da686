"""The engine of ``run_function``: the real runtime, on an in-memory store, in virtual time.

Each attempt is the production ``run_attempt`` (the real ``Execution`` and ``Step``
code, the real journal) over a ``MemoryStore``. What differs is at the runtime's ports:

- step bodies go through the stubs (``steps=`` / ``fail_steps=``);
- effects are captured: events sent, child runs invoked, the lifecycle event; parallel
  branch runs are created in the memory store and driven here, one after the other, and
  the real lifecycle joins them;
- time is virtual: after each attempt the clock jumps to the run's wake time, so sleeps
  and retry back-offs end at once; a ``wait_for_event`` or ``invoke`` step is resolved
  from its stub (or times out when the clock jumps past its timeout).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from ..engine.admission import Admission
from ..engine.lifecycle import Lifecycle
from ..engine.router import Router
from ..engine.sending import Sender
from ..model.definition import FunctionDef, Subscription
from ..model.events import Event, derived_id, now_ms, prepare
from ..model.flowcontrol import FlowControl
from ..model.records import (
    ANY_BUCKET,
    FINAL,
    RunMessage,
    branch_runs,
    pack_step,
    unpack_step,
    waiter_field,
)
from ..model.settings import Settings
from ..runtime import Services, run_attempt
from ..runtime.ports import StepCall
from ..store.memory import MemoryStore
from ..store.port import WaiterRef
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


class VirtualClock:
    """Wall-clock time plus the jumps the kit made."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self) -> int:
        return now_ms() + self.offset

    def advance_to(self, when: int) -> None:
        self.offset += max(when - self(), 0)


class NoLeases:
    """Leases need no renewal here: nothing else could take them over."""

    def hold(self, run_id: str, token: str, slots: Sequence[Any] = ()) -> None:
        return None

    def release(self, run_id: str) -> None:
        return None


class Captured:
    """The kit's broker: messages are noted, never sent (the kit drives runs itself)."""

    def __init__(self) -> None:
        self.messages: list[RunMessage] = []

    def publish(self, messages: Sequence[RunMessage]) -> None:
        self.messages.extend(messages)

    def context(self) -> dict[str, str]:
        return {}


@dataclass
class Kit:
    """One ``run_function`` call: its store, clock, stubs, and what the run did."""

    fanout: Any
    definition: FunctionDef
    settings: Settings
    stubs: Stubs
    clock: VirtualClock = field(default_factory=VirtualClock)
    events_sent: list[Event] = field(default_factory=list)
    sleeps: list[Sleep] = field(default_factory=list)
    retries: list[Retry] = field(default_factory=list)
    invocations: list[Invocation] = field(default_factory=list)
    lifecycle_events: dict[str, Event] = field(default_factory=dict)
    stubbed: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        # Flow control, cancel_on and timeouts act between runs: not here.
        self.definition = replace(self.definition, flow=FlowControl(), timeouts=None,
                                  cancel_on=())
        self.store = MemoryStore(clock=self.clock)
        self.router = Router(self.store)
        for task in self.fanout.functions.values():
            self.router.add(task.definition.subscription())
        self.router.add(self.definition.subscription())
        broker = Captured()
        admission = Admission(self.store, self.settings, self.clock)
        self.lifecycle = Lifecycle(self.store, self.router, broker, admission, self.settings,
                                   emit=self._announced)
        self.sender = Sender(self._dispatched, self.settings, self.fanout.middleware,
                             self.fanout.event_types)
        self.services = Services(store=self.store, effects=self, admission=admission,
                                 leases=NoLeases(), settings=self.settings,
                                 middleware=self.fanout.middleware,
                                 event_types=self.fanout.event_types, body=self._body,
                                 clock=self.clock)

    # -- the runtime's ports ----------------------------------------------------------
    def _body(self, call: StepCall, body: Callable[[], Any]) -> Any:
        failure = self.stubs.failure(call.key, call.step_id, call.attempt)
        if failure is not None:
            raise failure  # as if the body had raised it
        found, value = self.stubs.find("steps", call.key, call.step_id)
        if found:
            self.stubbed.add(call.key)
            return value
        return body()

    def subscription(self, function_id: Any) -> Subscription | None:
        if not isinstance(function_id, str):
            return None
        # Declared in another code base (in production it is published to Redis): the
        # invoke step's stub stands in for it.
        return self.router.get(function_id) or Subscription(function_id, (), task="")

    def prepare_events(self, events: Any, *, ctx: Any,
                       id_for: Callable[[int], str]) -> list[dict[str, Any]]:
        return self.sender.prepare(events, ctx=ctx, id_for=id_for)

    def stream_events(self, events: Any, *, ctx: Any, id_for: Callable[[int], str],
                      start: int) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        return self.sender.stream(events, ctx=ctx, id_for=id_for, start=start)

    def hold(self, function_id: str, run_id: str) -> None:
        return None  # functions are never paused in-process

    def send_events(self, records: Sequence[dict[str, Any]], *,
                    parent: tuple[str, str]) -> None:
        self._dispatched(records, parent=parent)

    def start_child(self, sub: Subscription, event: dict[str, Any], *,
                    parent: tuple[str, str], ctx: Any) -> None:
        self.sender.start(sub, event, parent=parent, ctx=ctx, notify_parent=True)

    def _dispatched(self, records: Sequence[dict[str, Any]],
                    parent: tuple[str, str] | None = None, only: Subscription | None = None,
                    notify_parent: bool = False) -> int:
        if notify_parent and only is not None and parent is not None:  # an invoke step
            if not any(i.step_id == parent[1] for i in self.invocations):
                self.invocations.append(Invocation(parent[1], only.function_id,
                                                   dict(records[0]["data"])))
        else:
            self.events_sent.extend(Event(**r) for r in records)
        return len(records)

    def start_branches(self, parent_id: str, parent: dict[str, str], key: str, n: int) -> None:
        sub = self.definition.subscription()
        runs = branch_runs(sub, parent_id, json.loads(parent.get("events", "[]")), key, n)
        now = self.clock()
        self.store.create_runs(runs, [], now=now, dispatch_deadline=now,
                               keep_events_ms=self.settings.retention_ms, lookback_ms=0)

    def resolve_waits(self, name: str, waiters: dict[str, str],
                      events: Sequence[dict[str, Any]]) -> None:
        self.lifecycle.resolve_waits(name, waiters, events)

    def run_ended(self, run_id: str, run: dict[str, str], outcome: dict[str, Any]) -> None:
        if run.get("branch_of"):  # the real join, into the parent's step table
            self.lifecycle.run_ended(run_id, run, outcome)

    def enqueue_woken(self, run_ids: Sequence[str]) -> None:
        return None

    def announce(self, event: dict[str, Any], parent: tuple[str, str]) -> None:
        self._announced(event, parent)

    def _announced(self, event: dict[str, Any], parent: tuple[str, str]) -> None:
        record = prepare(event, max_bytes=self.settings.max_event_bytes * 4, allow_system=True)
        self.lifecycle_events[parent[0]] = Event(**record)

    # -- driving a run ----------------------------------------------------------------
    def drive(self, run_id: str) -> None:
        """Attempt the run until it is final."""
        for _ in range(MAX_ATTEMPTS):
            before = self.store.inspect_run(run_id)
            run_attempt(self.services, self.definition, run_id)
            after = self.store.inspect_run(run_id)
            if after.get("status") in FINAL:
                return
            self._note_retries(run_id, before, after)
            self._advance(run_id, after)
        raise RuntimeError(f"run {run_id} of {self.definition.function_id!r} did not finish "
                           f"in {MAX_ATTEMPTS} attempts")

    def _note_retries(self, run_id: str, before: dict[str, str],
                      after: dict[str, str]) -> None:
        if after.get("attempt") != before.get("attempt"):  # the handler body raised
            self.retries.append(Retry(
                None, int(after["attempt"]), json.loads(after.get("error") or "{}"),
                max(int(after.get("wake_at") or 0) - self.clock(), 0) / 1000))
        for key, raw in self.store.load_steps(run_id).items():
            record = unpack_step(raw)
            if record["status"] == "retrying":
                self.retries.append(Retry(
                    key, int(record["attempts"]), record.get("error") or {},
                    max(int(record["retry_at"]) - int(record["ended_at"]), 0) / 1000))

    def _advance(self, run_id: str, run: dict[str, str]) -> None:
        """Bring the parked run's next event about: a stubbed outcome, branch runs driven
        to their end, or the clock moved on to its wake time."""
        for key, raw in self.store.load_steps(run_id).items():
            record = unpack_step(raw)
            kind, status = record.get("kind"), record["status"]
            if kind == "parallel" and status == "parallel":
                for i in range(int(record["branches"])):
                    self._drive_branch(derived_id(run_id, key, str(i)))
            elif (kind, status) in (("wait_for_event", "waiting"), ("invoke", "invoking")):
                self._resolve(run_id, key, record)
        wake = run.get("wake_at")
        if wake:
            self.clock.advance_to(int(wake))

    def _drive_branch(self, branch_id: str) -> None:
        off_loop(lambda: self.drive(branch_id))

    def _resolve(self, run_id: str, key: str, record: dict[str, Any]) -> None:
        waiter = None
        if record["kind"] == "wait_for_event":
            entry = waiter_field(run_id, key)
            waiter = WaiterRef(record["event"], record.get("bucket", ANY_BUCKET), entry)
            waiter_json = self.store.waiters_of(record["event"]).steps.get(entry)
        else:
            waiter_json = None
        resolved = self.stubs.resolve(key, record, waiter_json,
                                      self.settings.max_event_bytes, self.clock())
        if resolved is None:  # a timeout: the step's own code settles it, when it is due
            self.clock.advance_to(int(record["timeout_at"]))
            return
        self.store.resolve(run_id, key, record["status"], pack_step(resolved),
                           deadline=self.clock(), waiter=waiter)


def sleeps_of(store: MemoryStore, run_ids: Sequence[str]) -> list[Sleep]:
    """Every sleep step of the runs, in the order they were reached."""
    out: list[tuple[int, Sleep]] = []
    for run_id in run_ids:
        for key, raw in store.load_steps(run_id).items():
            record = unpack_step(raw)
            if record.get("kind") == "sleep" and record["status"] == "completed":
                wake = int(record["wake_at"])
                started = int(record.get("started_at") or wake)
                out.append((int(record.get("seq", 0)), Sleep(
                    key, datetime.fromtimestamp(wake / 1000, tz=UTC),
                    max(wake - started, 0) / 1000)))
    return [s for _, s in sorted(out, key=lambda pair: pair[0])]


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

