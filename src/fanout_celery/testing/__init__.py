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
replaced: the run's state is in an in-memory store (the same store port as Redis), events
sent are captured, time is virtual (sleeps and retry back-offs end at once),
``wait_for_event`` and ``invoke`` steps take their outcome from stubs, and ``parallel``
branches run one after the other in this process. It never connects to Redis, and never
reads or caches the ``Fanout``'s own settings.
Flow control, ``cancel_on`` and ``timeouts`` do not apply: they act between runs.

For integration tests on a real Redis and worker, see ``fanout_celery.pytest_plugin``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..engine.cron import timer_event
from ..errors import InvalidEventError
from ..fanout import Fanout
from ..integration.task import Function
from ..model.definition import FunctionDef
from ..model.events import (
    FUNCTION_INVOKED,
    SCHEDULED_TIMER,
    Event,
    derived_id,
    now_ms,
    prepare_batch,
)
from ..model.records import new_run
from ..model.runs import Run, StepRecord
from ..model.settings import Settings
from .kit import Invocation, Kit, Retry, Sleep, off_loop, sleeps_of
from .stubs import TIMED_OUT, StubAbort, StubError, Stubs

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

_BRANCH = re.compile(r"(.+)\[(\d+)\]")


class UnusedStubWarning(UserWarning):
    """A stub was given for a step id that the run never reached (a typo?)."""


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


def _settings(fanout: Fanout) -> Settings:
    """The app's settings, read afresh (never the Fanout's cached ones, and never its
    Redis: the kit runs without one)."""
    return Settings.from_app(fanout.app, redis_url="redis://in-process")


def _trigger(definition: FunctionDef, event: Any, settings: Settings) -> list[dict[str, Any]]:
    if event is None:
        event = timer_event(definition.function_id, now_ms() // 60_000 * 60_000,
                            definition.crons, settings.timezone) if definition.crons \
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


def _steps_of(kit: Kit, run_id: str) -> tuple[list[StepRecord], list[str]]:
    """The run's steps in execution order, each parallel branch's own steps right after
    that branch's result record (``group[i]``); and the ids of the runs walked."""
    raw, steps = kit.store.load_runs([run_id])[0]
    run = Run.from_store(run_id, raw, steps)
    out: list[StepRecord] = []
    walked = [run_id]
    for record in run.steps if run else []:
        out.append(record)
        match = _BRANCH.fullmatch(record.id)
        if record.kind == "branch" and match:
            branch_id = derived_id(run_id, match.group(1), match.group(2))
            more, ids = _steps_of(kit, branch_id)
            out += more
            walked += ids
    return out, walked


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
    if not isinstance(function, Function) or not isinstance(function.fanout, Fanout):
        raise TypeError(f"run_function takes a fanout function (what @fanout.function "
                        f"returns), got {function!r}")
    definition = function.definition
    settings = _settings(function.fanout)
    stubs = Stubs(steps, fail_steps, waits, invokes)
    records = _trigger(definition, event, settings)
    kit = Kit(function.fanout, definition, settings, stubs)
    run = new_run(definition.subscription(), records)
    now = kit.clock()
    kit.store.create_runs([run], records, now=now, dispatch_deadline=now,
                          keep_events_ms=settings.keep_events_ms, lookback_ms=0)
    try:
        off_loop(lambda: kit.drive(run.run_id))
    except StubAbort as abort:
        raise abort.error from None
    unused = stubs.unused()
    if unused:
        warnings.warn(UnusedStubWarning(
            f"run {definition.function_id!r} never reached the steps of "
            f"{', '.join(unused)}"), stacklevel=2)
    result = kit.store.load_runs([run.run_id])[0]
    final = Run.from_store(run.run_id, *result)
    assert final is not None
    ordered, walked = _steps_of(kit, run.run_id)
    return FunctionResult(
        run=final, steps=ordered, events_sent=kit.events_sent,
        sleeps=sleeps_of(kit.store, walked), retries=kit.retries,
        invocations=kit.invocations, stubbed=frozenset(kit.stubbed),
        lifecycle_event=kit.lifecycle_events.get(run.run_id))
