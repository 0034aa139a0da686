"""``ctx.step``: checkpointed operations. Each takes a step id unique within the run; an id
repeated (in a loop) gets an implicit counter: ``id``, ``id:1``, ``id:2``..."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ..errors import InvalidStepError
from ..model.events import derived_id
from ..model.retry import RetryPolicy
from .core import StepCore
from .parallel import ParallelSteps
from .waiting import WaitingSteps


def _close(awaitable: Any) -> None:
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()  # no "coroutine was never awaited" warning


class Step(WaitingSteps, ParallelSteps):
    """The step API handed to handlers as ``ctx.step``."""

    def __init__(self, core: StepCore) -> None:
        self._core = core

    @property
    def attempt(self) -> int:
        """0-based attempt of the step body now executing."""
        return self._core.attempt

    def run(self, step_id: str, fn: Callable[..., Any], *args: Any,
            retries: int | RetryPolicy | None = None, output_type: Any = None,
            **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once and memoize its JSON output.

        On replay the recorded output is returned without calling ``fn``. A failure is
        retried (per step) with the function's policy, or ``retries`` when given; after
        the last retry ``StepError`` is raised here on every replay. A pydantic model
        output (``output_type=``, or ``fn``'s return annotation) is stored as JSON and
        returned as the model, first time and on replay.
        """
        core = self._core
        plan = core.plan_run(step_id, fn, retries, output_type)
        if plan.memoized:
            return plan.output
        core.in_step = True
        try:
            value = core.state.services.body(plan.call, lambda: fn(*args, **kwargs))
            if inspect.isawaitable(value):
                _close(value)
                raise InvalidStepError(
                    f"step {plan.key!r}: {fn!r} is a coroutine function; await steps from an "
                    "async def handler to use async step functions")
        except InvalidStepError:
            raise
        except Exception as exc:
            core.in_step = False
            core.failed(plan, exc)
        finally:
            core.in_step = False
        return core.completed(plan, value)

    def send_event(self, step_id: str, events: Any) -> list[str]:
        """Send events once, linked to this run; returns their ids.

        Events without an id get one derived from the run and step, so a replay after a
        crash half-way through sending starts no second run.
        """
        core = self._core
        x = core.state
        key, record = core.begin(step_id, "send_event")
        if record is not None and record["status"] == "completed":
            x.replayed(key)
            return list(record.get("output") or [])
        x.replay_done()
        started = x.clock()
        run_id = x.run_id
        records = x.effects.prepare_events(events, ctx=x.ctx,
                                           id_for=lambda i: derived_id(run_id, key, str(i)))
        ids = [r["id"] for r in records]
        # Checked before anything is sent: a record too large to store would otherwise
        # fail the step after every event had started its runs.
        encoded, stored = core.encode(key, {
            "status": "completed", "output": ids, "attempts": 1, "kind": "send_event",
            "started_at": started, "ended_at": started, "seq": core.seq(record),
        })
        x.effects.send_events(records, parent=(run_id, key))
        stored["ended_at"] = x.clock()
        encoded = core.encode(key, stored)[0]
        x.checkpoint(key, encoded, stored)
        return ids
