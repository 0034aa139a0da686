"""``python -m bench.profile_steps [N] [--buffered] [--time]``: where a step's time goes.

Executes N ten-step runs of ``bench-inproc`` (the function of figure 2, on the idle
queue) in this process, on an embedded Redis (``FANOUT_REDIS_URL`` for another, flushed),
under cProfile, and prints the functions that took the most time of their own, and the
time per step and per run. No worker: run_attempt is called directly, as a worker would.
``--time``: no profiler; the time per run, and per step against the same runs' start,
send and finish alone (a run of the same function whose steps are all replayed).
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import sys
import time
from contextlib import ExitStack
from typing import Any

import redis

from fanout_celery.devtools.embedded import EmbeddedRedis


def main(argv: list[str]) -> int:
    n = int(next((a for a in argv if a.isdigit()), "300"))
    buffered = "--buffered" in argv
    with ExitStack() as stack:
        url = os.environ.get("FANOUT_REDIS_URL", "").strip()
        if not url:
            url = stack.enter_context(EmbeddedRedis()).url
        redis.Redis.from_url(url).flushdb()
        os.environ.update(BENCH_STATE_URL=url, BENCH_BROKER_URL=url, BENCH_RESULT_URL=url)
        from fanout_celery.model.events import derived_id
        from fanout_celery.runtime import run_attempt

        from .app import fanout

        fid = "bench-inproc"
        definition = fanout.functions[fid].definition
        if buffered:
            from dataclasses import replace

            definition = replace(definition, checkpoints="buffered")

        def one() -> None:
            [event_id] = fanout.send({"name": "bench/inproc", "data": {"tag": "profile"}})
            outcome = run_attempt(fanout.services, definition, derived_id(fid, event_id))
            assert outcome.status == "completed", outcome

        for _ in range(20):  # warm-up: connections, scripts, caches
            one()
        if "--time" in argv:
            return _time(fanout, definition, one, n)
        profile = cProfile.Profile()
        started = time.perf_counter()
        profile.enable()
        for _ in range(n):
            one()
        profile.disable()
        elapsed = time.perf_counter() - started
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out).sort_stats("tottime")
        stats.print_stats(25)
        print(out.getvalue())
        print(f"{n} runs of 10 steps ({'buffered' if buffered else 'durable'} checkpoints), "
              f"send included, under the profiler: {elapsed / n * 1e3:.2f} ms/run, "
              f"{elapsed / n / 10 * 1e6:.0f} µs per step (all costs)")
    return 0


def _time(fanout: Any, definition: Any, one: Any, n: int) -> int:
    from fanout_celery.model.events import derived_id
    from fanout_celery.runtime import run_attempt

    def best(call: Any) -> tuple[float, float]:
        runs = []
        for _ in range(3):
            started, cpu = time.perf_counter(), time.process_time()
            for _ in range(n):
                call()
            runs.append(((time.perf_counter() - started) / n, (time.process_time() - cpu) / n))
        return min(runs)

    wall, cpu = best(one)

    def replayed() -> None:
        # The same run, its ten steps already recorded: start, replay, finish (a rerun
        # from the end would need a new id; rewinding the status is enough here).
        [event_id] = fanout.send({"name": "bench/inproc", "data": {"tag": "profile"}})
        run_id = derived_id(definition.function_id, event_id)
        steps = {f"s{i}": f'{{"status": "completed", "output": 0, "attempts": 1, "seq": {i}}}'
                 for i in range(10)}
        fanout.store.client.hset(fanout.store.keys.steps(run_id), mapping=steps)
        assert run_attempt(fanout.services, definition, run_id).status == "completed"

    base_wall, base_cpu = best(replayed)
    print(f"{n} runs x 10 steps ({definition.checkpoints} checkpoints), best of 3: "
          f"{wall * 1e3:.2f} ms/run wall, {cpu * 1e3:.2f} ms CPU; with every step replayed "
          f"{base_wall * 1e3:.2f} ms / {base_cpu * 1e3:.2f} ms; per executed step "
          f"{(wall - base_wall) / 10 * 1e6:.0f} µs wall, {(cpu - base_cpu) / 10 * 1e6:.0f} µs "
          "CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
