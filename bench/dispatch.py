"""The sender of figure 1, in a process of its own so its peak RSS is its own:
``python -m bench.dispatch fanout|plain N`` prints one JSON line.

Publishes N events (fanout) or a group of N tasks (plain Celery) to the idle queue,
which no worker consumes, and reports the time until the call returned, the CPU time
it took in this process and in each Redis server, how many messages it added to the
queue, and the process's RSS before and at its peak.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time

from celery import group

from .app import BROKER_URL, IDLE_QUEUE, STATE_URL, fanout, plain_dispatch, r
from .probes import RedisInfo, masters_of, peak_rss_kb, proc_status


def send_fanout(n: int) -> None:
    fanout.send([{"name": "bench/dispatch", "data": {"i": i}} for i in range(n)])


def send_plain(n: int) -> None:
    group(plain_dispatch.s(i) for i in range(n)).apply_async(queue=IDLE_QUEUE)


def main(argv: list[str]) -> int:
    side, n = argv[0], int(argv[1])
    send = send_fanout if side == "fanout" else send_plain
    send(1)  # warm up: connections, scripts, message templates
    gc.collect()
    rss_before = proc_status(os.getpid(), "VmRSS")
    # The state's CPU: every master's, on a cluster.
    masters, broker = masters_of(STATE_URL), RedisInfo(BROKER_URL)
    state0 = sum(m.snapshot()["cpu"] for m in masters)
    broker0 = broker.snapshot()["cpu"]
    before = r.llen(IDLE_QUEUE)
    cpu, started = time.process_time(), time.perf_counter()
    send(n)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    queued = r.llen(IDLE_QUEUE) - before
    print(json.dumps({"side": side, "n": n, "seconds": seconds, "cpu": cpu,
                      "state_cpu": sum(m.snapshot()["cpu"] for m in masters) - state0,
                      "broker_cpu": broker.snapshot()["cpu"] - broker0, "queued": queued,
                      "rss_before_kb": rss_before, "peak_rss_kb": peak_rss_kb()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
