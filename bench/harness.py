"""What every figure shares: sizes, the summary table, waiting for completion."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .probes import RedisInfo
from .workers import Worker


@dataclass(frozen=True)
class Sizes:
    """How much work each figure does."""

    dispatch: int  # figure 1: events sent at once
    dispatch_big: int  # figure 1: the linearity check (0: skipped)
    runs: int  # figure 2: runs of ten steps
    replay_steps: int  # figure 3
    timers: int  # figure 4: runs sleeping
    sleep_seconds: float
    isolated: int  # figure 4: runs sleeping one at a time (no queueing behind others)
    waits: int  # figure 4: runs waiting for an event, resumed one at a time
    users: int  # figure 5
    events: int  # figure 6: events without subscribers
    results: int  # figure 6: plain tasks storing a result
    stream: tuple[int, ...] = ()  # figure 9: events of one streamed send_event, per size


FULL = Sizes(dispatch=10_000, dispatch_big=100_000, runs=2_000, replay_steps=1_000,
             timers=1_000, sleep_seconds=2.0, isolated=20, waits=200, users=10_000, events=10_000,
             results=2_000, stream=(100_000, 1_000_000))
QUICK = Sizes(dispatch=1_000, dispatch_big=0, runs=200, replay_steps=1_000, timers=100,
              sleep_seconds=2.0, isolated=4, waits=20, users=500, events=2_000, results=300,
              stream=(2_000, 20_000))


@dataclass
class Row:
    """One line of the summary table."""

    figure: str
    measure: str
    fanout: str
    plain: str
    ratio: str = ""
    target: str = ""
    met: str = ""


class BenchTimeout(RuntimeError):
    """Work did not complete within its deadline."""


@dataclass
class Bench:
    """The state of one benchmark run: servers, worker, results so far."""

    sizes: Sizes
    worker: Worker
    state: RedisInfo
    broker: RedisInfo
    repeat: int = 1
    big_plain: bool = False  # figure 1: the plain side at the big size too (slow)
    rows: list[Row] = field(default_factory=list)
    # Measurements one figure leaves for another (figure 6 reads 2's and 5's memory).
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from . import app

        self.app = app.app
        self.fanout = app.fanout
        self.r = app.r

    # -- output ------------------------------------------------------------------------
    @staticmethod
    def say(text: str = "") -> None:
        print(text, flush=True)

    def header(self, title: str) -> None:
        self.say(f"\n== {title}")

    def row(self, figure: str, measure: str, fanout: str, plain: str, ratio: str = "",
            target: str = "", met: bool | None = None) -> None:
        self.rows.append(Row(figure, measure, fanout, plain, ratio, target,
                             "" if met is None else ("yes" if met else "NO")))

    # -- waiting -----------------------------------------------------------------------
    @staticmethod
    def tag() -> str:
        return uuid.uuid4().hex[:12]

    def poll(self, what: str, check: Callable[[], bool], timeout: float,
             interval: float = 0.01) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise BenchTimeout(f"timed out after {timeout:g}s waiting for {what}")
            if self.worker.proc is not None and self.worker.proc.poll() is not None:
                raise BenchTimeout(f"the worker exited while waiting for {what}:\n"
                                   f"{self.worker.tail()}")
            time.sleep(interval)

    def wait_done(self, tag: str, n: int, timeout: float) -> None:
        """Until ``n`` completions were counted under ``tag``."""
        from .app import done_key

        key = done_key(tag)
        self.poll(f"{n} completions", lambda: int(self.r.get(key) or 0) >= n, timeout)

    def wait_list(self, tag: str, n: int, timeout: float) -> list[str]:
        from .app import list_key

        key = list_key(tag)
        self.poll(f"{n} reports", lambda: int(self.r.llen(key)) >= n, timeout)
        return list(self.r.lrange(key, 0, -1))

    def wait_runs_settled(self, timeout: float = 60.0) -> None:
        """Until no run holds a lease (every started run finished or parked)."""
        store = self.fanout.store
        self.poll("runs to settle", lambda: store.count("leases") == 0, timeout)

    def reset_state(self) -> None:
        """Empty the state Redis (runs of figure 1 that no worker will execute)."""
        self.fanout.store.client.flushdb()
        self.fanout.publish_subscriptions()

    def compare(self, plain: Callable[[], dict[str, float]], fanout: Callable[[],
                dict[str, float]], repeat: int | None = None,
                ) -> tuple[dict[str, float], dict[str, float]]:
        """Measure both sides ``repeat`` times, interleaved (plain, fanout, plain, ...) so
        that a change in the machine's load hits both; keeps each side's fastest."""
        plains, fanouts = [], []
        for _ in range(self.repeat if repeat is None else repeat):
            plains.append(plain())
            fanouts.append(fanout())
        return (min(plains, key=lambda m: m["seconds"]),
                min(fanouts, key=lambda m: m["seconds"]))


# -- formatting ------------------------------------------------------------------------
def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def seconds(value: float) -> str:
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def ms(value: float) -> str:
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def us(value: float) -> str:
    return f"{value:.0f} µs" if abs(value) >= 10 else f"{value:.1f} µs"


def mib(kb: float) -> str:
    return f"{kb / 1024:.1f} MiB"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def count(n: int) -> str:
    return f"{n:,}"
