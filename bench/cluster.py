"""``python -m bench.cluster [--quick] [--repeat N]``: the cost of a Redis Cluster.

The same work with the run state on one Redis node and on a local 3-master Redis Cluster
(no replicas, so that each master's CPU is its share of the work only), measured in one
run, the two sides interleaved: dispatch of 10,000 events (the sender in a process of its
own, until every message is on the broker) and 2,000 runs of ten trivial steps on one
prefork worker. Then, for the cluster: keys and commands per master, and Redis CPU per
step per master. The broker is a Redis of its own in both cases.

A cluster on one 2-core machine is not faster than one node (its masters share the
cores): the figure is its overhead, and how evenly it spreads the work.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from contextlib import ExitStack
from typing import Any

import redis

from fanout_celery.devtools.cluster import HOST, LocalCluster
from fanout_celery.devtools.embedded import EmbeddedRedis
from fanout_celery.store.redis import flush_database

from .probes import RedisInfo, machine, masters_of
from .workers import Worker, run_child

SIDES = ("node", "cluster")


def snapshot(masters: list[RedisInfo]) -> list[dict[str, float]]:
    return [m.snapshot() for m in masters]


def delta(before: list[dict[str, float]], after: list[dict[str, float]],
          name: str) -> list[float]:
    return [a.get(name, 0.0) - b.get(name, 0.0) for b, a in zip(before, after, strict=True)]


# -- one side, in a process of its own (bench.app binds its state URL when imported) ----
def side_main(side: str, runs: int, events: int, concurrency: int) -> dict[str, Any]:
    from .app import IDLE_QUEUE, STATE_URL, fanout, r
    from .harness import FULL, Bench

    masters = masters_of(STATE_URL)
    worker = Worker(dict(os.environ), "prefork", concurrency)
    try:
        worker.start(r)
        bench = Bench(sizes=FULL, worker=worker, state=masters[0], broker=RedisInfo(
            os.environ["BENCH_BROKER_URL"]))
        out: dict[str, Any] = {"side": side}

        # Dispatch: the sender is bench.dispatch, in a process of its own.
        r.delete(IDLE_QUEUE)
        s0 = snapshot(masters)
        sent = run_child("bench.dispatch", "fanout", events, timeout=600)
        if sent["queued"] != events:
            raise RuntimeError(f"{sent['queued']} messages on the queue, expected {events}")
        s1 = snapshot(masters)
        out["dispatch"] = {"seconds": sent["seconds"], "sender_cpu": sent["cpu"],
                           "redis_cpu": sum(delta(s0, s1, "cpu"))}
        r.delete(IDLE_QUEUE)

        # Ten-step runs, end to end on the worker (the dispatch's runs stay: they are
        # queued runs no worker consumes, and count in the keys per master below).
        from .throughput import _steps_side

        _steps_side(bench, "fanout", 4 * concurrency)  # warm-up
        tag = bench.tag()
        s0, cpu0 = snapshot(masters), worker.cpu()
        started = time.perf_counter()
        fanout.send([{"name": "bench/steps", "data": {"i": i, "tag": tag}}
                     for i in range(runs)])
        bench.wait_done(tag, runs, timeout=60 + runs * 0.1)
        bench.wait_runs_settled()
        elapsed = time.perf_counter() - started
        s1, cpu1 = snapshot(masters), worker.cpu()
        out["steps"] = {"seconds": elapsed, "worker_cpu": cpu1 - cpu0,
                        "redis_cpu": delta(s0, s1, "cpu"),
                        "commands": delta(s0, s1, "commands"),
                        "evalsha": delta(s0, s1, "cmdstat_evalsha")}

        # Runs that park once: a step, a 1 s sleep (park, timer, wake, resume), a step.
        sleepers = max(1, runs // 2)
        tag = bench.tag()
        s0 = snapshot(masters)
        started = time.perf_counter()
        fanout.send([{"name": "bench/sleep", "data": {"seconds": 1.0, "tag": tag}}
                     for _ in range(sleepers)])
        bench.wait_done(tag, sleepers, timeout=60 + sleepers * 0.1)
        bench.wait_runs_settled()
        elapsed = time.perf_counter() - started
        s1 = snapshot(masters)
        out["sleeps"] = {"runs": sleepers, "seconds": elapsed,
                         "redis_cpu": delta(s0, s1, "cpu")}
        out["keys"] = [int(m.client.dbsize()) for m in masters]
        out["memory"] = [int(m.client.info("memory")["used_memory"]) for m in masters]
        return out
    finally:
        worker.stop()


# -- the driver -----------------------------------------------------------------------
def _spread(values: list[float]) -> str:
    mean = sum(values) / len(values)
    worst = max(abs(v - mean) / mean for v in values) if mean else 0.0
    return f"{', '.join(f'{v:,.0f}' for v in values)} (mean {mean:,.0f}, max {worst:+.1%} off)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 events, 200 runs")
    parser.add_argument("--repeat", type=int, default=2,
                        help="rounds, each measuring both sides; the best is kept")
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    events, runs = (1_000, 200) if args.quick else (10_000, 2_000)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    with ExitStack() as stack:
        broker = stack.enter_context(EmbeddedRedis())
        node = stack.enter_context(EmbeddedRedis())
        cluster = stack.enter_context(LocalCluster(masters=3, replicas=0))
        urls = {"node": node.url, "cluster": cluster.url}
        print(f"fanout_celery on one Redis node vs a 3-master Redis Cluster "
              f"({'--quick' if args.quick else 'full size'}): {events:,} events dispatched, "
              f"{runs:,} runs of 10 steps")
        for label, value in machine(RedisInfo(node.url).version()):
            print(f"  {label + ':':14}{value}")
        print(f"  {'cluster:':14}3 masters on {HOST} (no replicas), 64 shards; the broker "
              "is a Redis of its own")
        results: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
        for round_ in range(max(1, args.repeat)):
            for side in SIDES:
                redis.Redis.from_url(broker.url).flushdb()
                flush_database(urls[side])
                env = {**os.environ, "BENCH_STATE_URL": urls[side],
                       "BENCH_BROKER_URL": broker.url, "BENCH_RESULT_URL": broker.url}
                try:
                    result = run_child("bench.cluster", "--side", side, runs, events,
                                       args.concurrency, timeout=1200, env=env)
                except RuntimeError as exc:
                    print(f"  {side}: {exc}", file=sys.stderr)
                    return 1
                results[side].append(result)
                print(f"  round {round_ + 1}, {side:7}: dispatch "
                      f"{result['dispatch']['seconds']:.2f}s, steps "
                      f"{result['steps']['seconds']:.2f}s (load average "
                      f"{os.getloadavg()[0]:.2f})", flush=True)
        _report(results, events, runs)
    return 0


def _report(results: dict[str, list[dict[str, Any]]], events: int, runs: int) -> None:
    def best(side: str, part: str) -> dict[str, Any]:
        return min(results[side], key=lambda r: r[part]["seconds"])

    steps = runs * 10
    print(f"\n== Dispatch: fanout.send of {events:,} events (sender in its own process)")
    d = {side: best(side, "dispatch")["dispatch"] for side in SIDES}
    for side in SIDES:
        print(f"  {side:7} {d[side]['seconds']:.2f}s ({d[side]['seconds'] / events * 1e6:.0f} "
              f"µs/event); sender CPU {d[side]['sender_cpu'] / events * 1e6:.0f} µs/event, "
              f"Redis CPU {d[side]['redis_cpu'] / events * 1e6:.1f} µs/event (all masters)")
    print(f"  cluster / node: {d['cluster']['seconds'] / d['node']['seconds']:.2f}x the time")

    print(f"\n== {runs:,} runs of 10 trivial steps on one prefork worker")
    s = {side: best(side, "steps") for side in SIDES}
    for side in SIDES:
        part = s[side]["steps"]
        print(f"  {side:7} {part['seconds']:.2f}s ({runs / part['seconds']:.0f} runs/s); worker "
              f"CPU {part['worker_cpu'] / runs * 1000:.1f} ms/run; Redis CPU "
              f"{sum(part['redis_cpu']) / steps * 1e6:.1f} µs/step (all masters)")
    ratio = s["cluster"]["steps"]["seconds"] / s["node"]["steps"]["seconds"]
    print(f"  cluster / node: {ratio:.2f}x the time")

    part = s["cluster"]["steps"]
    stored = runs + events + runs // 2
    print(f"\n== Per master of the cluster ({stored:,} runs stored: {events:,} queued by the "
          f"dispatch, {stored - events:,} completed)")
    print(f"  keys:                     {_spread([float(k) for k in s['cluster']['keys']])}")
    print(f"  commands during the runs: {_spread(part['commands'])}")
    print(f"  EVALSHA during the runs:  {_spread(part['evalsha'])}")
    print("  Redis CPU per step:       " + ", ".join(
        f"{cpu / steps * 1e6:.1f} µs" for cpu in part["redis_cpu"])
        + f" (one node: {sum(s['node']['steps']['redis_cpu']) / steps * 1e6:.1f} µs)")
    sl = {side: best(side, "sleeps")["sleeps"] for side in SIDES}
    n_sleep = sl["node"]["runs"]
    print("  Redis CPU per sleeping run (a step, a 1 s sleep, a step): " + ", ".join(
        f"{cpu / n_sleep * 1e6:.0f} µs" for cpu in sl["cluster"]["redis_cpu"])
        + f" (one node: {sum(sl['node']['redis_cpu']) / n_sleep * 1e6:.0f} µs)")
    print("  used memory:              " + ", ".join(
        f"{m / 2**20:.1f} MiB" for m in s["cluster"]["memory"])
        + f" (one node: {sum(s['node']['memory']) / 2**20:.1f} MiB)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--side":
        side, runs, events, concurrency = sys.argv[2], *map(int, sys.argv[3:6])
        print(json.dumps(side_main(side, runs, events, concurrency)))
        sys.exit(0)
    sys.exit(main())
