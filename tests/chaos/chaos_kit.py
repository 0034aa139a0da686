"""Tools of the chaos suite: worker subprocesses to kill, and the audit of a fan-out.

``WorkerPool`` runs prefork workers of ``tests/apps/chaos_app.py`` (through
``tests/procs.py``), SIGKILLs their pool processes and restarts whole workers, and
remembers every pid it killed. ``audit`` reads back every run a batch of parent events
started, checks that nothing was lost or duplicated, and counts step bodies that ran
more than once together with the processes that ran them.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
from procs import WorkerProcess, wait_for, worker_process

from fanout_celery import Fanout
from fanout_celery.model.runs import FINAL, Run

CHAOS_APP = "tests.apps.chaos_app"

# Mirrors tests/apps/chaos_app.py (a worker module cannot be imported here: it reads its
# Redis URL from the environment at import time).
PARENT_FUNCTION, CHILD_FUNCTION = "chaos-parent", "chaos-child"
PARENT_EVENT, CHILD_EVENT = "chaos/parent", "chaos/child"
PARENT_STEPS = ("p1", "p2", "fan-out", "p3")
CHILD_STEPS = ("c1", "c2")
CHILDREN = 2


def exec_key(run_id: str, step: str) -> str:
    return f"chaos:exec:{run_id}:{step}"


def scale() -> float:
    """``FANOUT_CHAOS_SCALE`` (default 1): how many times the CI size to run."""
    raw = os.environ.get("FANOUT_CHAOS_SCALE", "1")
    value = float(raw)
    if value <= 0:
        raise ValueError(f"FANOUT_CHAOS_SCALE must be > 0, not {raw!r}")
    return value


def scaled(n: float) -> int:
    return max(1, round(n * scale()))


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (a prefork worker's pool processes).

    Read from ``/proc/<pid>/task/*/children`` (one file per thread: a child is listed
    under the thread that forked it), else from ``pgrep -P``.
    """
    found: set[int] = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                found.update(int(p) for p in fh.read().split())
        return sorted(found)
    except FileNotFoundError:
        if not os.path.exists(f"/proc/{pid}"):
            return []  # the process is gone
    except OSError:
        pass
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return sorted(int(p) for p in out.stdout.split())


def parent_events(prefix: str, n: int) -> list[dict[str, Any]]:
    """``n`` parent events with explicit ids, so that a resend after an error dedupes."""
    return [{"name": PARENT_EVENT, "data": {"i": i}, "id": f"{prefix}-{i:06d}"}
            for i in range(n)]


class WorkerPool:
    """Prefork worker subprocesses of the chaos app, with the means to kill them."""

    def __init__(self, redis_url: str, stack: contextlib.ExitStack, *, count: int = 2,
                 concurrency: int = 3) -> None:
        self.redis_url = redis_url
        self.stack = stack
        self.concurrency = concurrency
        self.workers: list[WorkerProcess] = [self._start() for _ in range(count)]
        self.killed: set[int] = set()  # every pid SIGKILLed, pool processes or workers
        self.child_kills = 0
        self.hard_restarts = 0
        self.warm_restarts = 0

    def _start(self) -> WorkerProcess:
        return self.stack.enter_context(worker_process(
            self.redis_url, pool="prefork", concurrency=self.concurrency, app=CHAOS_APP,
            ready_timeout=60))

    def kill_child(self, rng: random.Random) -> int | None:
        """SIGKILL one pool process of a random worker; returns its pid (None if no
        worker had one, e.g. while its pool respawns)."""
        for worker in rng.sample(self.workers, len(self.workers)):
            pids = children(worker.pid)
            if pids:
                pid = rng.choice(pids)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    self.killed.add(pid)
                    self.child_kills += 1
                    return pid
        return None

    def restart(self, index: int, *, hard: bool) -> None:
        """Replace worker ``index``: SIGKILL its whole process group (``hard``), or a
        warm shutdown (SIGTERM to the worker alone: it finishes its tasks first)."""
        worker = self.workers[index]
        if hard:
            self.killed.update([worker.pid, *children(worker.pid)])
            worker.kill()
            self.hard_restarts += 1
        else:
            os.kill(worker.pid, signal.SIGTERM)
            worker.proc.wait(timeout=60)
            worker.stop()  # reaps anything the worker left in its group
            self.warm_restarts += 1
        self.workers[index] = self._start()

    def alive(self) -> bool:
        return all(w.alive() for w in self.workers)


def wait_until_final(client: redis.Redis, fanout: Fanout, expected: dict[str, int],
                     timeout: float) -> float:
    """Poll until each function of ``expected`` has that many runs, all final; returns
    the seconds it took. On timeout, fails listing the runs that are not final."""
    store = fanout.store
    started = time.monotonic()
    pending: list[tuple[str, str | None]] = []

    def all_final() -> bool:
        nonlocal pending
        pending = []
        for fid, count in expected.items():
            ids = [rid for _, rid in store.function_run_ids([fid])]
            if len(ids) < count:
                pending.append((f"{fid}: {len(ids)} of {count} runs created", None))
                continue
            pending += [(rid, st) for rid, st in zip(ids, store.statuses(ids), strict=True)
                        if st not in FINAL]
        return not pending

    try:
        wait_for(all_final, timeout, "every run to end", interval=0.2)
    except AssertionError:
        now = time.time() * 1000
        details = [
            f"{rid} {st}: {store.inspect_run(rid)} due in (s) "
            + ", ".join(f"{name} {(score - now) / 1000:.1f}" if score is not None
                        else f"{name} -" for name, score in store.indexes_of(rid).items())
            for rid, st in pending[:10] if st]
        raise AssertionError(
            f"{len(pending)} run(s) not final after {timeout}s (broker queue "
            f"{client.llen('celery')}, unacked {client.hlen('unacked')}):\n"
            + "\n".join([*details, *(rid for rid, st in pending if not st)])) from None
    return time.monotonic() - started


@dataclass
class Audit:
    """What ``audit`` found: sizes, and every step body that ran more than once."""

    runs: int = 0
    steps: int = 0
    executions: int = 0
    # Runs that started this many seconds or more after they were created: their message
    # came back through the broker's visibility timeout or the pump's re-dispatch.
    late_after: float = 8.0
    late_starts: int = 0
    # (run id, step, tokens "<pid>-<ms>-<random>" of each execution, checkpointed token)
    reexecuted: list[tuple[str, str, list[str], str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def reexecutions(self) -> int:
        return sum(len(tokens) - 1 for _, _, tokens, _ in self.reexecuted)

    def resume_delays(self) -> list[float]:
        """Seconds from each execution that never reached its checkpoint to the next
        execution of the same step (an upper bound of the time to resume after a kill)."""
        delays = []
        for _, _, tokens, _ in self.reexecuted:
            times = sorted(int(t.split("-")[1]) for t in tokens)
            delays += [(b - a) / 1000 for a, b in zip(times, times[1:], strict=False)]
        return sorted(delays)

    def unexplained(self, killed: Iterable[int]) -> list[str]:
        """Re-executions whose earlier execution ran in a process that was not killed."""
        dead = set(killed)
        out = []
        for run_id, step, tokens, kept in self.reexecuted:
            for token in tokens:
                if token != kept and int(token.split("-")[0]) not in dead:
                    out.append(f"{run_id} {step}: {tokens}, checkpointed {kept}")
        return out


def audit(fanout: Fanout, client: redis.Redis, event_ids: list[str], *,
          single_attempts: bool = True) -> Audit:
    """Check every run the parent events started, their children and step records.

    Exactly one parent run per event and one child run per child event, all completed,
    each step checkpointed once (``single_attempts``: with ``attempts == 1``, i.e. no
    step failed), its output being the token of one of its recorded executions, and the
    function histories holding exactly these runs.
    """
    result = Audit()
    problems = result.problems
    store = fanout.store

    def load(ids: list[str]) -> list[Run | None]:
        return [Run.from_store(rid, raw, steps)
                for rid, (raw, steps) in zip(ids, store.load_runs(ids), strict=True)]

    parent_ids: list[str] = []
    child_ids: list[str] = []
    runs: list[tuple[Run, tuple[str, ...]]] = []
    per_event = store.runs_for_events(event_ids)
    parents = load([ids[0] for ids in per_event if len(ids) == 1])
    for eid, ids in zip(event_ids, per_event, strict=True):
        if len(ids) != 1:
            problems.append(f"event {eid} started {len(ids)} runs: {ids}")
    for parent in parents:
        if parent is None:
            problems.append("a parent run expired or vanished")
            continue
        parent_ids.append(parent.id)
        runs.append((parent, PARENT_STEPS))
        kids = (parent.output or {}).get("children") or []
        if len(kids) != CHILDREN:
            problems.append(f"parent {parent.id} sent {kids!r}")
            continue
        per_child = store.runs_for_events(kids)
        for kid, ids in zip(kids, per_child, strict=True):
            if len(ids) != 1:
                problems.append(f"child event {kid} started {len(ids)} runs: {ids}")
        for child in load([ids[0] for ids in per_child if len(ids) == 1]):
            if child is None:
                problems.append(f"a child run of {parent.id} vanished")
                continue
            if (child.parent_run_id, child.parent_step_id) != (parent.id, "fan-out"):
                problems.append(f"child {child.id} links to {child.parent_run_id}/"
                                f"{child.parent_step_id}, not {parent.id}/fan-out")
            child_ids.append(child.id)
            runs.append((child, CHILD_STEPS))

    for fid, ids in ((PARENT_FUNCTION, parent_ids), (CHILD_FUNCTION, child_ids)):
        history = [rid for _, rid in store.function_run_ids([fid])]
        if sorted(history) != sorted(ids) or len(set(ids)) != len(ids):
            problems.append(f"history of {fid} holds {len(history)} runs, "
                            f"expected {len(ids)} ({len(set(history) ^ set(ids))} differ)")

    pipe = client.pipeline(transaction=False)
    for run, steps in runs:
        for step in steps:
            pipe.lrange(exec_key(run.id, step), 0, -1)
    tokens_of = iter(pipe.execute())
    for run, steps in runs:
        result.runs += 1
        if run.created_at and run.started_at and \
                (run.started_at - run.created_at).total_seconds() >= result.late_after:
            result.late_starts += 1
        if run.status != "completed":
            problems.append(f"run {run.id} ({run.function_id}) is {run.status}: {run.error}")
        if [s.id for s in run.steps] != list(steps):
            problems.append(f"run {run.id} has steps {[s.id for s in run.steps]}")
        records = {s.id: s for s in run.steps}
        for step in steps:
            tokens = next(tokens_of)
            record = records.get(step)
            if record is None:
                continue
            result.steps += 1
            if record.status != "completed" or (single_attempts and record.attempts != 1):
                problems.append(f"run {run.id} step {step}: {record.status}, "
                                f"{record.attempts} attempts")
            if step == "fan-out":
                continue  # not a body of ours: its exactly-once shows in the child runs
            result.executions += len(tokens)
            if record.output not in tokens:
                problems.append(f"run {run.id} step {step}: checkpointed {record.output!r} "
                                f"is none of its executions {tokens}")
            if (run.output or {}).get(step) != record.output:
                problems.append(f"run {run.id} returned {run.output!r} for {step}, "
                                f"checkpointed {record.output!r}")
            if len(tokens) > 1:
                result.reexecuted.append((run.id, step, tokens, record.output))
    return result
