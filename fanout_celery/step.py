"""The step API handed to handlers as ``ctx.step``, and the handler's ``ctx``."""

from __future__ import annotations

import inspect
import json
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from pydantic import BaseModel

from .errors import (
    InvalidStepError,
    NestedStepError,
    NonRetriableError,
    StepError,
    StepOutputError,
    Suspend,
    TooManyStepsError,
)
from .events import derived_id, dumps, now_ms
from .parallel import ParallelSteps
from .retry import RetryPolicy, retry_at_ms
from .typed import output_model
from .waiting import WaitingSteps

if TYPE_CHECKING:
    from .execution import Execution

MAX_STEP_ID = 256


def error_info(exc: BaseException) -> dict[str, Any]:
    """The JSON form of an error as recorded on a step or run."""
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc))[-8000:],
    }


@dataclass
class RunPlan:
    """A ``step.run`` about to execute (or already memoized)."""

    key: str
    record: dict[str, Any] | None
    attempt: int
    policy: RetryPolicy
    memoized: bool = False
    output: Any = None
    started: int = 0
    model: Any = None


def _utf8(text: str) -> bool:
    """False for text with lone surrogates, which Redis (UTF-8) cannot store."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _close(awaitable: Any) -> None:
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()  # no "coroutine was never awaited" warning


class Step(WaitingSteps, ParallelSteps):
    """Checkpointed operations. Each takes a step id unique within the run; an id
    repeated (in a loop) gets an implicit counter: ``id``, ``id:1``, ``id:2``…"""

    def __init__(self, execution: Execution) -> None:
        self._x = execution
        self._counts: dict[str, int] = {}
        self._used: set[str] = set()
        self._in_step = False
        self._active: str | None = None
        self.attempt = 0

    # -- bookkeeping ---------------------------------------------------------------
    def _key(self, step_id: Any) -> str:
        if self._in_step:
            raise NestedStepError(
                f"step {step_id!r} was called inside another step's function; steps cannot "
                "be nested: call it from the handler, after the enclosing step returns"
            )
        if not isinstance(step_id, str) or not step_id or len(step_id) > MAX_STEP_ID \
                or not _utf8(step_id):
            raise InvalidStepError(
                f"a step id is a non-empty string of at most {MAX_STEP_ID} characters "
                f"(valid Unicode), got {step_id!r}"
            )
        n = self._counts.get(step_id, 0)
        key = step_id if n == 0 else f"{step_id}:{n}"
        while key in self._used:
            n += 1
            key = f"{step_id}:{n}"
        self._counts[step_id] = n + 1
        self._used.add(key)
        limit = self._x.settings.max_steps
        if len(self._used) > limit:
            raise TooManyStepsError(
                f"run {self._x.run_id} used more than {limit} steps (fanout_max_steps); "
                "for wide work, fan out with step.send_event to another function instead"
            )
        return key

    def _seq(self, record: dict[str, Any] | None) -> int:
        return int(record["seq"]) if record else self._x.next_seq()

    def _encode(self, key: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The record as stored, and as read back (so first run and replay agree)."""
        try:
            encoded = dumps(record)
            size = len(encoded.encode())  # lone surrogates pass dumps, not UTF-8
        except (TypeError, ValueError, RecursionError) as exc:
            raise StepOutputError(f"step {key!r} returned a value that is not JSON: {exc}") \
                from None
        limit = self._x.settings.max_step_output_bytes
        if size > limit:
            raise StepOutputError(
                f"step {key!r} output is {size} bytes, over the limit of "
                f"{limit} (fanout_max_step_output_bytes); store it elsewhere and return a "
                "reference"
            )
        parsed: dict[str, Any] = json.loads(encoded)
        return encoded, parsed

    # -- steps ---------------------------------------------------------------------
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
        plan = self._plan(step_id, fn, retries, output_type)
        if plan.memoized:
            return plan.output
        self._in_step = True
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                _close(value)
                raise InvalidStepError(
                    f"step {plan.key!r}: {fn!r} is a coroutine function; await steps from an "
                    "async def handler to use async step functions")
        except InvalidStepError:
            raise
        except Exception as exc:
            self._in_step = False
            self._failed(plan, exc)
        finally:
            self._in_step = False
        return self._completed(plan, value)

    def _plan(self, step_id: str, fn: Any, retries: int | RetryPolicy | None,
              output_type: Any = None) -> RunPlan:
        """Everything ``run`` decides before calling the step's body."""
        key = self._key(step_id)
        if not callable(fn):
            raise InvalidStepError(f"step {key!r}: expected a callable, got {fn!r}")
        model = output_model(fn, output_type)
        policy = self._x.function.retry_policy if retries is None else RetryPolicy.coerce(retries)
        record = self._x.memo.get(key)
        attempt = 0
        if record is not None:
            status = record["status"]
            if status == "completed":
                self._x.replayed(key)
                output = record.get("output")
                if self._x.mw:
                    output = self._x.mw.transform_input(self._x.ctx, key, output)
                if model is not None:
                    output = model.model_validate(output)
                return RunPlan(key, record, 0, policy, memoized=True, output=output)
            if status == "failed":
                self._x.replayed(key)
                raise StepError(key, record.get("error") or {})
            attempt = int(record.get("attempts", 0))
            if int(record.get("retry_at", 0)) > now_ms():
                raise Suspend("queued", int(record["retry_at"]))
        self._x.replay_done()
        self.attempt = attempt
        if self._x.mw:
            self._x.mw.before_step(self._x.ctx, key)
        return RunPlan(key, record, attempt, policy, started=now_ms(), model=model)

    def _completed(self, plan: RunPlan, value: Any) -> Any:
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        encoded, stored = self._encode(plan.key, {
            "status": "completed", "output": value, "attempts": plan.attempt + 1,
            "started_at": plan.started, "ended_at": now_ms(), "seq": self._seq(plan.record),
        })
        output = stored["output"]
        mw = self._x.mw
        if mw:
            mw.after_step(self._x.ctx, plan.key, output, None)
            # Only the stored copy is transformed (e.g. encrypted); the handler gets output.
            encoded, stored = self._encode(plan.key, {
                **stored, "output": mw.transform_output(self._x.ctx, plan.key, output)})
        self._x.checkpoint(plan.key, encoded, stored)
        return output if plan.model is None else plan.model.model_validate(output)

    def _failed(self, plan: RunPlan, exc: Exception) -> NoReturn:
        key, record, attempt, started, policy = (plan.key, plan.record, plan.attempt,
                                                  plan.started, plan.policy)
        if self._x.mw:
            self._x.mw.after_step(self._x.ctx, key, None, exc)
        now = now_ms()
        base = {"error": error_info(exc), "attempts": attempt + 1, "started_at": started,
                "ended_at": now, "seq": self._seq(record)}
        if isinstance(exc, NonRetriableError) or attempt >= policy.max_retries:
            encoded, stored = self._encode(key, {"status": "failed", **base})
            self._x.checkpoint(key, encoded, stored)
            self._x.log.warning("step %s failed after %d attempt(s): %s", key, attempt + 1, exc)
            raise StepError(key, stored["error"]) from exc
        wake = retry_at_ms(policy, attempt + 1, now, exc)
        encoded, stored = self._encode(key, {"status": "retrying", "retry_at": wake, **base})
        self._x.log.info("step %s attempt %d failed (%s); retry in %.2fs",
                         key, attempt + 1, exc, (wake - now) / 1000)
        raise Suspend("queued", wake, step=(key, encoded, stored))

    def send_event(self, step_id: str, events: Any) -> list[str]:
        """Send events once, linked to this run; returns their ids.

        Events without an id get one derived from the run and step, so a replay after a
        crash half-way through sending starts no second run.
        """
        key = self._key(step_id)
        record = self._x.memo.get(key)
        if record is not None and record["status"] == "completed":
            self._x.replayed(key)
            return list(record.get("output") or [])
        self._x.replay_done()
        started = now_ms()
        run_id = self._x.run_id
        ids = self._x.fanout.send_from_step(
            events, id_for=lambda i: derived_id(run_id, key, str(i)), parent=(run_id, key),
            ctx=self._x.ctx,
        )
        encoded, stored = self._encode(key, {
            "status": "completed", "output": ids, "attempts": 1, "kind": "send_event",
            "started_at": started, "ended_at": now_ms(), "seq": self._seq(record),
        })
        self._x.checkpoint(key, encoded, stored)
        return ids


class ReplayAwareLogger:
    """``ctx.logger``: a logger that stays silent while memoized steps are replayed."""

    def __init__(self, logger: logging.Logger, execution: Execution) -> None:
        self._logger = logger
        self._x = execution

    def _log(self, level: int, msg: str, *args: Any, **kwargs: Any) -> None:
        if not self._x.replaying:
            self._logger.log(level, msg, *args, **kwargs)

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._log(logging.DEBUG, msg, *args, **kwargs)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._log(logging.INFO, msg, *args, **kwargs)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._log(logging.WARNING, msg, *args, **kwargs)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._log(logging.ERROR, msg, *args, **kwargs)

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("exc_info", True)
        self._log(logging.ERROR, msg, *args, **kwargs)


class Context:
    """What a handler receives: the trigger event(s), the step API and run details."""

    def __init__(self, execution: Execution) -> None:
        from .events import Event

        self._x = execution
        self.events = [Event(**e) for e in execution.events]
        self.event = self.events[0]
        self.step: Any = execution.step_class(execution)
        if execution.is_async:
            from .asyncstep import AsyncStep

            self.step = AsyncStep(self.step)
        self.run_id = execution.run_id
        self.function_id = execution.function.function_id
        self.logger = ReplayAwareLogger(
            logging.getLogger(f"fanout.function.{self.function_id}"), execution)

    @property
    def data(self) -> Any:
        """The trigger event's data: its pydantic model when the event name has an
        ``EventType`` registered with the Fanout, else the dict."""
        event_type = self._x.fanout.event_types.get(self.event.name)
        return self.event.data if event_type is None else event_type.parse(self.event.data)

    @property
    def attempt(self) -> int:
        """0-based attempt of the step now executing (of the handler body outside steps)."""
        step = self.step._s if hasattr(self.step, "_s") else self.step
        return step.attempt if step._in_step else self._x.body_attempt
