"""Running one attempt of a run: take the lease, replay, execute, then park or finish."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import admission
from .errors import (
    CancelRequested,
    ConfigurationError,
    InvalidEventError,
    InvalidStepError,
    LeaseLostError,
    NonRetriableError,
    StepError,
    Suspend,
)
from .events import (
    FUNCTION_CANCELLED,
    FUNCTION_FAILED,
    FUNCTION_FINISHED,
    Event,
    derived_id,
    dumps,
    now_ms,
)
from .parallel import BranchDone, BranchFailed
from .retry import retry_at_ms
from .step import Context, Step, error_info
from .store.flow import SlotSet

if TYPE_CHECKING:
    from .fanout import Fanout
    from .function import FunctionDef
    from .settings import Settings

logger = logging.getLogger("fanout.execution")

LIFECYCLE = (FUNCTION_FINISHED, FUNCTION_FAILED, FUNCTION_CANCELLED)

# Errors that will fail the same way on every attempt: retrying them is pointless.
PERMANENT = (NonRetriableError, StepError, InvalidStepError, InvalidEventError,
             ConfigurationError)


class LeaseKeeper:
    """Renews the leases of the runs executing in this process, from one thread."""

    def __init__(self, fanout: Fanout) -> None:
        self._fanout = fanout
        self._held: dict[str, str] = {}
        self._slots: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._pid = 0
        self._wake = threading.Event()

    def hold(self, run_id: str, token: str, slots: list[str] | None = None) -> None:
        with self._lock:
            self._held[run_id] = token
            if slots:
                self._slots[run_id] = slots
            if self._pid != os.getpid():  # first use, or first use after a fork
                self._pid = os.getpid()
                threading.Thread(target=self._loop, name="fanout-lease", daemon=True).start()

    def release(self, run_id: str) -> None:
        with self._lock:
            self._held.pop(run_id, None)
            self._slots.pop(run_id, None)

    def _loop(self) -> None:
        pid = os.getpid()
        while self._pid == pid:
            settings = self._fanout.settings
            self._wake.wait(settings.lease_seconds / 3)
            with self._lock:
                held = list(self._held.items())
                slots = list(self._slots.items())
            if not held:
                continue
            try:
                expiry = now_ms() + int(settings.lease_seconds * 1000)
                self._fanout.store.renew(held, expiry)
                if slots:  # concurrency slots expire with the lease they belong to
                    self._fanout.flow_store.renew_slots(slots, expiry)
            except Exception:  # Redis briefly away: the next round tries again
                logger.warning("lease: renewal failed", exc_info=True)


class Execution:
    """State of one attempt of one run while its handler executes."""

    # What ``ctx.step`` is built from (fanout_celery.testing substitutes a subclass).
    step_class: type[Step] = Step

    def __init__(self, fanout: Fanout, function: FunctionDef, run_id: str, token: str,
                 run: dict[str, str], steps: dict[str, str],
                 parent_steps: dict[str, str] | None = None) -> None:
        self.fanout = fanout
        self.function = function
        self.run_id = run_id
        self.token = token
        self.run = run
        # A branch run of a parallel group replays the parent's steps up to the group.
        self.memo: dict[str, dict[str, Any]] = {
            k: json.loads(v) for k, v in {**(parent_steps or {}), **steps}.items()}
        self.branch: tuple[str, int] | None = (
            (run["branch_step"], int(run["branch_index"])) if run.get("branch_of") else None)
        self.is_async = inspect.iscoroutinefunction(function.handler)
        self.mw = fanout.middleware
        self.ctx: Context | None = None
        self.events: list[dict[str, Any]] = json.loads(run.get("events", "[]"))
        self.body_attempt = int(run.get("attempt", 0))
        self.log = logging.LoggerAdapter(logger, {"run_id": run_id})
        self._seq = max((int(r.get("seq", 0)) for r in self.memo.values()), default=-1) + 1
        # Memoized steps not yet reached in this replay: ctx.logger is silent until then.
        self._pending_replay = sum(1 for r in self.memo.values() if r["status"] != "retrying")

    @property
    def settings(self) -> Settings:
        return self.fanout.settings

    @property
    def replaying(self) -> bool:
        return self._pending_replay > 0

    def replayed(self, key: str) -> None:
        self._pending_replay -= 1

    def replay_done(self) -> None:
        self._pending_replay = 0

    def next_seq(self) -> int:
        seq = self._seq
        self._seq += 1
        return seq

    def reload_steps(self) -> None:
        """Read the step table again (a parallel group was joined while parking)."""
        steps = self.fanout.store.load_steps(self.run_id)
        self.memo.update({k: json.loads(v) for k, v in steps.items()})

    def lease_exp(self) -> int:
        return now_ms() + int(self.settings.lease_seconds * 1000)

    def _commit(self, mode: str, what: str, **kwargs: Any) -> tuple[int, str | None]:
        code, current = self.fanout.store.commit(self.run_id, self.token, mode, **kwargs)
        if code == 0:
            raise LeaseLostError(f"run {self.run_id} lost its lease {what}")
        if code == -1:
            raise CancelRequested()
        return code, current

    def checkpoint(self, key: str, encoded: str, record: dict[str, Any]) -> None:
        self._commit("step", f"before step {key!r}", step_key=key, step_json=encoded,
                     ms=self.lease_exp())
        self.memo[key] = record

    def settle(self, key: str, expect: str, encoded: str, record: dict[str, Any],
               waits: tuple[str, str] | None = None) -> dict[str, Any]:
        """Checkpoint ``record`` only if the step is still ``expect`` (a timeout racing an
        event or a child run); returns the record that won."""
        code, current = self._commit("step", f"at step {key!r}", step_key=key,
                                     step_json=encoded, ms=self.lease_exp(), expect=expect,
                                     waits=waits)
        if code == 2:
            record = json.loads(current) if current else record
        self.memo[key] = record
        return record

    def park(self, status: str, wake_at: int | None, step: tuple[str, str, Any] | None = None,
             expect: tuple[str, str] | None = None, **fields: str) -> dict[str, Any] | None:
        """Park the run until ``wake_at``. With ``expect=(key, status)``, park only if that
        step is still in that status; otherwise return its new record (resolved)."""
        key, encoded = (step[0], step[1]) if step else ("", "")
        if expect:
            key = expect[0]
        code, current = self._commit(
            "park", "while parking", step_key=key, step_json=encoded,
            ms="" if wake_at is None else wake_at, fields={"status": status, **fields},
            expect=expect[1] if expect else "",
        )
        if code == 2:
            record: dict[str, Any] = json.loads(current) if current else {}
            self.memo[key] = record
            return record
        return None

    def finish(self, status: str, **fields: str) -> None:
        retention = int(self.settings.retention * 1000)
        self._commit("finish", "while finishing", ms=retention,
                     fields={"status": status, "ended_at": str(now_ms()), **fields})

    # -- the attempt ---------------------------------------------------------------
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
                    self.park(sus.status, sus.wake_at_ms, sus.step)
                except CancelRequested:
                    return self._cancelled()
            return sus.status
        except CancelRequested:
            return self._cancelled()
        except LeaseLostError:
            raise
        except PERMANENT as exc:
            return self._fail(exc)
        except Exception as exc:
            policy = self.function.retry_policy
            if self.body_attempt >= policy.max_retries:
                return self._fail(exc)
            wake = retry_at_ms(policy, self.body_attempt + 1, now_ms(), exc)
            self.log.info("run %s: handler raised %r; retry %d in %.2fs", self.run_id, exc,
                          self.body_attempt + 1, (wake - now_ms()) / 1000)
            try:
                self.park("queued", wake, attempt=str(self.body_attempt + 1),
                          error=dumps(error_info(exc)))
            except CancelRequested:
                return self._cancelled()
            return "queued"
        try:
            encoded = dumps(output)
        except (TypeError, ValueError) as exc:
            return self._fail(InvalidStepError(
                f"function {self.function.function_id!r} returned a value that is not JSON: "
                f"{exc}"))
        if self.mw:
            try:
                encoded = dumps(self.mw.transform_output(ctx, None, json.loads(encoded)))
            except Exception as exc:  # raised on every replay too: fail, do not loop
                return self._fail(exc)
        # The parent of an invoke or a parallel branch and the finished event get the
        # output as stored: what middleware made of it (ciphertext, with encryption).
        stored = json.loads(encoded)
        self._announce(FUNCTION_FINISHED, {"output": stored},
                       {"status": "completed", "output": stored})
        self.finish("completed", output=encoded, error="")
        return "completed"

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
            info = {**exc.error, "step": exc.step_id}
        self.log.warning("run %s of %s failed: %s: %s", self.run_id, self.function.function_id,
                         info["type"], info["message"])
        self._announce(FUNCTION_FAILED, {"error": info}, {"status": "failed", "error": info})
        self.finish("failed", error=dumps(info))
        return "failed"

    def _cancelled(self) -> str:
        reason = self.fanout.store.run_field(self.run_id, "cancel")
        info = json.loads(reason) if reason else {"type": "Cancelled", "message": "cancelled"}
        self.log.info("run %s of %s cancelled", self.run_id, self.function.function_id)
        self._announce(FUNCTION_CANCELLED, {"error": info}, {"status": "failed", "error": info})
        self.finish("cancelled", error=dumps(info))
        return "cancelled"

    def _announce(self, name: str, data: dict[str, Any], outcome: dict[str, Any]) -> None:
        # Done before the run is marked final, idempotently: a crash in between replays the
        # run, which announces the same outcome again and changes nothing the second time.
        self.fanout.run_ended(self.run_id, self.run, outcome)
        self._emit(name, data)

    def _emit(self, name: str, data: dict[str, Any]) -> None:
        # Sent before the run is marked final, with an id derived from the run: a crash in
        # between replays the run and sends the same event again, which starts nothing new.
        # A run started by a lifecycle event announces nothing itself: a function subscribed
        # to fanout/function.finished would otherwise start itself again, forever.
        if self.branch is not None or (self.events and
                                       self.events[0].get("name") in LIFECYCLE):
            return
        payload = {"function_id": self.function.function_id, "run_id": self.run_id,
                   "event": self.events[0] if self.events else None, **data}
        self.fanout.send_system(
            {"name": name, "data": payload, "id": derived_id(self.run_id, name)},
            parent=(self.run_id, ""),
        )


def run_attempt(fanout: Fanout, function: FunctionDef, run_id: str) -> str:
    """Execute one attempt of ``run_id``; the body of every function's Celery task."""
    store = fanout.store
    slots: list[SlotSet] = []
    if function.flow.gates_start:
        gate, slots = admission.gate(fanout, function, run_id)
        if gate != "ok":
            # Waiting for a concurrency slot (a release enqueues it) or throttled (a timer
            # does): either way this message is done.
            return "throttled"
    token = uuid.uuid4().hex
    now = now_ms()
    started = store.start(run_id, token, now, now + int(fanout.settings.lease_seconds * 1000))
    if started.kind != "ok":
        if slots and started.kind in ("done", "missing"):
            admission.release(fanout, run_id, slots)
        # done: a duplicate of a finished run; busy: executing elsewhere (if that worker
        # dies, its lease expires and the pump re-enqueues the run); early: a timer's
        # message arrived before its time and the timer was put back.
        logger.debug("run %s: not started (%s %s)", run_id, started.kind, started.info)
        if started.kind == "missing":
            logger.warning("run %s: no such run (expired or never created)", run_id)
        return started.kind
    if started.run.get("buffer"):  # a debounced or batched run: later events open a new one
        fanout.flow_store.close_buffer(started.run["buffer"], run_id)
    fanout.leases.hold(run_id, token, [s.slots for s in slots])
    status = "lease-lost"
    try:
        finish_after = function.timeouts.finish_seconds if function.timeouts else None
        if finish_after is not None:
            # Idempotent (same member, same score), so a resumed run keeps its deadline.
            first_start = int(started.run.get("started_at") or now)
            fanout.store.add_deadlines([(f"finish:{run_id}",
                                         first_start + int(finish_after * 1000))])
        parent_steps = store.load_steps(started.run["branch_of"]) \
            if started.run.get("branch_of") else None
        status = Execution(fanout, function, run_id, token, started.run, started.steps,
                           parent_steps).execute()
        return status
    except LeaseLostError as exc:
        logger.warning("%s; another worker resumes it", exc)
        return "lease-lost"
    finally:
        fanout.leases.release(run_id)
        if slots and status != "lease-lost":
            admission.release(fanout, run_id, slots)
