"""``python -m bench [--quick]``: start Redis and a worker, measure, print the figures."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from urllib.parse import urlsplit, urlunsplit

import redis

from fanout_celery.devtools.embedded import EmbeddedRedis

from .harness import FULL, QUICK, Bench, Row
from .probes import RedisInfo, machine
from .workers import Worker

FIGURES = ("1", "2", "3", "4", "5", "6", "7", "8", "9")


def _with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def _servers(stack: ExitStack) -> tuple[str, str, str]:
    """(state, broker, result backend) URLs: ``FANOUT_REDIS_URL`` holds the state and
    ``BENCH_BROKER_URL`` the broker when set, else each gets an embedded redis-server of
    its own, so that the state server's INFO counts fanout's traffic only."""
    urls = []
    for var in ("FANOUT_REDIS_URL", "BENCH_BROKER_URL"):
        url = os.environ.get(var, "").strip()
        if not url:
            server = EmbeddedRedis().start()
            stack.callback(server.stop)
            url = server.url
        urls.append(url)
    state, broker = urls
    return state, broker, _with_db(broker, 1)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="fanout_celery vs plain Celery, side by side, on real Redis servers and "
                    "real worker processes. FANOUT_REDIS_URL / BENCH_BROKER_URL select "
                    "existing (throw-away: they are flushed) Redis servers.")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes for CI (every figure in about a minute)")
    parser.add_argument("--only", default=",".join(FIGURES),
                        help="comma-separated figures to run (default: all)")
    parser.add_argument("--pool", default="prefork", choices=("prefork", "threads"),
                        help="worker pool, the same for both sides (default: prefork)")
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 2,
                        help="worker pool size (default: the CPU count)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="repetitions of figures 1, 2 and 5, interleaving the two "
                             "sides; each side's best is kept (default: 1)")
    parser.add_argument("--big-plain", action="store_true",
                        help="figure 1 at 100,000: time the plain-Celery group too (about "
                             "2-3 minutes on a 2-core machine)")
    return parser.parse_args(argv)


def _print_summary(rows: list[Row]) -> None:
    header = ("fig", "measure", "fanout", "plain Celery", "ratio", "target", "met")
    table = [header] + [(r.figure, r.measure, r.fanout, r.plain, r.ratio, r.target, r.met)
                        for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    print("\n== Summary")
    for i, line in enumerate(table):
        print("  " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))
        if i == 0:
            print("  " + "-+-".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    selected = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = sorted(set(selected) - set(FIGURES))
    if unknown:
        print(f"unknown figure(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    sizes = QUICK if args.quick else FULL
    began = time.monotonic()
    # SIGTERM (a CI timeout) unwinds like Ctrl-C: the worker and the Redis servers stop.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    with ExitStack() as stack:
        state_url, broker_url, result_url = _servers(stack)
        for url in (state_url, broker_url, result_url):
            redis.Redis.from_url(url).flushdb()
        # bench.app reads these when imported (here, and in every worker it starts).
        os.environ.update(BENCH_STATE_URL=state_url, BENCH_BROKER_URL=broker_url,
                          BENCH_RESULT_URL=result_url)
        from . import app as _app  # noqa: F401  (configured from the variables above)
        from .backlog import fig_backlog
        from .flow import fig_flow
        from .latency import fig_replay, fig_timers
        from .memory import fig_memory
        from .throughput import fig_dispatch, fig_example, fig_steps, fig_stream

        state, broker = RedisInfo(state_url), RedisInfo(broker_url)
        print(f"fanout_celery benchmarks ({'--quick' if args.quick else 'full size'})")
        for label, value in machine(state.version()):
            print(f"  {label + ':':14}{value}")
        print(f"  {'redis:':14}state {state_url}, broker {broker_url} (separate servers: "
              f"{'yes' if urlsplit(state_url).netloc != urlsplit(broker_url).netloc else 'no'})")
        worker = Worker(dict(os.environ), args.pool, args.concurrency)
        stack.callback(worker.stop)
        ready = worker.start(broker.client)
        print(f"  {'workers:':14}1 celery worker, --pool={args.pool} "
              f"--concurrency={args.concurrency}, the same processes for both sides "
              f"(ready in {ready:.1f}s)")
        bench = Bench(sizes=sizes, worker=worker, state=state, broker=broker,
                      repeat=max(1, args.repeat), big_plain=args.big_plain)
        figures: dict[str, Callable[[Bench], None]] = {
            "1": fig_dispatch, "2": fig_steps, "3": fig_replay, "4": fig_timers,
            "5": fig_example, "6": fig_memory, "7": fig_flow, "8": fig_backlog,
            "9": fig_stream}
        failed = []
        for key in FIGURES:
            if key not in selected:
                continue
            started = time.monotonic()
            try:
                figures[key](bench)
            except Exception:
                failed.append(key)
                print(f"  figure {key} could not be measured:\n{traceback.format_exc()}",
                      flush=True)
                print(f"  worker log tail:\n{worker.tail(2000)}", flush=True)
            print(f"  ({time.monotonic() - started:.1f}s; load average now "
                  f"{os.getloadavg()[0]:.2f})", flush=True)
        _print_summary(bench.rows)
        print(f"\nTotal time {time.monotonic() - began:.0f}s"
              + (f"; figure(s) {', '.join(failed)} failed" if failed else ""))
    return 1 if failed else 0
