"""``ctx.step.parallel``: branches executed concurrently by separate Celery tasks.

The parent records the group, starts one *branch run* per branch and parks. A branch run
executes the same function: it replays the handler with the parent's recorded steps up
to the group, runs only its own branch (whose steps are checkpointed in the branch run),
and ends there. Each branch's result is written into the parent's step table; the
branch that completes the set wakes the parent (the store counts the results
atomically, so two branches finishing at once cannot both miss it). No Celery chord.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import InvalidStepError, StepError, Suspend
from ..model.records import branch_field
from .core import StepCore


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


class ParallelSteps:
    """The ``parallel`` step of ``ctx.step`` (mixed into ``Step``)."""

    _core: StepCore

    def parallel(self, step_id: str, branches: Sequence[Callable[[], Any]]) -> list[Any]:
        """Run each branch (a callable, typically calling ``ctx.step.run``) concurrently on
        the worker pool and return their results in order. A branch that exhausts its
        retries raises ``StepError`` here (catchable)."""
        key, group = self._begin_group(step_id, branches)
        if group is not None:
            return group
        index = self._core.state.branch[1]  # type: ignore[index]
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
        """``parallel`` for async handlers: each branch may be an async callable."""
        key, group = self._begin_group(step_id, branches)
        if group is not None:
            return group
        try:
            result = branches[self._core.state.branch[1]]()  # type: ignore[index]
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            raise BranchFailed(exc) from exc
        raise BranchDone(result)

    def _begin_group(self, step_id: str, branches: Sequence[Callable[[], Any]],
                     ) -> tuple[str, list[Any] | None]:
        """Returns ``(key, results)`` when the group is done, ``(key, None)`` when this
        execution is the branch run that must execute its branch now; otherwise parks."""
        core = self._core
        x = core.state
        key = core.key(step_id)
        if not isinstance(branches, (list, tuple)) or not branches or \
                not all(callable(b) for b in branches):
            raise InvalidStepError(f"parallel {key!r}: give a non-empty list of callables")
        n = len(branches)
        core.used.update(branch_field(key, i) for i in range(n))
        core.check_limit(
            lambda limit: f"parallel {key!r}: {n} branches take the run over {limit} steps")
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
            encoded, stored = core.encode(key, {
                "status": "parallel", "kind": "parallel", "branches": n, "attempts": 1,
                "started_at": x.clock(), "seq": core.seq(None)})
            x.checkpoint(key, encoded, stored)
        x.effects.start_branches(x.run_id, x.run, key, n)
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
        x = self._core.state
        records = [x.memo.get(branch_field(key, i)) for i in range(n)]
        if any(r is None for r in records):
            return None
        for _ in range(n + 1):  # the group and each branch result are records of the memo
            x.replayed(key)
        for i, record in enumerate(records):
            if record and record["status"] == "failed":
                raise StepError(branch_field(key, i), record.get("error") or {})
        outputs = [r.get("output") if r else None for r in records]
        if x.mw:  # branch outputs are stored as their branch run's middleware left them
            outputs = [x.mw.transform_input(x.ctx, branch_field(key, i), output)
                       for i, output in enumerate(outputs)]
        return outputs
