"""The sender of figure 9, in a process of its own so its peak RSS is its own:
``python -m bench.streamer N`` prints one JSON line.

Executes, in this process, one run of ``bench-stream``: a ``step.send_event`` of a
generator of N events to a function on the idle queue (no worker consumes it), and
reports the time the run took, its CPU time, the state Redis's CPU, how many run
messages it put on the broker, and this process's RSS before and at its peak.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time

from fanout_celery.model.events import derived_id
from fanout_celery.runtime import run_attempt

from .app import IDLE_QUEUE, STATE_URL, fanout, r
from .probes import masters_of, peak_rss_kb, proc_status


def main(argv: list[str]) -> int:
    n = int(argv[0])
    definition = fanout.functions["bench-stream"].definition
    # Warm up: connections, scripts, the subscription cache.
    [warm] = fanout.send({"name": "bench/stream", "data": {"n": 10}})
    run_attempt(fanout.services, definition, derived_id("bench-stream", warm))
    r.delete(IDLE_QUEUE)
    gc.collect()
    rss_before = proc_status(os.getpid(), "VmRSS")
    masters = masters_of(STATE_URL)
    state0 = sum(m.snapshot()["cpu"] for m in masters)
    [event_id] = fanout.send({"name": "bench/stream", "data": {"n": n}})
    run_id = derived_id("bench-stream", event_id)
    cpu, started = time.process_time(), time.perf_counter()
    outcome = run_attempt(fanout.services, definition, run_id)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    run = fanout.get_run(run_id)
    queued = int(r.llen(IDLE_QUEUE)) - 1  # the bench-stream run's own message
    print(json.dumps({"n": n, "status": outcome.status, "output": run.output if run else None,
                      "seconds": seconds, "cpu": cpu,
                      "state_cpu": sum(m.snapshot()["cpu"] for m in masters) - state0,
                      "queued": queued, "rss_before_kb": rss_before,
                      "peak_rss_kb": peak_rss_kb()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
