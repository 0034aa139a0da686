"""The state of one attempt, shared by the execution, the step API and the context:
which steps are recorded (the memo), how far the replay has come, and the writes that
keep the memo and the store in step."""

from __future__ import annotations

import inspect
import json
import logging
from typing import Any

from ..model.definition import FunctionDef
from ..model.records import unpack_step
from ..model.settings import Settings
from ..store.port import WaiterRef
from .journal import Journal
from .services import Services

logger = logging.getLogger("fanout.execution")


class AttemptState:
    """State of one attempt of one run while its handler executes: the memo of recorded
    steps, the replay position, and the writes that keep both in step with the store."""

    def __init__(self, services: Services, function: FunctionDef, journal: Journal,
                 run: dict[str, str], steps: dict[str, str],
                 parent_steps: dict[str, str] | None = None, attempt_id: str = "") -> None:
        self.services = services
        self.attempt_id = attempt_id  # this attempt's Celery task id, if any
        self.effects = services.effects
        self.clock = services.clock
        self.function = function
        self.journal = journal
        self.run_id = journal.run_id
        self.run = run
        # A branch run of a parallel group replays the parent's steps up to the group.
        self.memo: dict[str, dict[str, Any]] = {
            k: unpack_step(v) for k, v in {**(parent_steps or {}), **steps}.items()}
        self.branch: tuple[str, int] | None = (
            (run["branch_step"], int(run["branch_index"])) if run.get("branch_of") else None)
        self.is_async = inspect.iscoroutinefunction(function.handler)
        self.mw = services.middleware
        self.ctx: Any = None  # the handler's Context, once built
        # What the attempt ended with, for the task that reports it: the error that
        # failed the run; the step (None: the handler body) that parked to retry, and its
        # error; when a parked run is due.
        self.failure: BaseException | None = None
        self.retried: tuple[str | None, BaseException] | None = None
        self.wake_at: int | None = None
        self.events: list[dict[str, Any]] = json.loads(run.get("events", "[]"))
        self.body_attempt = int(run.get("attempt", 0))
        self.log = logging.LoggerAdapter(logger, {"run_id": self.run_id})
        self._seq = max((int(r.get("seq", 0)) for r in self.memo.values()), default=-1) + 1
        # Memoized steps not yet reached in this replay: ctx.logger is silent until then.
        self._pending_replay = sum(1 for r in self.memo.values() if r["status"] != "retrying")
        # Where each step recorded before this attempt is in the run's order, and the
        # furthest of them this attempt has reached: whether the run already went past a
        # point of the handler (ctx.step.patched).
        self._recorded = {k: int(r.get("seq", 0)) for k, r in self.memo.items()}
        self._frontier = -1
        # Buffered checkpoints (checkpoints="buffered"): written in one round trip at the
        # next durable write, every checkpoint_buffer_steps, or before a step starts once
        # the oldest is checkpoint_buffer_ms old.
        self.buffering = function.checkpoints == "buffered"
        self._pending: list[tuple[str, str]] = []
        self._pending_since = 0

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def replaying(self) -> bool:
        return self._pending_replay > 0

    def replayed(self, key: str) -> None:
        self._pending_replay -= 1

    def reached(self, key: str) -> None:
        """The handler entered step ``key`` in this attempt."""
        seq = self._recorded.get(key)
        if seq is not None and seq > self._frontier:
            self._frontier = seq

    def went_past(self) -> bool:
        """Whether steps were recorded, before this attempt, beyond the furthest one it
        has reached: the run already went past this point (on the code of then)."""
        return any(seq > self._frontier for seq in self._recorded.values())

    def replay_done(self) -> None:
        self._pending_replay = 0

    def next_seq(self) -> int:
        seq = self._seq
        self._seq += 1
        return seq

    def reload_steps(self) -> None:
        """Read the step table again (a parallel group was joined while parking)."""
        self.memo.update({k: unpack_step(v) for k, v in self.journal.load_steps().items()})

    # -- writes -----------------------------------------------------------------------
    def checkpoint(self, key: str, encoded: str, record: dict[str, Any], *,
                   buffer: bool = False) -> None:
        """Record a step: now (with any buffered before it, in one write), or, with
        ``buffer``, at the next durable write."""
        if buffer:
            if not self._pending:
                self._pending_since = self.clock()
            self._pending.append((key, encoded))
            self.memo[key] = record
            if len(self._pending) >= self.settings.checkpoint_buffer_steps:
                self.flush()
            return
        if self._pending:
            self._pending.append((key, encoded))
            self.memo[key] = record
            self.flush()
            return
        self.journal.checkpoint(key, encoded)
        self.memo[key] = record

    def flush(self) -> None:
        """Write the buffered checkpoints, in order, in one round trip."""
        if self._pending:
            records, self._pending = self._pending, []
            self.journal.checkpoint_many(records)

    def flush_if_due(self) -> None:
        if self._pending and \
                self.clock() - self._pending_since >= self.settings.checkpoint_buffer_ms:
            self.flush()

    def settle(self, key: str, expect: str, encoded: str, record: dict[str, Any],
               waits: WaiterRef | None = None) -> dict[str, Any]:
        """Checkpoint ``record`` only if the step is still ``expect`` (a timeout racing an
        event or a child run); returns the record that won."""
        self.flush()
        current = self.journal.settle(key, expect, encoded, waits)
        if current is not None and current:
            record = unpack_step(current)
        self.memo[key] = record
        return record

    def park(self, status: str, wake_at: int | None, step: tuple[str, str, Any] | None = None,
             expect: tuple[str, str] | None = None, extra: dict[str, str] | None = None,
             **fields: str) -> dict[str, Any] | None:
        """Park the run until ``wake_at``. With ``expect=(key, status)``, park only if that
        step is still in that status; otherwise return its new record (resolved)."""
        self.flush()
        current = self.journal.park(status, wake_at, (step[0], step[1]) if step else None,
                                    expect, {**fields, **(extra or {})})
        if current is None:
            return None
        record: dict[str, Any] = unpack_step(current) if current else {}
        if expect is not None:
            self.memo[expect[0]] = record
        return record

    def retried_attempts(self) -> dict[str, str]:
        """The run field listing the attempts that parked to retry, this one added: their
        tasks keep their RETRY state when the run ends (the others get a final event)."""
        if not self.attempt_id:
            return {}
        earlier = self.run.get("retried_attempts", "")
        ids = [i for i in earlier.split(",") if i][-19:] + [self.attempt_id]
        return {"retried_attempts": ",".join(ids)}

    def finish(self, status: str, **fields: str) -> None:
        # The buffered checkpoints go in the same write: a run's end is one round trip.
        records, self._pending = self._pending, []
        self.journal.finish(status, fields, records)
