"""Figures 3 and 4: replaying memoized steps, timer and wait_for_event latency."""

from __future__ import annotations

import json
import random
import statistics
import time
from datetime import UTC, datetime

from fanout_celery.model.events import derived_id
from fanout_celery.model.records import unpack_step
from fanout_celery.runtime import run_attempt

from .harness import Bench, count, ms, percentile, us
from .probes import RoundTrips, script_names


# -- figure 3 ---------------------------------------------------------------------------
def fig_replay(b: Bench) -> None:
    from .app import plain_redo

    steps, repeats = b.sizes.replay_steps, 5
    b.header(f"3. Replay: resuming a run with {count(steps)} memoized steps (after a sleep), "
             "executed in this process with its requests to the state Redis counted "
             f"({repeats} runs)")
    fanout = b.fanout
    definition = fanout.functions["bench-replay"].definition
    probe = RoundTrips(fanout.store.client, script_names(fanout.store))
    nap = 0.2
    run_ids, first = [], []
    for _ in range(repeats):
        event_id = fanout.send({"name": "bench/replay",
                                "data": {"steps": steps, "nap": nap}})[0]
        run_ids.append(derived_id("bench-replay", event_id))
        probe.requests.clear()
        with probe.counting():
            started = time.perf_counter()
            status = run_attempt(fanout.services, definition, run_ids[-1]).status
            first.append(time.perf_counter() - started)
        if status != "sleeping":
            raise RuntimeError(f"the first attempt ended {status}, expected sleeping")
    first_s = statistics.median(first)
    b.say(f"  first attempt: {count(steps)} steps executed in {ms(first_s * 1000)} "
          f"({us(first_s / steps * 1e6)}/step in-process), {len(probe.requests)} round trips")
    wake_at = max(int(fanout.store.run_field(r, "wake_at") or 0) for r in run_ids)
    time.sleep(max(0.0, wake_at / 1000 - time.time()) + 0.02)
    # The subscriptions and the paused functions are read again at most once a second per
    # process (their caches), whichever run happens to need them then: counted apart, not
    # per replay.
    cached = (f"HGETALL {fanout.store.keys.subscriptions}", f"HGETALL {fanout.store.keys.paused}")
    replays, trips, most, refreshes = [], [], "", 0
    for run_id in run_ids:
        fanout.engine.router.all()
        probe.requests.clear()
        with probe.counting():
            started = time.perf_counter()
            status = run_attempt(fanout.services, definition, run_id).status
            replays.append(time.perf_counter() - started)
        if status != "completed":
            raise RuntimeError(f"the replay ended {status}, expected completed")
        refreshed = sum(probe.requests.count(read) for read in cached)
        refreshes += refreshed
        trips.append(len(probe.requests) - refreshed)
        if trips[-1] == max(trips):
            most = probe.summary()
    replay_s = statistics.median(replays)
    b.say(f"  replay: median {ms(replay_s * 1000)} wall (min {ms(min(replays) * 1000)}, max "
          f"{ms(max(replays) * 1000)}), {max(trips)} round trips ({most}); targets < 20 ms, "
          "<= 3 round trips" + (f"; plus {refreshes} refresh(es) of the subscription and "
                                f"pause caches in {repeats} replays" if refreshes else ""))
    # Plain Celery has no replay: a retried task runs its body again from the top.
    plain_redo.apply(args=[1])
    started = time.perf_counter()
    plain_redo.apply(args=[steps])
    redo_s = time.perf_counter() - started
    b.say(f"  plain Celery re-executes instead: the same {count(steps)} (trivial) calls "
          f"via task.apply() take {ms(redo_s * 1000)}; real step bodies would cost their "
          "full price again")
    b.row("3", f"replay of {count(steps)} memoized steps (median)", ms(replay_s * 1000),
          f"{ms(redo_s * 1000)} (re-execute)", "", "< 20 ms", replay_s < 0.020)
    b.row("3", "replay round trips", str(max(trips)), "", "", "<= 3", max(trips) <= 3)
    b.row("3", "first execution, per step in-process", us(first_s / steps * 1e6), "")


# -- figure 4 ---------------------------------------------------------------------------
def _distribution(values: list[float]) -> str:
    return (f"p50 {ms(percentile(values, 50))}, p90 {ms(percentile(values, 90))}, "
            f"p99 {ms(percentile(values, 99))}, max {ms(max(values))}")


def _sleep_lateness(b: Bench, k: int, nap: float, isolated: bool = False) -> list[float]:
    """Lateness (ms) of each run's step after its sleep: its start - the recorded wake.
    ``isolated``: one run at a time, so no run queues behind another."""
    tag = b.tag()
    event = {"name": "bench/sleep", "data": {"seconds": nap, "tag": tag}}
    if isolated:
        ids = []
        for i in range(k):
            time.sleep(random.uniform(0, 0.25))  # no phase lock with the pump's rounds
            ids += b.fanout.send(dict(event))
            b.wait_done(tag, i + 1, timeout=nap + 30)
    else:
        ids = b.fanout.send([dict(event) for _ in range(k)])
        b.wait_done(tag, k, timeout=nap + 60 + k * 0.1)
    b.wait_runs_settled()
    lateness, wakes = [], []
    run_ids = [derived_id("bench-sleep", i) for i in ids]
    for start in range(0, len(run_ids), 500):
        for _, steps in b.fanout.store.load_runs(run_ids[start:start + 500]):
            wake_at = unpack_step(steps["nap"])["wake_at"]
            after = unpack_step(steps["after"])["output"]
            lateness.append(after * 1000 - wake_at)
            wakes.append(wake_at)
    if not isolated:
        b.notes["wake_span_ms"] = max(wakes) - min(wakes)
    return lateness


def _eta_lateness(b: Bench, k: int, nap: float, isolated: bool = False) -> list[float]:
    from .app import plain_timer

    tag = b.tag()
    for i in range(k):
        if isolated:
            time.sleep(random.uniform(0, 0.25))
        eta = time.time() + nap
        plain_timer.apply_async(args=[eta, tag], eta=datetime.fromtimestamp(eta, UTC))
        if isolated:
            b.wait_list(tag, i + 1, timeout=nap + 30)
    return [float(v) * 1000 for v in b.wait_list(tag, k, timeout=nap + 60 + k * 0.1)]


def _wait_latency(b: Bench, w: int) -> tuple[list[float], list[float]]:
    """(resume latency, time in send) in ms of ``w`` waiting runs, resumed one by one."""
    tag = b.tag()
    ids = b.fanout.send([{"name": "bench/wait.start", "data": {"k": k, "tag": tag}}
                         for k in range(w)])
    run_ids = [derived_id("bench-wait", i) for i in ids]

    def all_waiting() -> bool:
        return all(s == "waiting" for s in b.fanout.store.statuses(run_ids))

    b.poll("runs to wait", all_waiting, timeout=60 + w * 0.1, interval=0.05)
    from .app import list_key

    latencies, send_times = [], []
    for k in range(w):
        sent = time.time()
        b.fanout.send({"name": "bench/wait.go", "data": {"k": k}})
        send_times.append((time.time() - sent) * 1000)
        item = b.r.blpop([list_key(tag)], timeout=30)
        if item is None:
            raise RuntimeError(f"run {k} did not resume within 30 s")
        got, woke = json.loads(item[1])
        if got != k:
            raise RuntimeError(f"resumed run {got}, expected {k}")
        latencies.append((woke - sent) * 1000)
    b.wait_runs_settled()
    return latencies, send_times


def _ping_latency(b: Bench, w: int) -> list[float]:
    from .app import list_key, plain_ping

    tag = b.tag()
    latencies = []
    for k in range(w):
        sent = time.time()
        plain_ping.apply_async(args=[k, tag])
        item = b.r.blpop([list_key(tag)], timeout=30)
        if item is None:
            raise RuntimeError(f"task {k} did not start within 30 s")
        latencies.append((json.loads(item[1])[1] - sent) * 1000)
    return latencies


def fig_timers(b: Bench) -> None:
    k, nap, w = b.sizes.timers, b.sizes.sleep_seconds, b.sizes.waits
    b.header(f"4. Timers: {count(k)} runs sleeping {nap:g} s (lateness = start of the step "
             f"after the sleep - its recorded wake_at) vs {count(k)} plain tasks with an "
             f"ETA {nap:g} s ahead (start - ETA); fanout pump interval "
             f"{b.fanout.settings.pump_interval:g} s")
    plain = _eta_lateness(b, k, nap)
    fan = _sleep_lateness(b, k, nap)
    b.say(f"  fanout sleep lateness: {_distribution(fan)} (target p99 < 500 ms)")
    b.say(f"  plain ETA lateness:    {_distribution(plain)}")
    span = b.notes.get("wake_span_ms", 0.0) / 1000
    b.say(f"  the fanout runs' wake times spanned {span:.1f} s (their first halves queued "
          f"behind each other); a lateness beyond the pump interval is queueing: woken runs "
          "wait for the pool like any task")
    b.row("4", f"sleep wake lateness p50, {count(k)} runs", ms(percentile(fan, 50)),
          ms(percentile(plain, 50)))
    b.row("4", f"sleep wake lateness p99, {count(k)} runs", ms(percentile(fan, 99)),
          ms(percentile(plain, 99)), "", "< 500 ms", percentile(fan, 99) < 500)
    alone, short = b.sizes.isolated, 0.5
    plain_alone = _eta_lateness(b, alone, short, isolated=True)
    fan_alone = _sleep_lateness(b, alone, short, isolated=True)
    b.say(f"  one at a time ({count(alone)} sleeps of {short:g} s, nothing else queued): "
          f"fanout {_distribution(fan_alone)}; plain {_distribution(plain_alone)}")
    b.row("4", "sleep wake lateness p50, one at a time", ms(percentile(fan_alone, 50)),
          ms(percentile(plain_alone, 50)))
    b.say(f"  wait_for_event: {count(w)} waiting runs resumed one at a time (send() of the "
          "matching event -> start of the step after the wait) vs apply_async() -> task start")
    resumed, send_ms = _wait_latency(b, w)
    pings = _ping_latency(b, w)
    b.say(f"  fanout resume latency: {_distribution(resumed)} (target p50 < 20 ms); "
          f"send() itself p50 {ms(percentile(send_ms, 50))}")
    b.say(f"  plain task start latency: {_distribution(pings)}")
    b.row("4", "wait_for_event resume latency p50", ms(percentile(resumed, 50)),
          ms(percentile(pings, 50)), "", "< 20 ms", percentile(resumed, 50) < 20)
