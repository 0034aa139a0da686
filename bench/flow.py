"""Figure 7: what flow control costs. The same fan-out (N runs of a one-step function)
through a concurrency limit too high to bind, ``Concurrency(1000)``, vs with no limit: the
wall-time ratio is the price of taking and freeing a slot per run (one ``GATE`` and one
``RELEASE`` script, and the run's trigger read before the gate).

``python -m bench --only 7``. The two functions live on a Celery app of their own (this
module, imported by its worker: ``celery -A bench.flow worker -Q bench-flow``), with their
own queue and key prefix, so figures 1-6, their app and their worker are untouched. The
worker uses the same pool and concurrency as theirs; both sides run on it, interleaved.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_ready

from fanout_celery import Concurrency, Context, Fanout

from .harness import QUICK, Bench, count, ratio, seconds, us
from .workers import ROOT, Worker, WorkerError

STATE_URL = os.environ.get("BENCH_STATE_URL", "").strip() or "redis://localhost:6379/0"
BROKER_URL = os.environ.get("BENCH_BROKER_URL", "").strip() or STATE_URL

QUEUE = "bench-flow"
LIMIT = 1000  # far above any worker's concurrency: the limit is checked, never reached
OPEN, LIMITED = "bench-flow-open", "bench-flow-limited"

app = Celery("bench-flow", broker=BROKER_URL, set_as_current=False)
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_default_queue=QUEUE,
    accept_content=["json"],
    task_ignore_result=True,
    fanout_redis_url=STATE_URL,
    fanout_key_prefix="bench-flow",
)
fanout = Fanout(app)
r = redis.Redis.from_url(BROKER_URL, decode_responses=True)


def done_key(tag: str) -> str:
    return f"bench:flow:done:{tag}"


def ready_key(token: str) -> str:
    return f"bench:ready:{token}"  # as bench.app's, which bench.workers waits for


def mark(i: int, tag: str) -> int:
    r.incr(done_key(tag))
    return i


def one_step(ctx: Context) -> int:
    return int(ctx.step.run("mark", mark, ctx.event.data["i"], ctx.event.data["tag"]))


fanout.function(OPEN, event="bench/flow.open", queue=QUEUE, retries=0)(one_step)
fanout.function(LIMITED, event="bench/flow.limited", queue=QUEUE, retries=0,
                concurrency=Concurrency(LIMIT))(one_step)
EVENTS = {OPEN: "bench/flow.open", LIMITED: "bench/flow.limited"}


@worker_ready.connect
def _announce_ready(sender: Any = None, **kwargs: Any) -> None:
    fanout.publish_subscriptions()
    r.set(ready_key(os.environ.get("BENCH_WORKER_TOKEN", "")), os.getpid())


class FlowWorker(Worker):
    """A worker of this module's app, consuming its queue only."""

    def start(self, broker: Any, timeout: float = 90.0) -> float:
        cmd = [sys.executable, "-m", "celery", "-A", "bench.flow", "worker",
               f"--pool={self.pool}", f"--concurrency={self.concurrency}", "-Q", QUEUE,
               "-l", "warning", "-n", f"{self.token}@%h",
               "--without-mingle", "--without-gossip", "--without-heartbeat"]
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        while broker.get(ready_key(self.token)) != str(self.proc.pid):
            if self.proc.poll() is not None:
                raise WorkerError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() - started > timeout:
                raise WorkerError(f"worker not ready after {timeout:g}s:\n{self.tail()}")
            time.sleep(0.05)
        return time.monotonic() - started


def _side(b: Bench, worker: FlowWorker, function_id: str, n: int) -> dict[str, float]:
    """Send ``n`` events to one function; seconds until every run has finished."""
    tag = b.tag()
    store = fanout.store
    state0 = b.state.snapshot()
    started = time.perf_counter()
    fanout.send([{"name": EVENTS[function_id], "data": {"i": i, "tag": tag}}
                 for i in range(n)])
    deadline = time.monotonic() + 60 + n * 0.1
    # Done when every step body ran and no run still holds a lease (each has finished).
    while int(r.get(done_key(tag)) or 0) < n or store.count("leases"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{function_id}: {r.get(done_key(tag))} of {n} runs done")
        if worker.proc is None or worker.proc.poll() is not None:
            raise RuntimeError(f"the flow worker exited:\n{worker.tail()}")
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    state1 = b.state.snapshot()
    return {"seconds": elapsed, "evalsha": b.state.delta(state0, state1, "cmdstat_evalsha"),
            "commands": b.state.delta(state0, state1, "commands")}


def flow_figure(b: Bench, n: int) -> dict[str, float]:
    """Start a worker, time ``n`` runs with and without the limit (best of ``b.repeat``,
    sides interleaved after a warm-up), stop the worker. Returns the figure: seconds
    and state-Redis commands per run of each side, and ``ratio`` (limited / open)."""
    worker = FlowWorker(dict(os.environ), b.worker.pool, b.worker.concurrency)
    try:
        worker.start(r)
        for function_id in (OPEN, LIMITED):  # every pool process has run both
            _side(b, worker, function_id, 4 * worker.concurrency)
        results: dict[str, list[dict[str, float]]] = {OPEN: [], LIMITED: []}
        for _ in range(max(1, b.repeat)):
            for function_id in (OPEN, LIMITED):
                results[function_id].append(_side(b, worker, function_id, n))
    finally:
        worker.stop()
    best = {fid: min(runs, key=lambda m: m["seconds"]) for fid, runs in results.items()}
    return {"runs": n, "open_seconds": best[OPEN]["seconds"],
            "limited_seconds": best[LIMITED]["seconds"],
            "ratio": best[LIMITED]["seconds"] / best[OPEN]["seconds"],
            "open_evalsha_per_run": best[OPEN]["evalsha"] / n,
            "limited_evalsha_per_run": best[LIMITED]["evalsha"] / n,
            "open_commands_per_run": best[OPEN]["commands"] / n,
            "limited_commands_per_run": best[LIMITED]["commands"] / n}


def fig_flow(b: Bench) -> None:
    """Figure 7, printed and added to the summary (the figure itself in
    ``b.notes["flow"]``)."""
    n = 200 if b.sizes == QUICK else 1000
    b.header(f"7. Flow-control overhead: {count(n)} runs of a one-step function with "
             f"concurrency=Concurrency({LIMIT}) (never binding) vs no flow control, end to "
             f"end on {b.worker.concurrency} {b.worker.pool} worker processes")
    fig = flow_figure(b, n)
    extra = (fig["limited_seconds"] - fig["open_seconds"]) / n
    b.say(f"  limited {seconds(fig['limited_seconds'])} "
          f"({n / fig['limited_seconds']:.0f} runs/s), no limit "
          f"{seconds(fig['open_seconds'])} ({n / fig['open_seconds']:.0f} runs/s): "
          f"{fig['ratio']:.2f}x the wall time, {us(extra * 1e6)} per run")
    b.say(f"  state Redis per run (INFO deltas, pump included): EVALSHA "
          f"{fig['limited_evalsha_per_run']:.1f} vs {fig['open_evalsha_per_run']:.1f}, "
          f"commands {fig['limited_commands_per_run']:.1f} vs "
          f"{fig['open_commands_per_run']:.1f}")
    b.row("7", f"{count(n)} runs, Concurrency({LIMIT}) vs none",
          seconds(fig["limited_seconds"]), f"{seconds(fig['open_seconds'])} (fanout, no limit)",
          ratio(fig["limited_seconds"], fig["open_seconds"]))
    b.notes["flow"] = fig
