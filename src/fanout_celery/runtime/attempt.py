"""The body of every function's task: pass flow control's gate, take the run's lease,
execute one attempt, release what it held. And the thread that keeps leases alive."""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import LeaseLostError
from ..model.definition import FunctionDef
from ..model.events import now_ms
from ..model.forksafe import ForkSafeLock
from ..model.settings import Settings
from ..store.port import FlowKey, NotStarted, SlotSet, Store
from .execution import Execution
from .journal import Journal
from .services import Services

logger = logging.getLogger("fanout.execution")


class LeaseKeeper:
    """Renews the leases of the runs executing in this process, from one thread."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self._held: dict[str, str] = {}
        self._slots: dict[str, Sequence[SlotSet]] = {}
        self._lock = ForkSafeLock()
        self._pid = 0
        self._wake = threading.Event()

    def hold(self, run_id: str, token: str, slots: Sequence[SlotSet] = ()) -> None:
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
            self._wake.wait(self._settings.lease_seconds / 3)
            with self._lock:
                held = list(self._held.items())
                slots = list(self._slots.items())
            if not held:
                continue
            try:
                expiry = now_ms() + self._settings.lease_ms
                self._store.renew(held, expiry)
                if slots:  # concurrency slots expire with the lease they belong to
                    self._store.renew_slots(slots, expiry)
            except Exception:  # Redis briefly away: the next round tries again
                logger.warning("lease: renewal failed", exc_info=True)


@dataclass
class Outcome:
    """How one attempt ended, for the task that reports it to Celery.

    ``status``: the run's status after the attempt (completed, failed, cancelled, queued,
    sleeping, waiting), or why it did not start (throttled, done, busy, early, missing,
    lease-lost). ``error``: what failed the run. ``retried``: the step (None: the
    handler body) that parks to retry, and its error. ``wake_at``: when a parked run is
    due (ms). ``attempts``: the task ids of the run's earlier attempts, when it ended."""

    status: str
    error: BaseException | None = None
    retried: tuple[str | None, BaseException] | None = None
    wake_at: int | None = None
    attempts: list[str] = field(default_factory=list)


def run_attempt(services: Services, function: FunctionDef, run_id: str,
                attempt_id: str = "") -> Outcome:
    """Execute one attempt of ``run_id`` (``attempt_id``: the Celery task id of this
    attempt, recorded on the run)."""
    store = services.store
    admission = services.admission
    slots: list[SlotSet] = []
    if function.flow.gates_start:
        gate, slots = admission.gate(function, run_id)
        if gate != "ok":
            # Waiting for a concurrency slot (a release enqueues it) or throttled (a timer
            # does): either way this message is done.
            return Outcome("throttled")
    token = uuid.uuid4().hex
    now = services.clock()
    started = store.start(run_id, token, now=now, lease_exp=now + services.settings.lease_ms,
                          attempt=attempt_id)
    if isinstance(started, NotStarted):
        if slots and started.reason in ("done", "missing"):
            services.effects.enqueue_woken(admission.release(run_id, slots))
        # done: a duplicate of a finished run; busy: executing elsewhere (if that worker
        # dies, its lease expires and the pump re-enqueues the run); early: a timer's
        # message arrived before its time and the timer was put back.
        logger.debug("run %s: not started (%s %s)", run_id, started.reason, started.info)
        if started.reason == "missing":
            logger.warning("run %s: no such run (expired or never created)", run_id)
        return Outcome(started.reason)
    run = started.run
    mode = services.paused(function.function_id)
    if mode is not None:
        return _paused(services, function, run_id, token, run, started.steps, mode, slots)
    buffer = FlowKey.loads(run.get("buffer") or "")
    if buffer is not None:  # a debounced or batched run: later events open a new one
        store.close_buffer(buffer, run_id)
    if services.on_start is not None:
        services.on_start(run_id, function.function_id, int(run.get("executions", 1)))
    services.leases.hold(run_id, token, slots)
    status = "lease-lost"
    try:
        finish_after = function.timeouts.finish_seconds if function.timeouts else None
        if finish_after is not None:
            # Idempotent (same member, same score), so a resumed run keeps its deadline.
            first_start = int(run.get("started_at") or now)
            store.add_deadlines([(f"finish:{run_id}", first_start + int(finish_after * 1000))])
        parent_steps = store.load_steps(run["branch_of"]) if run.get("branch_of") else None
        journal = Journal(store, run_id, token, services.settings, services.clock)
        execution = Execution(services, function, journal, run, started.steps, parent_steps,
                              attempt_id)
        try:
            status = execution.execute()
        except LeaseLostError:
            raise
        except Exception as exc:
            if store.transient(exc):
                # The store is away for now: the run keeps its lease, which expires, and
                # the pump resumes the run from its last checkpoint.
                raise
            # Anything else would fail the same way on every attempt: fail the run once
            # rather than leave it to its lease and loop.
            logger.exception("run %s: execution failed outside the handler", run_id)
            status = execution.fail_internally(exc)
        # The earlier attempts that parked in a wait or sleep; those that parked to retry
        # keep their RETRY state (they did fail).
        retried = set((run.get("retried_attempts") or "").split(","))
        earlier = [t for t in (run.get("attempts") or "").split(",")
                   if t and t != attempt_id and t not in retried]
        return Outcome(status, error=execution.failure, retried=execution.retried,
                       wake_at=execution.wake_at,
                       attempts=earlier if status in ("completed", "failed", "cancelled")
                       else [])
    except LeaseLostError as exc:
        logger.warning("%s; another worker resumes it", exc)
        return Outcome("lease-lost")
    finally:
        services.leases.release(run_id)
        if slots and status != "lease-lost":
            services.effects.enqueue_woken(admission.release(run_id, slots))


def _paused(services: Services, function: FunctionDef, run_id: str, token: str,
            run: dict[str, str], steps: dict[str, str], mode: str,
            slots: list[SlotSet]) -> Outcome:
    """The function is paused: hold the run for the resume (or, paused with "skip", end a
    run that never started as skipped)."""
    store = services.store
    try:
        if mode == "skip" and int(run.get("executions", 1)) <= 1 and not steps:
            now = services.clock()
            store.finish(run_id, token, "skipped",
                         {"ended_at": str(now), "error": json.dumps(
                             {"type": "Skipped", "message": "the function is paused (skip)"})},
                         retention_ms=services.settings.retention_ms)
            return Outcome("skipped")
        services.effects.hold(function.function_id, run_id)  # first: a crash here resumes
        store.park(run_id, token, "paused", wake_at=None)
        return Outcome("paused")
    finally:
        if slots:
            services.effects.enqueue_woken(services.admission.release(run_id, slots))
