"""Looking back: runs and events as recorded, the run tree, replays and reruns."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import FanoutError, RunTimeoutError, UnknownFunctionError
from ..model.events import derived_id, now_ms
from ..model.history import run_from_record
from ..model.records import FINAL, NewRun, new_run, pack_step, unpack_step
from ..model.runs import Run, RunNode
from ..model.settings import Settings
from ..store.port import Store
from .ports import Broker
from .router import Router
from .sending import Sender

logger = logging.getLogger("fanout")


class RerunError(FanoutError, ValueError):
    """A rerun was asked for a run that cannot be rerun (unknown run or step)."""


@dataclass(frozen=True)
class RunPage:
    """One page of runs, newest first, and whether more match."""

    runs: list[Run]
    more: bool


def child_event_ids(run: Run) -> dict[str, list[str]]:
    """Event ids sent by each ``send_event`` step of the run."""
    return {s.id: list(s.output or []) for s in run.steps
            if s.kind == "send_event" and s.status == "completed"}


def child_run_ids(run: Run) -> dict[str, list[str]]:
    """Runs started directly by ``invoke`` and ``parallel`` steps of the run."""
    out: dict[str, list[str]] = {}
    for s in run.steps:
        if s.kind == "invoke" and s.detail.get("child_run_id"):
            out[s.id] = [s.detail["child_run_id"]]
        elif s.kind == "parallel":
            # Every branch run exists from the start, joined or not.
            n = int(s.detail.get("branches", 0))
            out[s.id] = [derived_id(run.id, s.id, str(i)) for i in range(n)]
    return out


# A waiter blocks this long at most before it reads the run again: a run that ended
# without its notice reaching the waiter (the notice lost with a restarted Redis, or the
# run expired) is still seen within this long.
WAIT_SLICE = 2.0


def _timed_out(run_id: str, run: Run | None, timeout: float) -> RunTimeoutError:
    state = run.status if run is not None else "not found"
    return RunTimeoutError(f"run {run_id} still {state} after {timeout}s")


class History:
    """Queries over recorded runs and events, and the operations that start runs again."""

    def __init__(self, store: Store, router: Router, sender: Sender, broker: Broker,
                 settings: Settings) -> None:
        self.store = store
        self.router = router
        self.sender = sender
        self.broker = broker
        self.settings = settings

    def load(self, run_ids: Sequence[str]) -> list[Run]:
        """The runs that exist among ``run_ids``, in that order."""
        loaded = self.store.load_runs(run_ids)
        runs = (Run.from_store(rid, raw, steps)
                for rid, (raw, steps) in zip(run_ids, loaded, strict=True))
        return [r for r in runs if r is not None]

    def get_run(self, run_id: str) -> Run | None:
        found = self.load([run_id])
        if found:
            return found[0]
        # Expired from Redis: the history sink may have it (Run.archived).
        lookup = getattr(self.settings.history_sink, "get", None)
        if lookup is not None:
            record = lookup(run_id)
            if record is not None:
                return run_from_record(record)
        return None

    def wait_for_run(self, run_id: str, timeout: float) -> Run:
        """The run once it is final, blocking on the store (no polling) for at most
        ``timeout`` seconds; ``RunTimeoutError`` after that."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.get_run(run_id)
            if run is not None and run.status in FINAL:
                return run
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _timed_out(run_id, run, timeout)
            self.store.wait_finished(run_id, min(remaining, WAIT_SLICE))

    async def aget_run(self, run_id: str) -> Run | None:
        loaded = await self.store.async_reader().load_runs([run_id])
        raw, steps = loaded[0]
        return Run.from_store(run_id, raw, steps)

    async def await_run(self, run_id: str, timeout: float) -> Run:
        """``wait_for_run``, awaited: the event loop runs on while the run is not final."""
        reader = self.store.async_reader()
        deadline = time.monotonic() + timeout
        while True:
            run = await self.aget_run(run_id)
            if run is not None and run.status in FINAL:
                return run
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _timed_out(run_id, run, timeout)
            await reader.wait_finished(run_id, min(remaining, WAIT_SLICE))

    def runs_for_event(self, event_id: str) -> list[Run]:
        return self.load(self.store.runs_for_events([event_id])[0])

    def list_runs(self, *, function: str | None = None, status: str | None = None,
                  since_ms: int | None = None, until_ms: int | None = None,
                  event_id: str | None = None, limit: int = 50, offset: int = 0) -> RunPage:
        """Runs newest first, filtered. The store is read page by page: what a page costs
        grows with its size (and, with a status filter, with how many runs are skipped
        to fill it), not with the history."""
        wanted = offset + limit + 1  # one more than the page: is there a next one?
        if event_id is not None:
            ids = self.store.runs_for_events([event_id])[0]
            if status is not None:
                ids = [r for r, st in zip(ids, self.store.statuses(ids), strict=True)
                       if st == status]
        else:
            functions = [function] if function else sorted(self.router.all())
            ids = self._matching(functions, status, since_ms, until_ms, wanted)
        return RunPage(runs=self.load(ids[offset:offset + limit]), more=len(ids) >= wanted)

    def _matching(self, functions: list[str], status: str | None, since: int | None,
                  until: int | None, wanted: int) -> list[str]:
        """The first ``wanted`` run ids of ``functions`` in the range, newest first, with
        ``status`` if given: read in batches, each starting where the last one ended."""
        batch = wanted if status is None else max(wanted * 4, 200)
        found: list[str] = []
        seen: set[str] = set()
        while len(found) < wanted:
            raw = self.store.function_run_ids(functions, since, until, limit=batch)
            rows = [(score, rid) for score, rid in raw if rid not in seen]
            if not rows:
                if len(raw) < batch:
                    break  # the history is exhausted
                batch *= 2  # a whole batch in one millisecond, already read: widen it
                continue
            ids = [rid for _, rid in rows]
            seen.update(ids)
            if status is not None:
                ids = [r for r, st in zip(ids, self.store.statuses(ids), strict=True)
                       if st == status]
            found += ids
            if status is None or len(raw) < batch:
                break
            # The next batch from the last score read (inclusive: runs of the same
            # millisecond), the ones already read left out.
            until = int(rows[-1][0])
        return found[:wanted]

    def list_events(self, *, name: str | None = None, since_ms: int | None = None,
                    limit: int = 50) -> list[tuple[dict[str, Any], list[str]]]:
        """Recent stored events (newest first), each with the ids of the runs it started."""
        out: list[tuple[dict[str, Any], list[str]]] = []
        cursor = 0
        batch = max(limit * 4, 200)
        while len(out) < limit:
            ids = self.store.event_ids(since_ms, cursor, batch)
            if not ids:
                break
            cursor += len(ids)
            kept = [e for e in self.store.get_events(ids)
                    if e is not None and (name is None or e["name"] == name)]
            runs = self.store.runs_for_events([e["id"] for e in kept])
            out.extend(zip(kept, runs, strict=True))
        return out[:limit]

    def get_event(self, event_id: str) -> dict[str, Any] | None:
        return self.store.get_events([event_id])[0]

    def replay(self, events: Sequence[dict[str, Any]]) -> list[str]:
        """Send stored events again as new events (new ids, ``replay_of`` set)."""
        fresh = [{"name": e["name"], "data": e.get("data", {}), "replay_of": e["id"],
                  **({"user": e["user"]} if e.get("user") is not None else {})}
                 for e in events]
        return self.sender.send(fresh) if fresh else []

    def failed(self, function: str, since_ms: int | None, until_ms: int | None,
               limit: int = 100_000) -> list[str]:
        """Ids of the function's failed runs in the time range, newest first."""
        return self._matching([function], "failed", since_ms, until_ms, limit)

    def run_failed(self, run_id: str, hooks: list[Callable[[Run], Any]]) -> None:
        """Each app-wide failure hook with the failed run (a hook's error is logged; the
        others still run)."""
        run = self.get_run(run_id) if hooks else None
        if run is None:
            return
        for hook in list(hooks):
            try:
                hook(run)
            except Exception:
                logger.exception("fanout: the failure hook %r raised for run %s", hook, run_id)

    def rerun_many(self, run_ids: list[str]) -> list[str]:
        """Rerun each finished run from its first step that did not complete (for a
        failed run, the step that failed); returns the new runs' ids."""
        return [self.rerun(run_id) for run_id in run_ids]

    def resolve_id(self, text: str, recent: int = 2000) -> str:
        """A run id from ``text``: a whole id, or the prefix of one (the 12 characters the
        CLI and the dashboard print) among the ``recent`` newest runs of each function;
        ``RerunError`` when it is ambiguous."""
        text = text.strip().lower()
        if len(text) >= 32 or not text:
            return text
        page = self.list_runs(limit=recent)
        matches = sorted({r.id for r in page.runs if r.id.startswith(text)})
        if len(matches) > 1:
            raise RerunError(f"{text!r} is the start of {len(matches)} run ids "
                             f"({', '.join(m[:16] for m in matches[:3])}...): give more of it")
        return matches[0] if matches else text

    def rerun(self, run_id: str, from_step: str | None = None) -> str:
        """Start a new run of the same function and event that reuses the recorded
        outputs of the steps before ``from_step`` (by default, every step before the
        first one that did not complete) and executes the rest. Returns its id."""
        raw, steps = self.store.load_runs([run_id])[0]
        run = Run.from_store(run_id, raw, steps)
        if run is None:
            raise RerunError(f"no run {run_id} (unknown or expired)")
        if not run.finished:
            raise RerunError(f"run {run_id} is still {run.status}: a rerun would run it "
                             "twice at once; cancel it, or wait for its end")
        sub = self.router.get(run.function_id)
        if sub is None:
            raise UnknownFunctionError(
                f"function {run.function_id!r} is not declared or published")
        ordered = [s.id for s in run.steps]
        if from_step is not None and run.steps_expired:
            expired = f"{run.steps_until:%Y-%m-%d %H:%M:%S}"
            raise RerunError(
                f"the step records of run {run_id} expired at {expired} UTC "
                f"(fanout_output_retention): there is no step {from_step!r} to rerun from; "
                "rerun it without a step to run it all again")
        if from_step is not None and from_step not in ordered:
            raise RerunError(f"run {run_id} has no step {from_step!r}; its steps: "
                             f"{', '.join(ordered) or '(none)'}")
        keep: dict[str, str] = {}
        for step in run.steps:
            if step.id == from_step or step.status != "completed":
                break
            # Marked, so that views tell it from the steps the rerun executes.
            keep[step.id] = pack_step({**unpack_step(steps[step.id]), "reused": True},
                                      self.settings.compact_records)
        extra = {"rerun_of": run_id, **({"rerun_from": from_step} if from_step else {})}
        fresh: NewRun = new_run(sub, run.events, extra=extra,
                                run_id=derived_id(run_id, "rerun", uuid.uuid4().hex))
        s = self.settings
        now = now_ms()
        self.store.create_rerun(fresh, keep, now=now, retention_ms=s.retention_ms,
                                dispatch_deadline=now + 30_000)
        self.broker.publish([fresh.message])
        self.store.confirm_dispatched([fresh.run_id], now_ms() + s.redispatch_ms)
        return fresh.run_id

    def tree(self, run_id: str, depth: int = 3) -> RunNode | None:
        """A run and, up to ``depth`` levels, the runs its steps started; each level in
        two pipelined round trips however wide it is."""
        root = self.get_run(run_id)
        if root is None:
            return None
        top = RunNode(root)
        level = [top]
        for _ in range(depth):
            wanted = [(node, step_id, eid) for node in level
                      for step_id, eids in child_event_ids(node.run).items() for eid in eids]
            found = self.store.runs_for_events([eid for _, _, eid in wanted])
            pairs = [(node, step_id, rid)
                     for (node, step_id, _), rids in zip(wanted, found, strict=True)
                     for rid in rids]
            pairs += [(node, step_id, rid) for node in level
                      for step_id, rids in child_run_ids(node.run).items() for rid in rids]
            if not pairs:
                break
            loaded = self.store.load_runs([rid for _, _, rid in pairs])
            level = []
            for (node, step_id, rid), (raw, steps) in zip(pairs, loaded, strict=True):
                run = Run.from_store(rid, raw, steps)
                if run is None or run.parent_run_id != node.run.id:
                    continue
                kid = RunNode(run)
                node.children.setdefault(step_id, []).append(kid)
                level.append(kid)
        return top
