"""One attempt of a run: call the handler from the top, replay memoized steps, execute
the next ones, then park the run or finish it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from ..errors import (
    CancelRequested,
    ConfigurationError,
    InvalidEventError,
    InvalidStepError,
    LeaseLostError,
    NonRetriableError,
    StepError,
    StepOutputError,
    Suspend,
)
from ..model.events import (
    FUNCTION_CANCELLED,
    FUNCTION_FAILED,
    FUNCTION_FINISHED,
    Event,
    derived_id,
    dumps,
)
from ..model.records import cancelled_info, error_info
from ..model.retry import retry_at_ms
from .context import Context
from .parallel import BranchDone, BranchFailed
from .state import AttemptState

logger = logging.getLogger("fanout.execution")

LIFECYCLE = (FUNCTION_FINISHED, FUNCTION_FAILED, FUNCTION_CANCELLED)

# Errors that will fail the same way on every attempt: retrying them is pointless.
PERMANENT = (NonRetriableError, StepError, InvalidStepError, InvalidEventError,
             ConfigurationError)


class Execution(AttemptState):
    """One attempt of one run: call the handler, then park or finish the run."""

    # -- the attempt ------------------------------------------------------------------
    def execute(self) -> str:
        """Call the handler from the top; returns the status the run was left in."""
        if self.run.get("cancel"):
            return self._cancelled()
        ctx = Context(self)
        self.ctx = ctx
        if not self.mw:
            return self._execute(ctx)
        status, error = "lease-lost", None
        try:
            status = self._execute(ctx, self._enter)
            return status
        except BaseException as exc:
            error = exc
            raise
        finally:
            try:
                self.mw.after_execution(ctx, status, error)
            except Exception:  # the attempt's outcome is committed; this cannot change it
                self.log.exception("run %s: middleware after_execution failed", self.run_id)

    def _enter(self, ctx: Context) -> None:
        # Called inside the handler's try: an error here (a DecryptionError, a failing
        # before_execution) is retried or fails the run like the handler's own errors,
        # instead of escaping the task and leaving the run to its lease.
        ctx.events = [Event(**self.mw.transform_input(ctx, None, e.model_dump(
            exclude_none=True))) for e in ctx.events]
        ctx.event = ctx.events[0]
        self.mw.before_execution(ctx)

    def _execute(self, ctx: Context, enter: Callable[[Context], None] | None = None) -> str:
        try:
            if enter is not None:
                enter(ctx)
            output = self._call_handler(ctx)
        except BranchDone as done:
            output = done.result
        except Suspend as sus:
            if not sus.parked:
                # A cancel requested while the handler ran is seen here, at the park: an
                # ``except CancelRequested`` below would not catch it from this block.
                try:
                    retry = sus.error is not None
                    self.park(sus.status, sus.wake_at_ms, sus.step,
                              extra=self.retried_attempts() if retry else None)
                except CancelRequested:
                    return self._cancelled()
            self.wake_at = sus.wake_at_ms
            if sus.error is not None and sus.step is not None:
                self.retried = (sus.step[0], sus.error)
            return sus.status
        except CancelRequested:
            return self._cancelled()
        except LeaseLostError:
            raise
        except PERMANENT as exc:
            return self._fail(exc)
        except Exception as exc:
            if self.services.store.transient(exc):
                # The store refused an effect of this attempt (a failover, a restart):
                # not the handler's failure. The attempt stops without using a retry; the
                # run keeps its lease, which expires, and resumes from its last
                # checkpoint.
                raise
            return self._retry_body(exc)
        try:
            encoded = self._storable(output, "returned")
            if self.mw:
                encoded = self._storable(
                    self.mw.transform_output(ctx, None, json.loads(encoded)), "middleware made")
        except Exception as exc:  # raised on every replay too: fail, do not loop
            return self._fail(exc)
        # The parent of an invoke or a parallel branch and the finished event get the
        # output as stored: what middleware made of it (ciphertext, with encryption).
        stored = json.loads(encoded)
        self._announce(FUNCTION_FINISHED, {"output": stored},
                       {"status": "completed", "output": stored})
        self.finish("completed", output=encoded, error="")
        return "completed"

    def _storable(self, output: Any, what: str) -> str:
        """The output as stored; ``StepOutputError`` when it cannot be: not JSON (nested
        too deep, say), not valid Unicode, or over ``fanout_max_step_output_bytes``."""
        fid = self.function.function_id
        if isinstance(output, BaseModel):  # as step outputs are: its JSON form
            output = output.model_dump(mode="json")
        try:
            encoded = dumps(output)
            size = len(encoded.encode())  # lone surrogates pass dumps, not UTF-8
        except (TypeError, ValueError, RecursionError) as exc:
            raise StepOutputError(f"function {fid!r} {what} a value that cannot be stored "
                                  f"(not JSON): {type(exc).__name__}: {exc}") from None
        limit = self.settings.max_step_output_bytes
        if size > limit:
            raise StepOutputError(
                f"function {fid!r} {what} a value of {size} bytes, over the limit of {limit} "
                "(fanout_max_step_output_bytes); store it elsewhere and return a reference")
        return encoded

    def _retry_body(self, exc: Exception) -> str:
        """The handler body raised outside any step: retry it from the top."""
        policy = self.function.retry_policy
        if self.body_attempt >= policy.max_retries:
            return self._fail(exc)
        wake = retry_at_ms(policy, self.body_attempt + 1, self.clock(), exc)
        self.log.info("run %s: handler raised %r; retry %d in %.2fs", self.run_id, exc,
                      self.body_attempt + 1, (wake - self.clock()) / 1000)
        try:
            self.park("queued", wake, attempt=str(self.body_attempt + 1),
                      error=dumps(error_info(exc)), extra=self.retried_attempts())
        except CancelRequested:
            return self._cancelled()
        self.wake_at, self.retried = wake, (None, exc)
        return "queued"

    def _call_handler(self, ctx: Context) -> Any:
        try:
            if self.is_async:
                return asyncio.run(self.function.handler(ctx))
            return self.function.handler(ctx)
        except BranchFailed as failed:
            # A branch's error ends its branch run as if the handler had raised it.
            raise failed.error from None

    def _fail(self, exc: BaseException) -> str:
        info = error_info(exc)
        if isinstance(exc, StepError):
            # The step's record holds its traceback; the run names the step, once.
            info = {"type": exc.error.get("type"), "message": exc.error.get("message"),
                    "step": exc.step_id}
        self.log.warning("run %s of %s failed: %s: %s", self.run_id, self.function.function_id,
                         info["type"], info["message"])
        self._announce(FUNCTION_FAILED, {"error": info}, {"status": "failed", "error": info})
        self.finish("failed", error=dumps(info))
        self.failure = exc
        return "failed"

    def fail_internally(self, exc: Exception) -> str:
        """Fail the run for an error outside the handler's control (an announcement or a
        store reply that will not change on a retry)."""
        return self._fail(exc)

    def _cancelled(self) -> str:
        reason = self.journal.field("cancel")
        info = json.loads(reason) if reason else cancelled_info("cancelled")
        self.log.info("run %s of %s cancelled", self.run_id, self.function.function_id)
        self._announce(FUNCTION_CANCELLED, {"error": info}, {"status": "failed", "error": info})
        self.finish("cancelled", error=dumps(info))
        return "cancelled"

    def _announce(self, name: str, data: dict[str, Any], outcome: dict[str, Any]) -> None:
        # Done before the run is marked final, idempotently: a crash in between replays the
        # run, which announces the same outcome again and changes nothing the second time.
        self.effects.run_ended(self.run_id, self.run, outcome)
        # A run started by a lifecycle event announces nothing itself: a function
        # subscribed to fanout/function.finished would otherwise start itself again,
        # forever. Branch runs end inside their parent.
        if self.branch is not None or (self.events and
                                       self.events[0].get("name") in LIFECYCLE):
            return
        payload = {"function_id": self.function.function_id, "run_id": self.run_id,
                   "event": self.events[0] if self.events else None, **data}
        # With an id derived from the run: sent again after a crash, it starts nothing new.
        self.effects.announce({"name": name, "data": payload,
                               "id": derived_id(self.run_id, name)}, (self.run_id, ""))
