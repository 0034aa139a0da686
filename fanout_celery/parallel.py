"""``ctx.step.parallel``: branches executed concurrently by separate Celery tasks.

The parent records the group, starts one *branch run* per branch and parks. A branch run
executes the same function: it replays the handler with the parent's recorded steps up
to the group, runs only its own branch (whose steps are checkpointed in the branch run),
and ends there. Each branch's result is written into the parent's step table; the
branch that completes the set wakes the parent (a Lua script counts the results, so two
branches finishing at once cannot both miss it). No Celery chord is involved.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .errors import InvalidStepError, StepError, Suspend, TooManyStepsError
from .events import derived_id, dumps, now_ms
from .stepbase import StepBase

if TYPE_CHECKING:
    from .execution import Execution
    from .fanout import Fanout


class BranchDone(BaseException):  # noqa: N818 - a control-flow signal, not an error
    """Internal: a branch run finished its branch; its result is the run's output."""

    def __init__(self, result: Any) -> None:
        super().__init__("branch done")
        self.result = result


class BranchFailed(BaseException):  # noqa: N818 - a control-flow signal, not an error
    """Internal: a branch raised ``error``. It ends the branch run as if its handler had
    raised it: the handler code around ``parallel`` belongs to the parent, so an ``except``
    there must not catch it in the branch run (and, say, return from the branch run)."""

    def __init__(self, error: Exception) -> None:
        super().__init__("branch failed")
        self.error = error


def branch_field(group: str, index: int) -> str:
    return f"{group}[{index}]"


class ParallelSteps(StepBase):
    """The ``parallel`` step of ``ctx.step`` (mixed into ``Step``)."""

    def parallel(self, step_id: str, branches: Sequence[Callable[[], Any]]) -> list[Any]:
        """Run each branch (a callable, typically calling ``ctx.step.run``) concurrently on
        the worker pool and return their results in order. A branch that exhausts its
        retries raises ``StepError`` here (catchable)."""
        key, group = self._begin_group(step_id, branches)
        if group is not None:
            return group
        index = self._x.branch[1]  # type: ignore[index]
        try:
            result = branches[index]()
            if inspect.isawaitable(result):
                raise InvalidStepError(f"parallel {key!r}: branch {index} is async; use "
                                       "an async def handler to run async branches")
        except Exception as exc:
            raise BranchFailed(exc) from exc
        raise BranchDone(result)

    async def parallel_async(self, step_id: str,
                             branches: Sequence[Callable[[], Any]]) -> list[Any]:
        key, group = self._begin_group(step_id, branches)
        if group is not None:
            return group
        try:
            result = branches[self._x.branch[1]]()  # type: ignore[index]
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            raise BranchFailed(exc) from exc
        raise BranchDone(result)

    def _begin_group(self, step_id: str, branches: Sequence[Callable[[], Any]],
                     ) -> tuple[str, list[Any] | None]:
        """Returns ``(key, results)`` when the group is done, ``(key, None)`` when this
        execution is the branch run that must execute its branch now; otherwise parks."""
        key = self._key(step_id)
        if not isinstance(branches, (list, tuple)) or not branches or \
                not all(callable(b) for b in branches):
            raise InvalidStepError(f"parallel {key!r}: give a non-empty list of callables")
        n = len(branches)
        x = self._x
        limit = x.settings.max_steps
        self._used.update(branch_field(key, i) for i in range(n))
        if len(self._used) > limit:
            raise TooManyStepsError(
                f"parallel {key!r}: {n} branches take the run over {limit} steps "
                "(fanout_max_steps); for wide work fan out with step.send_event instead")
        if x.branch is not None and x.branch[0] == key:
            x.replay_done()
            return key, None
        results = self._collect(key, n)
        if results is not None:
            return key, results
        if x.branch is not None:
            # Every group before this branch's own is joined in the parent, so this one is
            # inside the branch. Its branch runs would replay the handler without the
            # parent's steps and start this branch's group again, without end.
            raise InvalidStepError(
                f"parallel {key!r} was called inside a branch of parallel {x.branch[0]!r}; "
                "parallel groups cannot be nested: fan out with step.send_event or "
                "step.invoke from a branch instead")
        x.replay_done()
        if key not in x.memo:
            encoded, stored = self._encode(key, {
                "status": "parallel", "kind": "parallel", "branches": n, "attempts": 1,
                "started_at": now_ms(), "seq": self._seq(None)})
            x.checkpoint(key, encoded, stored)
        x.fanout.start_branches(x, key, n)
        resolved = x.park("waiting", None, expect=(key, "parallel"))
        if resolved is None:
            sus = Suspend("waiting", None)
            sus.parked = True
            raise sus
        x.reload_steps()
        results = self._collect(key, n)
        if results is None:  # cannot happen: the join writes every result before the group
            raise InvalidStepError(f"parallel {key!r}: joined without every branch result")
        return key, results

    def _collect(self, key: str, n: int) -> list[Any] | None:
        records = [self._x.memo.get(branch_field(key, i)) for i in range(n)]
        if any(r is None for r in records):
            return None
        for _ in range(n + 1):  # the group and each branch result are records of the memo
            self._x.replayed(key)
        for i, record in enumerate(records):
            if record and record["status"] == "failed":
                raise StepError(branch_field(key, i), record.get("error") or {})
        outputs = [r.get("output") if r else None for r in records]
        mw = self._x.mw
        if mw:  # branch outputs are stored as their branch run's middleware left them
            outputs = [mw.transform_input(self._x.ctx, branch_field(key, i), output)
                       for i, output in enumerate(outputs)]
        return outputs


def start_branches(fanout: Fanout, x: Execution, key: str, n: int) -> None:
    """Create (once) and enqueue the branch runs of a group."""
    from .store.redis import NewRun

    sub = fanout.subscription_of(x.function.function_id)
    if sub is None:  # the function is declared here, so this cannot be
        raise InvalidStepError(f"function {x.function.function_id!r} is not registered")
    now = now_ms()
    runs = []
    for i in range(n):
        run_id = derived_id(x.run_id, key, str(i))
        runs.append(NewRun(run_id=run_id, function_id=sub.function_id,
                           event_ids=[f"branch-{x.run_id}"], fields={
            "function": sub.function_id, "task": sub.task, "queue": sub.queue,
            "status": "queued", "created_at": str(now), "attempt": "0",
            "events": x.run.get("events", "[]"), "event_name": x.run.get("event_name", ""),
            "parent_run_id": x.run_id, "parent_step_id": branch_field(key, i),
            "branch_of": x.run_id, "branch_step": key, "branch_index": str(i)}))
    s = fanout.settings
    created, _ = fanout.store.create_runs(runs, [], now, now + int(s.lease_seconds * 1000),
                                          int(s.retention * 1000), 0)
    fresh = [run for run, made in zip(runs, created, strict=True) if made]
    fanout.publish_runs(fresh)


def join(fanout: Fanout, run: dict[str, str], outcome: dict[str, Any]) -> None:
    """A branch run ended: record its result in the parent; the last one wakes it."""
    parent, group, index = run["branch_of"], run["branch_step"], int(run["branch_index"])
    store = fanout.store
    current = store.step_record(parent, group)
    if current is None:
        return
    record = json.loads(current)
    now = now_ms()
    result = {"status": outcome["status"], "kind": "branch", "attempts": 1,
              "started_at": int(run.get("started_at") or now), "ended_at": now,
              "seq": record.get("seq", 0), "branch": index}
    if outcome["status"] == "completed":
        result["output"] = outcome.get("output")
    else:
        result["error"] = outcome.get("error")
    joined = dumps({**record, "status": "joined", "ended_at": now})
    woken = store.join(parent, group, branch_field(group, index), dumps(result),
                       int(record.get("branches", 0)), joined,
                       now + int(fanout.settings.redispatch_seconds * 1000))
    if isinstance(woken, tuple):
        fanout.publish_run(parent, *woken)
