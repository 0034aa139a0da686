"""The store port: every read and write of run state, as typed verbs.

``RedisStore`` (``store/redis``) implements it on Redis, with Lua scripts where a change
must be atomic; ``MemoryStore`` (``store/memory.py``) implements the same verbs in a
dict, for unit tests and ``fanout_celery.testing``. Both are checked against one set of
contract tests (``tests/store``).

Times are epoch milliseconds, given by the caller (its clock). An execution's writes
are fenced by its lease ``token``: when the lease was taken over the store raises
``LeaseLostError`` and writes nothing; when a cancel was requested it raises
``CancelRequested`` after writing (the execution stops at this step boundary).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal, Protocol

from ..model.records import NewRun
from .results import (  # re-exported: the port's vocabulary
    CancelEntry,
    Created,
    Dispatch,
    FlowKey,
    Gate,
    NotStarted,
    Resolution,
    SlotSet,
    Started,
    TimerAnnouncements,
    WaiterRef,
    Waiters,
)

__all__ = [
    "AsyncReader",
    "CancelEntry",
    "Created",
    "Dispatch",
    "FlowKey",
    "Gate",
    "NotStarted",
    "Resolution",
    "SlotSet",
    "Started",
    "Store",
    "TimerAnnouncements",
    "WaiterRef",
    "Waiters",
]


class AsyncReader(Protocol):
    """Reads for ``async`` code: the same answers as the store's, awaited."""

    async def load_runs(self, run_ids: Sequence[str]
                        ) -> list[tuple[dict[str, str], dict[str, str]]]: ...

    async def wait_finished(self, run_id: str, timeout: float) -> bool: ...


class Store(Protocol):
    """Run state, indexes, subscriptions and flow-control state under one key prefix."""

    prefix: str

    def transient(self, exc: BaseException) -> bool:
        """Whether ``exc``, raised by a verb, says "not now" (the server is away, loading,
        read-only during a failover, out of memory): the caller should try again later."""

    # -- creating runs ----------------------------------------------------------------
    def create_runs(self, runs: Sequence[NewRun], events: Sequence[dict[str, Any]], *,
                    now: int, dispatch_deadline: int, keep_events_ms: int,
                    lookback_ms: int) -> Created:
        """Store ``events`` (each once: SET NX, kept ``keep_events_ms``), note them as
        recent for waits, read who waits for their names, and create each run that
        does not exist yet (queued, covered by the dispatch index until it starts)."""

    def record_skipped(self, runs: Sequence[NewRun], reasons: Sequence[str], *, now: int,
                       retention_ms: int) -> None:
        """Record runs flow control skipped (final status ``skipped``); a run that
        already exists is left as it is."""

    def create_rerun(self, run: NewRun, steps: dict[str, str], *, now: int,
                     retention_ms: int, dispatch_deadline: int) -> None:
        """Create a run whose step table starts with ``steps`` (a rerun)."""

    def confirm_dispatched(self, run_ids: Sequence[str], redispatch_at: int) -> None:
        """The runs' messages are on the broker: re-publish them at ``redispatch_at``
        only if they have not started by then."""

    # -- one execution ----------------------------------------------------------------
    def start(self, run_id: str, token: str, *, now: int, lease_exp: int,
              attempt: str = "") -> Started | NotStarted:
        """Take the run's lease and load its record and steps, in one round trip.
        ``attempt`` (a Celery task id) is added to the run's ``attempts`` (the last 20)."""

    def checkpoint(self, run_id: str, token: str, key: str, record: str, *,
                   lease_exp: int) -> None:
        """Write one step record and extend the lease."""

    def checkpoint_many(self, run_id: str, token: str, records: Sequence[tuple[str, str]],
                        *, lease_exp: int) -> None:
        """Write ``(key, record)`` step records, in order, in one fenced write (buffered
        checkpoints), and extend the lease."""

    def settle(self, run_id: str, token: str, key: str, expect: str, record: str, *,
               lease_exp: int, waiter: WaiterRef | None = None) -> str | None:
        """Write ``record`` only if the step is still in status ``expect`` (a timeout
        racing an event or a child run). Returns None when written, else the record
        that won. ``waiter``: a waiter to remove."""

    def park(self, run_id: str, token: str, status: str, *, wake_at: int | None,
             step: tuple[str, str] | None = None, expect: tuple[str, str] | None = None,
             fields: dict[str, str] | None = None) -> str | None:
        """Release the lease and park the run in ``status`` until ``wake_at`` (None:
        until something resolves it), writing ``step`` (key, record) and ``fields``.
        With ``expect`` (key, status), park only if that step is still in that status;
        otherwise return its current record and keep the lease."""

    def park_waiting(self, run_id: str, token: str, key: str, record: str, *,
                     ref: WaiterRef, path: str | None, waiter: str, timeout_at: int,
                     path_expires: int, any_limit: int, lease_exp: int = 0) -> list[str]:
        """Register a ``wait_for_event`` waiter (at ``ref``, matching on ``path``) and
        park the run, atomically with reading the ids of events of that name noted since
        the run was created (and still recent), by the store's own clock: an event noted
        before is among them, one noted after finds the waiter (the caller drops those
        an earlier wait of the run consumed).
        Only events of the waiter's bucket are read when the store can tell (its path
        was in use since then; ``path_expires``: how long it must stay so); a waiter
        without a path reads the first ``any_limit``. ``lease_exp``: the run's lease expiry,
        kept while the store registers the waiter (on a cluster, before the run parks)."""

    def register_waiter(self, ref: WaiterRef, *, path: str | None, waiter: str, since: int,
                        path_expires: int, any_limit: int) -> list[str]:
        """Register a ``wait_for_event`` waiter again (idempotent), atomically with
        reading the ids of events of that name noted since ``since``: for a run that
        resumes with its wait's record still "waiting" (its waiter may never have been
        registered, on a cluster, if its worker died in between)."""

    def finish(self, run_id: str, token: str, status: str, fields: dict[str, str], *,
               retention_ms: int, steps: Sequence[tuple[str, str]] = (),
               steps_retention_ms: int | None = None, archive_at: int = 0) -> None:
        """Mark the run final, release its lease and expire it after the retention (its
        step records after ``steps_retention_ms``, when shorter); ``steps`` (buffered
        checkpoints) are written first, in the same write; a field of ``fields`` whose value
        is empty is removed. ``archive_at`` (ms, 0: none): queue the run for the history
        sink, in the same write."""

    def renew(self, leases: Sequence[tuple[str, str]], lease_exp: int) -> list[bool]:
        """Renew the leases ``(run_id, token)`` still held; returns which were."""

    def load_steps(self, run_id: str) -> dict[str, str]:
        """The run's step table (key -> JSON record)."""

    def step_record(self, run_id: str, key: str) -> str | None:
        """One step's JSON record."""

    def run_field(self, run_id: str, name: str) -> str | None:
        """One changing field of a run's record (status, cancel, events...)."""

    # -- from outside a run -----------------------------------------------------------
    def resolve(self, run_id: str, key: str, expect: str, record: str, *, deadline: int,
                waiter: WaiterRef | None = None) -> Resolution:
        """Resolve a waiting step (an event arrived, a child finished): write ``record``
        if the step is still ``expect`` and the run not final; wake the run if parked
        (its timer at ``deadline`` covers a lost publish)."""

    def join(self, parent: str, group: str, branch: str, record: str, *, branches: int,
             joined: str, deadline: int) -> Resolution:
        """Record a branch result in the parent; when every branch has one, mark the
        group ``joined`` and wake the parent if parked."""

    def cancel(self, run_id: str, *, now: int, retention_ms: int, error: str,
               archive: bool = False) -> Literal["cancelled", "requested", "final", "missing"]:
        """Cancel a queued or parked run at once; flag an executing one. ``archive``: a
        run cancelled at once is queued for the history sink (``claim_archive``)."""

    def drop_waiters(self, entries: Sequence[WaiterRef]) -> None:
        """Remove step waiters."""

    def add_cancels(self, entries: Sequence[CancelEntry]) -> None:
        """Register cancel_on entries."""

    def drop_cancels(self, entries: Sequence[tuple[str, str, str]]) -> None:
        """Remove ``(event name, bucket, run id)`` cancel_on entries."""

    def add_deadlines(self, entries: Sequence[tuple[str, int]]) -> None:
        """Schedule ``(start:<run> | finish:<run>, when)`` timeouts (idempotent)."""

    def claim_deadlines(self, now: int, limit: int) -> list[str]:
        """Take the deadlines due at ``now``."""

    # -- the pump ---------------------------------------------------------------------
    def claim_due(self, now: int, deadline: int, limit: int) -> list[str]:
        """Claim due timers and stale dispatches (moved to ``deadline``, so a pump that
        dies before publishing is covered); returns the run ids to publish now, earliest
        due first."""

    def announce_timer(self, wake_at: int) -> None:
        """Tell the pumps waiting for their next round that a timer is due at
        ``wake_at`` (ms): one set by this process, due before their next look."""

    def timer_announcements(self) -> TimerAnnouncements:
        """A listener for ``announce_timer`` (one per pump thread)."""

    def claim_archive(self, now: int, deadline: int, limit: int) -> list[str]:
        """Finished runs queued for the history sink, oldest first (moved to
        ``deadline``: a pump that dies before handing them over is covered)."""

    def drop_archive(self, run_ids: Sequence[str]) -> None:
        """Forget runs the history sink received."""

    def next_due(self) -> int | None:
        """When the earliest timer is due (ms), or None without timers: the pump sleeps
        until then rather than a whole interval."""

    def expire_leases(self, now: int, deadline: int, limit: int) -> list[str]:
        """Drop leases that expired at ``now`` (their worker died) and queue their runs
        again; returns the run ids to publish now."""

    def drop_timers(self, run_ids: Sequence[str]) -> None:
        """Forget timer and dispatch entries of runs that are final or gone."""

    def dispatches(self, run_ids: Sequence[str]) -> list[Dispatch | None]:
        """Status and route of each run (None where it no longer exists)."""

    # -- queries ----------------------------------------------------------------------
    def load_runs(self, run_ids: Sequence[str]) -> list[tuple[dict[str, str], dict[str, str]]]:
        """The record (static fields in line) and step table of each run; empty dicts
        where it does not exist."""

    def statuses(self, run_ids: Sequence[str]) -> list[str | None]: ...

    def wait_finished(self, run_id: str, timeout: float) -> bool:
        """Block until the run ends, at most ``timeout`` seconds: True when it ended
        (now, or within the last minute), False on timeout. The caller reads the run
        again either way; this only saves it from polling."""

    def async_reader(self) -> AsyncReader:
        """The reads an ``async`` caller awaits without blocking its event loop."""

    def runs_for_events(self, event_ids: Sequence[str]) -> list[list[str]]:
        """The ids of the runs each event started, sorted."""

    def function_run_ids(self, function_ids: Sequence[str], since: int | None = None,
                         until: int | None = None,
                         limit: int | None = None) -> list[tuple[float, str]]:
        """``(created ms, run id)`` of the functions' runs in the range (both ends
        included), newest first; at most ``limit`` (read at most that many per
        function)."""

    def event_ids(self, since: int | None, start: int, num: int) -> list[str]:
        """Stored event ids, newest first."""

    def get_events(self, event_ids: Sequence[str]) -> list[dict[str, Any] | None]: ...

    def trim_history(self, function_ids: Iterable[str], older_than: int) -> None:
        """Forget index entries older than the retention (their runs expired)."""

    def inspect_run(self, run_id: str) -> dict[str, str]:
        """The run's record as stored, every field (for operators and tests)."""

    def indexes_of(self, run_id: str) -> dict[str, float | None]:
        """The run's scores in the global indexes: ``timer``, ``lease``, ``dispatch``."""

    def waiters_of(self, event_name: str) -> Waiters:
        """Every step waiter and cancel_on entry of an event name, in every bucket (for
        operators and tests: this scans)."""

    def count(self, index: Literal["events", "deadlines", "timers", "leases",
                                   "dispatch"]) -> int:
        """Entries in one global index."""

    def ttl_ms(self, run_id: str) -> int:
        """Milliseconds until the run's record expires; -1 when it does not, -2 gone."""

    def server_info(self) -> dict[str, str]:
        """The server's name, version and eviction policy (empty where unknown)."""

    # -- cron and subscriptions -------------------------------------------------------
    def cron_marks(self, function_ids: Sequence[str]) -> list[int | None]: ...

    def set_cron_marks(self, marks: dict[str, int]) -> None: ...

    def publish_subscriptions(self, subs: dict[str, str]) -> None: ...

    def load_subscriptions(self) -> dict[str, str]: ...

    # -- pauses -------------------------------------------------------------------------
    def set_paused(self, function_id: str, mode: str | None) -> None:
        """Pause a function ("hold": its runs wait for the resume; "skip": new runs are
        skipped), or resume it (None)."""

    def paused(self) -> dict[str, str]:
        """The paused functions and how."""

    def hold(self, function_id: str, run_id: str) -> None:
        """Keep a run of a paused function for its resume (idempotent)."""

    def take_held(self, function_id: str) -> list[str]:
        """The held runs of a function, forgotten (the resume publishes them)."""

    # -- flow control -----------------------------------------------------------------
    def gate(self, run_id: str, *, now: int, slot_exp: int, slots: Sequence[SlotSet],
             throttle: tuple[FlowKey, int, int] | None, queue_score: float) -> Gate:
        """Take concurrency slots (or queue for one) and pass the throttle
        (``(key, emission interval ms, tolerance ms)``) before a run starts."""

    def release(self, run_id: str, slots: Sequence[SlotSet], *, now: int, deadline: int,
                reserve_until: int) -> list[str]:
        """Free ``run_id``'s slots ('' frees none) and pop waiting runs into the room,
        each with a slot reserved until ``reserve_until``; returns them."""

    def waiting_queues(self, cursor: int = 0, count: int = 200) -> tuple[int, list[SlotSet]]:
        """About ``count`` slot sets whose wait queue holds runs, from ``cursor``; returns
        the cursor to continue from (0: the scan went round)."""

    def reconcile(self, slots: Sequence[SlotSet], *, now: int, deadline: int,
                  reserve_until: int) -> list[list[str]]:
        """``release('', [s])`` for each slot set, in one round trip: the runs woken into
        each one's free slots."""

    def slot_state(self, slot_set: SlotSet) -> tuple[list[str], list[str]]:
        """The runs holding a slot of ``slot_set`` and those queued for one, in order."""

    def renew_slots(self, entries: Sequence[tuple[str, Sequence[SlotSet]]], exp: int) -> None:
        """Extend the slots of executing runs with their leases."""

    def rate(self, key: FlowKey, *, now: int, period_ms: int, limit: int, member: str) -> bool:
        """Take a place in a sliding-window rate limit; False when it is full."""

    def claim_key(self, key: FlowKey, run_id: str, *, now: int, window_ms: int | None) -> str:
        """Claim a key for a run (for ``window_ms``, or until released). Returns '' when
        claimed, else the run id holding it."""

    def unclaim_key(self, key: FlowKey, run_id: str) -> None:
        """Release a key if ``run_id`` still holds it."""

    def buffer(self, mode: Literal["debounce", "batch"], key: FlowKey, run: NewRun, *,
               now: int, period_ms: int, cap_ms: int | None, max_size: int,
               retention_ms: int) -> tuple[str, str]:
        """Add the run's event to the key's pending run, or open one with ``run``.
        Returns (pending run id, ``new`` | ``added`` | ``full``)."""

    def close_buffer(self, key: FlowKey, run_id: str) -> None:
        """A buffered run starts: later events open a new one."""
