"""The bookkeeping every step kind goes through, whatever it does.

``begin(step_id, kind)`` is the one entrance: it checks the step id, gives a repeated id
its ``:N`` counter, enforces the step limit, and returns the step's key and its recorded
record (checked to be of the same kind). A step kind then either returns what its record
says (a replay) or does its work and records it through the attempt's state
(``checkpoint``, ``settle``, ``park``). ``step.run`` bodies are called through the
``StepBody`` seam of the services (the testing kit stubs them there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from pydantic import BaseModel

from ..errors import (
    InvalidStepError,
    NestedStepError,
    NonRetriableError,
    StepError,
    StepOutputError,
    Suspend,
    TooManyStepsError,
)
from ..model.records import earlier_errors, error_info, pack_step, unpack_step
from ..model.retry import RetryPolicy, retry_at_ms
from ..model.typed import output_model
from .ports import StepCall
from .state import AttemptState

MAX_STEP_ID = 256


def _utf8(text: str) -> bool:
    """False for text with lone surrogates, which Redis (UTF-8) cannot store."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


@dataclass(slots=True)
class RunPlan:
    """A ``step.run`` about to execute (or already memoized)."""

    key: str
    step_id: str
    record: dict[str, Any] | None
    attempt: int
    policy: RetryPolicy
    memoized: bool = False
    output: Any = None
    started: int = 0
    model: Any = None
    buffered: bool = False  # its checkpoint may wait for the next durable write

    @property
    def call(self) -> StepCall:
        return StepCall(self.key, self.step_id, self.attempt)


class StepCore:
    """Step bookkeeping for one attempt (shared by the sync and async step APIs)."""

    def __init__(self, state: AttemptState) -> None:
        self.state = state
        self.counts: dict[str, int] = {}
        self.used: set[str] = set()
        self.in_step = False
        self.active: str | None = None
        self.attempt = 0

    # -- the entrance -----------------------------------------------------------------
    def key(self, step_id: Any) -> str:
        """The key of this call of ``step_id`` (``id``, ``id:1``, ... for repeats)."""
        if self.in_step:
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
        n = self.counts.get(step_id, 0)
        key = step_id if n == 0 else f"{step_id}:{n}"
        while key in self.used:
            n += 1
            key = f"{step_id}:{n}"
        self.counts[step_id] = n + 1
        self.used.add(key)
        self.state.reached(key)
        if len(self.used) > self.state.settings.max_steps:
            self.check_limit(lambda limit: f"run {self.state.run_id} used more than {limit} "
                             "steps")
        return key

    def check_limit(self, what: Callable[[int], str]) -> None:
        """``TooManyStepsError`` past ``fanout_max_steps``; ``what(limit)`` says how."""
        limit = self.state.settings.max_steps
        if len(self.used) > limit:
            raise TooManyStepsError(
                f"{what(limit)} (fanout_max_steps); for wide work, fan out "
                "with step.send_event to another function instead")

    def recorded(self, key: str, kinds: tuple[str, ...]) -> dict[str, Any] | None:
        """The step's record, if any; it must be of one of ``kinds``."""
        record = self.state.memo.get(key)
        if record is not None and record.get("kind", "run") not in kinds:
            raise InvalidStepError(
                f"step {key!r} was recorded as a {record.get('kind', 'run')} step; a step id "
                "must keep its kind across replays (did the handler change while runs were "
                "in flight?)"
            )
        return record

    def begin(self, step_id: Any, kind: str) -> tuple[str, dict[str, Any] | None]:
        """Enter a step: its key and its recorded record (None the first time). Every
        kind but ``step.run`` may have effects outside the run (events, child runs, a
        park): buffered checkpoints are written first."""
        key = self.key(step_id)
        record = self.recorded(key, (kind,))
        if record is None:
            self.stop_if_paused()
        self.state.flush()
        return key, record

    def stop_if_paused(self) -> None:
        """At a step boundary: if the function was paused, hold the run (its resume
        publishes it) and park it; it goes on from here."""
        x = self.state
        fid = x.function.function_id
        if x.services.paused(fid) is not None:
            x.effects.hold(fid, x.run_id)
            raise Suspend("paused", None)

    def seq(self, record: dict[str, Any] | None) -> int:
        return int(record["seq"]) if record else self.state.next_seq()

    def encode(self, key: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The record as stored, and as read back (so first run and replay agree)."""
        try:
            encoded = pack_step(record, self.state.settings.compact_records)
            size = len(encoded.encode())  # lone surrogates pass dumps, not UTF-8
        except (TypeError, ValueError, RecursionError) as exc:
            raise StepOutputError(f"step {key!r} returned a value that is not JSON: {exc}") \
                from None
        limit = self.state.settings.max_step_output_bytes
        if size > limit:
            raise StepOutputError(
                f"step {key!r} output is {size} bytes, over the limit of "
                f"{limit} (fanout_max_step_output_bytes); store it elsewhere and return a "
                "reference"
            )
        return encoded, unpack_step(encoded)

    # -- step.run ---------------------------------------------------------------------
    def plan_run(self, step_id: str, fn: Any, retries: int | RetryPolicy | None,
                 output_type: Any = None, buffered: bool | None = None) -> RunPlan:
        """Everything ``step.run`` decides before calling its body."""
        key = self.key(step_id)
        if buffered is not None and not isinstance(buffered, bool):
            raise InvalidStepError(f"step {key!r}: buffered must be True, False or None, "
                                   f"not {buffered!r}")
        if not callable(fn):
            raise InvalidStepError(f"step {key!r}: expected a callable, got {fn!r}")
        model = output_model(fn, output_type)
        x = self.state
        policy = x.function.retry_policy if retries is None else RetryPolicy.coerce(retries)
        record = self.recorded(key, ("run",))
        attempt = 0
        if record is not None:
            status = record["status"]
            if status == "completed":
                x.replayed(key)
                output = record.get("output")
                if x.mw:
                    output = x.mw.transform_input(x.ctx, key, output)
                if model is not None:
                    output = model.model_validate(output)
                return RunPlan(key, step_id, record, 0, policy, memoized=True, output=output)
            if status == "failed":
                x.replayed(key)
                raise StepError(key, record.get("error") or {})
            attempt = int(record.get("attempts", 0))
            if int(record.get("retry_at", 0)) > self.state.clock():
                raise Suspend("queued", int(record["retry_at"]))
        x.replay_done()
        self.stop_if_paused()
        self.attempt = attempt
        x.flush_if_due()  # buffered checkpoints older than fanout_checkpoint_buffer_ms
        if x.mw:
            x.mw.before_step(x.ctx, key)
        return RunPlan(key, step_id, record, attempt, policy, started=self.state.clock(),
                       model=model, buffered=x.buffering if buffered is None else buffered)

    def completed(self, plan: RunPlan, value: Any) -> Any:
        """Record a body's output; returns what the handler gets (its JSON round trip,
        or the model)."""
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        x = self.state
        record = {
            "status": "completed", "output": value, "attempts": plan.attempt + 1,
            "started_at": plan.started, "ended_at": self.state.clock(), "seq": self.seq(plan.record),
        }
        if errors := earlier_errors(plan.record):
            record["errors"] = errors
        encoded, stored = self.encode(plan.key, record)
        output = stored["output"]
        if x.mw:
            x.mw.after_step(x.ctx, plan.key, output, None)
            # Only the stored copy is transformed (e.g. encrypted); the handler gets output.
            encoded, stored = self.encode(plan.key, {
                **stored, "output": x.mw.transform_output(x.ctx, plan.key, output)})
        x.checkpoint(plan.key, encoded, stored, buffer=plan.buffered)
        return output if plan.model is None else plan.model.model_validate(output)

    def failed(self, plan: RunPlan, exc: Exception) -> NoReturn:
        """Record a body's failure: a retry (the run parks until its back-off ends) or,
        after the last retry or a ``NonRetriableError``, ``StepError``."""
        x = self.state
        key = plan.key
        if x.mw:
            x.mw.after_step(x.ctx, key, None, exc)
        now = self.state.clock()
        base = {"error": error_info(exc), "attempts": plan.attempt + 1,
                "started_at": plan.started, "ended_at": now, "seq": self.seq(plan.record)}
        if errors := earlier_errors(plan.record):
            base["errors"] = errors
        if isinstance(exc, NonRetriableError) or plan.attempt >= plan.policy.max_retries:
            encoded, stored = self.encode(key, {"status": "failed", **base})
            x.checkpoint(key, encoded, stored)
            x.log.warning("step %s failed after %d attempt(s): %s", key, plan.attempt + 1, exc)
            raise StepError(key, stored["error"]) from exc
        wake = retry_at_ms(plan.policy, plan.attempt + 1, now, exc)
        encoded, stored = self.encode(key, {"status": "retrying", "retry_at": wake, **base})
        x.log.info("step %s attempt %d failed (%s); retry in %.2fs",
                   key, plan.attempt + 1, exc, (wake - now) / 1000)
        raise Suspend("queued", wake, step=(key, encoded, stored), error=exc)
