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

For integration tests on a real Redis and worker, see ``fanout_celery.pytest_plugin``.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError, InvalidEventError
from ..events import FUNCTION_INVOKED, SCHEDULED_TIMER, Event, derived_id, now_ms, prepare_batch
from ..fanout import Fanout
from ..function import Function, FunctionDef
from ..runs import Run, StepRecord
from ..scheduler import timer_event
from ..settings import Settings
from .engine import InProcessFanout, Invocation, Retry, RunState, Sleep, drive, off_loop
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


def _steps_of(state: RunState) -> list[StepRecord]:
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
    stubs = Stubs(steps, fail_steps, waits, invokes)
    records = _trigger(definition, event, settings)
    kit = InProcessFanout(function.fanout, settings, stubs)
    state = RunState(derived_id(definition.function_id, records[0]["id"]), {
        "function": definition.function_id, "task": definition.task_name,
        "queue": definition.queue, "status": "queued", "created_at": str(now_ms()),
        "attempt": "0", "events": json.dumps(records, separators=(",", ":")),
        "event_name": records[0]["name"]})
    try:
        off_loop(lambda: drive(kit, definition, state))
    except StubAbort as abort:
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
