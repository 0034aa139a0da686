"""``ctx.step``: checkpointed operations. Each takes a step id unique within the run; an id
repeated (in a loop) gets an implicit counter: ``id``, ``id:1``, ``id:2``..."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, overload

from ..errors import InvalidStepError
from ..model.events import Event, StreamedIds, derived_id, is_stream
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
            buffered: bool | None = None, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once and memoize its JSON output.

        On replay the recorded output is returned without calling ``fn``. A failure is
        retried (per step) with the function's policy, or ``retries`` when given; after
        the last retry ``StepError`` is raised here on every replay. A pydantic model
        output (``output_type=``, or ``fn``'s return annotation) is stored as JSON and
        returned as the model, first time and on replay.

        ``buffered`` overrides the function's ``checkpoints`` for this step: True lets
        its checkpoint wait for the next durable write (a crash before it runs the body
        again), False writes it (and any buffered before it) now.
        """
        core = self._core
        plan = core.plan_run(step_id, fn, retries, output_type, buffered)
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

    def patched(self, patch_id: str) -> bool:
        """Whether this run takes the new code path of a change named ``patch_id``.

        True for a run that reaches this point for the first time (on the code that
        has the change), False for a run that had already gone past it on the code
        before the change (it is replaying steps recorded beyond this point); the answer
        is recorded like a step, so the run keeps it on every later replay::

            if ctx.step.patched("new-pricing"):
                price = ctx.step.run("price-v2", price_v2, order)
            else:
                price = ctx.step.run("price", price_v1, order)

        Once no run in flight predates the change, drop the old branch (and, later, the
        ``patched`` call itself).
        """
        core = self._core
        x = core.state
        key, record = core.begin(f"patched:{patch_id}", "patch")
        if record is not None:
            x.replayed(key)
            return bool(record.get("output"))
        # Steps recorded (on earlier code) beyond the furthest this attempt has reached:
        # the run went past this point before the change.
        new_code = not x.went_past()
        now = x.clock()
        encoded, stored = core.encode(key, {
            "status": "completed", "kind": "patch", "output": new_code, "attempts": 1,
            "started_at": now, "ended_at": now, "seq": core.seq(None)})
        x.checkpoint(key, encoded, stored)
        return new_code

    @overload
    def send_event(  # type: ignore[overload-overlap]
            self, step_id: str,
            events: Event | dict[str, Any] | list[Any] | tuple[Any, ...]) -> list[str]: ...
    @overload
    def send_event(self, step_id: str, events: Iterable[Any]) -> StreamedIds: ...

    def send_event(self, step_id: str, events: Any) -> list[str] | StreamedIds:
        """Send events once, linked to this run; returns their ids.

        Events without an id get one derived from the run and step, so a replay after a
        crash half-way through sending starts no second run.

        An iterator or generator (a stream: rows of a database cursor, say) is sent in
        chunks of 500 without holding it all: each chunk is validated, sent, and counted
        in the step's record, so a resumed run skips the chunks sent and each event is
        sent once (its id is derived from the run, the step and its index). The replay
        must pass the same stream again. It returns a ``StreamedIds`` sequence (its
        length, and each id derived on demand). A bad event stops a stream at its chunk,
        after the chunks before it were sent (a list is all or nothing).
        """
        core = self._core
        x = core.state
        key, record = core.begin(step_id, "send_event")
        if record is not None and record["status"] == "completed":
            x.replayed(key)
            output = record.get("output")
            if isinstance(output, dict):  # a stream: its count
                return StreamedIds(x.run_id, key, int(output["streamed"]))
            return list(output or [])
        x.replay_done()
        if is_stream(events) or (record is not None and record["status"] == "sending"):
            return self._send_stream(key, record, events)
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

    def _send_stream(self, key: str, record: dict[str, Any] | None,
                     events: Any) -> StreamedIds:
        """``send_event`` of a stream: each chunk is validated, sent, and counted in the
        step's record ("sending", with the events sent so far), so a resumed attempt
        skips what was sent; the ids are derived from the run, the step and the index,
        so a chunk sent again after a crash before its count was recorded starts
        nothing new."""
        core = self._core
        x = core.state
        run_id = x.run_id
        if not is_stream(events):
            raise InvalidStepError(
                f"step {key!r} was streaming events when the run stopped; a replay must "
                "pass an iterator again (not a list) to go on from where it stopped")
        sent = int(record.get("sent", 0)) if record is not None else 0
        started = int(record["started_at"]) if record is not None else x.clock()
        progress: dict[str, Any] = {"status": "sending", "kind": "send_event", "attempts": 1,
                    "started_at": started, "seq": core.seq(record), "sent": sent}
        for read, records in x.effects.stream_events(
                events, ctx=x.ctx, id_for=lambda i: derived_id(run_id, key, str(i)),
                start=sent):
            x.effects.send_events(records, parent=(run_id, key))
            progress["sent"] = read
            encoded, stored = core.encode(key, progress)
            x.checkpoint(key, encoded, stored)
        done = {"status": "completed", "kind": "send_event", "attempts": 1,
                "started_at": started, "ended_at": x.clock(), "seq": progress["seq"],
                "output": {"streamed": progress["sent"]}}
        encoded, stored = core.encode(key, done)
        x.checkpoint(key, encoded, stored)
        return StreamedIds(run_id, key, int(progress["sent"]))
