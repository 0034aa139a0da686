"""Figures 1, 2 and 5: dispatch, per-step overhead, the weekly-emails example."""

from __future__ import annotations

import time
from typing import Any

from celery import group

from fanout_celery.model.events import derived_id
from fanout_celery.runtime import run_attempt

from .harness import Bench, count, mib, ms, ratio, seconds, us
from .probes import RoundTrips, script_names
from .workers import run_child


# -- figure 1 ---------------------------------------------------------------------------
def _send_in_child(b: Bench, side: str, n: int) -> dict[str, float]:
    from .app import IDLE_QUEUE

    b.r.delete(IDLE_QUEUE)
    result: dict[str, float] = run_child("bench.dispatch", side, n, timeout=600)
    b.r.delete(IDLE_QUEUE)
    if side == "fanout":
        b.reset_state()
    if result["queued"] != n:
        raise RuntimeError(f"{side}: {result['queued']} messages on the queue, expected {n}")
    return result


def _total_cpu(res: dict[str, float]) -> float:
    """CPU seconds of a send: the sender's own plus both Redis servers'."""
    return res["cpu"] + res["state_cpu"] + res["broker_cpu"]


def _report_send(b: Bench, name: str, res: dict[str, float]) -> None:
    n = res["n"]
    b.say(f"    {name:6} {seconds(res['seconds'])} ({us(res['seconds'] / n * 1e6)}/message); "
          f"CPU per message: sender {us(res['cpu'] / n * 1e6)}, state Redis "
          f"{us(res['state_cpu'] / n * 1e6)}, broker Redis {us(res['broker_cpu'] / n * 1e6)}; "
          f"sender RSS {mib(res['rss_before_kb'])} before, peak {mib(res['peak_rss_kb'])} "
          f"(+{mib(res['peak_rss_kb'] - res['rss_before_kb'])})")


def fig_dispatch(b: Bench) -> None:
    n, big = b.sizes.dispatch, b.sizes.dispatch_big
    b.header(f"1. Fan-out dispatch: fanout.send of {count(n)} events to one function vs "
             f"group(task.s(i) ...).apply_async() of {count(n)} tasks; the sender in a "
             "process of its own, timed until the call returns with every message on the "
             "broker (LLEN verified)")
    plain, fan = b.compare(lambda: _send_in_child(b, "plain", n),
                           lambda: _send_in_child(b, "fanout", n))
    speedup = plain["seconds"] / fan["seconds"]
    cpu_speedup = _total_cpu(plain) / _total_cpu(fan)
    b.say(f"  fanout {speedup:.1f}x faster (target >= 5x); {cpu_speedup:.1f}x less CPU "
          "(sender + Redis)")
    _report_send(b, "fanout", fan)
    _report_send(b, "plain", plain)
    b.row("1", f"dispatch {count(n)} events", seconds(fan["seconds"]),
          seconds(plain["seconds"]), f"{speedup:.1f}x faster", ">= 5x faster", speedup >= 5)
    b.row("1", "CPU per message (sender + Redis)", us(_total_cpu(fan) / n * 1e6),
          us(_total_cpu(plain) / n * 1e6), f"{cpu_speedup:.1f}x less")
    b.row("1", f"sender peak RSS growth, {count(n)}",
          mib(fan["peak_rss_kb"] - fan["rss_before_kb"]),
          mib(plain["peak_rss_kb"] - plain["rss_before_kb"]))
    if not big:
        return
    b.say(f"  {count(big)} events (fanout{' and plain' if b.big_plain else ''}, once):")
    fan_big = _send_in_child(b, "fanout", big)
    _report_send(b, "fanout", fan_big)
    plain_big = _send_in_child(b, "plain", big) if b.big_plain else None
    if plain_big is not None:
        _report_send(b, "plain", plain_big)
    wall = (fan_big["seconds"] / big) / (fan["seconds"] / n)
    cpu = (_total_cpu(fan_big) / big) / (_total_cpu(fan) / n)
    b.say(f"  linearity, per event at {count(big)} / at {count(n)}: wall {wall:.2f}x, CPU "
          f"{cpu:.2f}x (CPU is the steadier measure on a shared machine)")
    b.row("1", f"per event, {count(big)} vs {count(n)}: wall",
          f"{us(fan_big['seconds'] / big * 1e6)} vs {us(fan['seconds'] / n * 1e6)}", "",
          f"{wall:.2f}x")
    b.row("1", f"per event, {count(big)} vs {count(n)}: CPU",
          f"{us(_total_cpu(fan_big) / big * 1e6)} vs {us(_total_cpu(fan) / n * 1e6)}", "",
          f"{cpu:.2f}x", "~1x (linear)", cpu < 1.25)
    b.row("1", f"sender peak RSS growth, {count(big)}",
          mib(fan_big["peak_rss_kb"] - fan_big["rss_before_kb"]),
          "" if plain_big is None else
          mib(plain_big["peak_rss_kb"] - plain_big["rss_before_kb"]))


# -- figure 2 ---------------------------------------------------------------------------
def _inproc_round_trips(b: Bench) -> dict[str, object]:
    """One ten-step run executed in this process, counting its requests to the state
    Redis exactly. A first run warms up connections and scripts."""
    fanout = b.fanout
    definition = fanout.functions["bench-inproc"].definition
    probe = RoundTrips(fanout.store.client, script_names(fanout.store))
    tag = b.tag()
    for _ in range(2):
        probe.requests.clear()
        fanout.engine.router.all()  # the subscription cache is refreshed at most once a second
        with probe.counting():
            event_id = fanout.send({"name": "bench/inproc", "data": {"tag": tag}})[0]
        send_requests = list(probe.requests)
        probe.requests.clear()
        run_id = derived_id("bench-inproc", event_id)
        with probe.counting():
            started = time.perf_counter()
            status = run_attempt(fanout.services, definition, run_id).status
            elapsed = time.perf_counter() - started
    if status != "completed":
        raise RuntimeError(f"in-process run ended {status}")
    return {"send": send_requests, "run": list(probe.requests), "summary": probe.summary(),
            "seconds": elapsed}


def _steps_side(b: Bench, side: str, n: int) -> dict[str, float]:
    from .app import plain_steps

    tag = b.tag()
    state0, cpu0 = b.state.snapshot(), b.worker.cpu()
    started = time.perf_counter()
    if side in ("fanout", "buffered"):
        name = "bench/steps" if side == "fanout" else "bench/steps-buffered"
        ids = b.fanout.send([{"name": name, "data": {"i": i, "tag": tag}} for i in range(n)])
    else:
        group(plain_steps.s(i, tag) for i in range(n)).apply_async()
    b.wait_done(tag, n, timeout=60 + n * 0.1)
    if side != "plain":
        b.wait_runs_settled()
    elapsed = time.perf_counter() - started
    state1, cpu1 = b.state.snapshot(), b.worker.cpu()
    out = {"seconds": elapsed, "cpu": cpu1 - cpu0,
           "redis_cpu": b.state.delta(state0, state1, "cpu"),
           "evalsha": b.state.delta(state0, state1, "cmdstat_evalsha"),
           "commands": b.state.delta(state0, state1, "commands"),
           "memory": b.state.delta(state0, state1, "used_memory")}
    if side == "plain":
        return out
    keys = _run_keys(b, "bench-steps" if side == "fanout" else "bench-steps-buffered", ids[0])
    # What stays for the retention: without the notices that wake wait_for_run callers,
    # which expire a minute after each run's end, and the events' entries among the
    # recent events of their name, kept for wait_lookback (removed here, not waited for).
    transient = [*b.state.client.scan_iter(match="*:done", count=1000),
                 *b.state.client.scan_iter(match="*:recent:*", count=1000)]
    if transient:
        b.state.client.delete(*transient)
    return {**out, "memory_kept": b.state.delta(state0, b.state.snapshot(), "used_memory"),
            "keys": keys}


def _run_keys(b: Bench, function_id: str, event_id: str) -> dict[str, tuple[int, str]]:
    """The bytes (MEMORY USAGE, every element counted) and encoding of each key of one
    completed run."""
    k, client = b.fanout.store.keys, b.state.client
    run_id = derived_id(function_id, event_id)
    out = {}
    for label, key in (("run hash", k.run(run_id)), ("step table", k.steps(run_id)),
                       ("event", k.event(event_id)), ("event's run set", k.event_runs(event_id)),
                       ("done notice", k.done(run_id))):
        out[label] = (int(client.memory_usage(key, samples=0) or 0),
                      str(client.object("encoding", key)))
    return out


def fig_steps(b: Bench) -> None:
    n = b.sizes.runs
    steps = 10
    b.header(f"2. Step overhead: {count(n)} runs of a function with {steps} trivial steps vs "
             f"{count(n)} plain tasks making the same {steps} calls, end to end on "
             f"{b.worker.concurrency} {b.worker.pool} worker processes")
    inproc = _inproc_round_trips(b)
    run_requests: list[str] = inproc["run"]  # type: ignore[assignment]
    commits = sum(1 for r in run_requests if r == "EVALSHA CHECKPOINT")
    finishes = sum(1 for r in run_requests if r == "EVALSHA FINISH")
    starts = sum(1 for r in run_requests if r == "EVALSHA START")
    other = len(run_requests) - commits - starts - finishes
    per_step = commits / steps
    b.say(f"  round trips to the state Redis, one run executed in-process: "
          f"{len(run_requests)} = {inproc['summary']}")
    b.say(f"    run start: {starts}, per executed step: {per_step:g}, finish: 1, other: {other}"
          f" ({ms(float(inproc['seconds']) * 1000)} for the whole attempt in-process)")  # type: ignore[arg-type]
    send_requests: list[str] = inproc["send"]  # type: ignore[assignment]
    b.say(f"    fanout.send of its event: {len(send_requests)} ({', '.join(send_requests)}) "
          "plus one pipelined LPUSH to the broker")
    b.row("2", "round trips per executed step", f"{per_step:g}", "0", "",
          "1 per step", per_step <= 1)
    b.row("2", "round trips per run start (+ finish)", f"{starts} (+1)", "0", "",
          "1 per start", starts <= 1)

    # Warm-up: every pool process has executed each kind of task.
    for side in ("plain", "fanout", "buffered"):
        _steps_side(b, side, 4 * b.worker.concurrency)
    buffered: list[dict[str, float]] = []

    def fanout_then_buffered() -> dict[str, float]:
        durable = _steps_side(b, "fanout", n)
        buffered.append(_steps_side(b, "buffered", n))
        return durable

    plain, fan = b.compare(lambda: _steps_side(b, "plain", n), fanout_then_buffered)
    buf = min(buffered, key=lambda m: m["seconds"])
    buf_slower = buf["seconds"] / plain["seconds"]
    b.notes["steps_memory"] = fan["memory"] / n
    b.notes["steps_memory_kept"] = fan["memory_kept"] / n
    b.notes["steps_memory_keys"] = fan["keys"]
    slower = fan["seconds"] / plain["seconds"]
    wall_step = (fan["seconds"] - plain["seconds"]) / (n * steps)
    cpu_step = (fan["cpu"] - plain["cpu"]) / (n * steps)
    redis_step = (fan["redis_cpu"] - plain["redis_cpu"]) / (n * steps)
    b.say(f"  fanout {seconds(fan['seconds'])} ({n / fan['seconds']:.0f} runs/s), plain "
          f"{seconds(plain['seconds'])} ({n / plain['seconds']:.0f} tasks/s): "
          f"fanout takes {slower:.2f}x plain's time (target <= 1.5x)")
    b.say(f"  worker CPU: fanout {ms(fan['cpu'] / n * 1000)}/run, plain "
          f"{ms(plain['cpu'] / n * 1000)}/task; state Redis CPU: fanout "
          f"{us(fan['redis_cpu'] / n * 1e6)}/run")
    b.say(f"  per-step overhead: {us(wall_step * 1e6)} wall (on {b.worker.concurrency} "
          f"processes), {us(cpu_step * 1e6)} worker CPU, {us(redis_step * 1e6)} Redis CPU")
    b.say(f"  state Redis commands per run (INFO deltas, pump traffic included): "
          f"{fan['evalsha'] / n:.1f} EVALSHA, {fan['commands'] / n:.1f} commands counting "
          "those run inside scripts")
    b.say(f"  buffered checkpoints: {seconds(buf['seconds'])} ({n / buf['seconds']:.0f} "
          f"runs/s), {buf_slower:.2f}x plain's time; worker CPU "
          f"{ms(buf['cpu'] / n * 1000)}/run; {buf['evalsha'] / n:.1f} EVALSHA per run")
    b.row("2", f"{count(n)} runs x {steps} steps, wall", seconds(fan["seconds"]),
          seconds(plain["seconds"]), f"{slower:.2f}x", "<= 1.5x", slower <= 1.5)
    b.row("2", "the same, buffered checkpoints", seconds(buf["seconds"]),
          seconds(plain["seconds"]), f"{buf_slower:.2f}x", "<= 1.15x", buf_slower <= 1.15)
    b.row("2", "per-step overhead (wall / worker CPU)",
          f"{us(wall_step * 1e6)} / {us(cpu_step * 1e6)}", "")
    b.row("2", "EVALSHA per run (workers, INFO)", f"{fan['evalsha'] / n:.1f}", "0")


# -- figure 5 ---------------------------------------------------------------------------
def _weekly_side(b: Bench, side: str, users: int) -> dict[str, float]:
    from .app import plain_weekly_load_users

    tag = b.tag()
    state0, cpu0 = b.state.snapshot(), b.worker.cpu()
    started = time.perf_counter()
    if side == "fanout":
        b.fanout.invoke("bench-weekly-load-users", {"users": users, "tag": tag})
    else:
        plain_weekly_load_users.delay(users, tag)
    b.wait_done(tag, users, timeout=120 + users * 0.1)
    if side == "fanout":
        b.wait_runs_settled()
    elapsed = time.perf_counter() - started
    state1, cpu1 = b.state.snapshot(), b.worker.cpu()
    return {"seconds": elapsed, "cpu": cpu1 - cpu0,
            "redis_cpu": b.state.delta(state0, state1, "cpu"),
            "memory": b.state.delta(state0, state1, "used_memory")}


def fig_example(b: Bench) -> None:
    users = b.sizes.users
    b.header(f"5. End to end: the weekly-emails example at {count(users)} users "
             "(in-memory users, no-op mailer) vs a hand-written plain-Celery version "
             "(one task fetching users, a group of per-user load + send tasks)")
    plain, fan = b.compare(lambda: _weekly_side(b, "plain", users),
                           lambda: _weekly_side(b, "fanout", users))
    b.notes["example_memory"] = fan["memory"] / (users + 1)
    slower = fan["seconds"] / plain["seconds"]
    b.say(f"  fanout {seconds(fan['seconds'])} ({users / fan['seconds']:.0f} emails/s), "
          f"plain {seconds(plain['seconds'])} ({users / plain['seconds']:.0f} emails/s): "
          f"fanout takes {slower:.2f}x plain's time (target <= 1.5x)")
    b.say(f"  worker CPU: fanout {ms(fan['cpu'] / users * 1000)}/user, plain "
          f"{ms(plain['cpu'] / users * 1000)}/user ({ratio(fan['cpu'], plain['cpu'])}); "
          f"state Redis CPU: fanout {us(fan['redis_cpu'] / users * 1e6)}/user")
    current, peak = b.worker.rss_kb()
    b.say(f"  worker RSS now {mib(current)} (peak {mib(peak)}) over its "
          f"{len(b.worker.pids())} processes")
    b.row("5", f"weekly emails, {count(users)} users", seconds(fan["seconds"]),
          seconds(plain["seconds"]), f"{slower:.2f}x", "<= 1.3x", slower <= 1.3)
    b.row("5", "worker CPU per user", ms(fan["cpu"] / users * 1000),
          ms(plain["cpu"] / users * 1000), ratio(fan["cpu"], plain["cpu"]))



# -- figure 9 ---------------------------------------------------------------------------
def _stream_in_child(b: Bench, n: int) -> dict[str, Any]:
    from .app import IDLE_QUEUE

    b.r.delete(IDLE_QUEUE)
    result = run_child("bench.streamer", n, timeout=3600)
    b.r.delete(IDLE_QUEUE)
    b.reset_state()
    if result["status"] != "completed" or result["queued"] != n or result["output"] != n:
        raise RuntimeError(f"streamed {n}: {result}")
    return result


def fig_stream(b: Bench) -> None:
    sizes = b.sizes.stream
    b.header("9. A streamed fan-out: one step.send_event of a generator of "
             f"{' and of '.join(count(n) for n in sizes)} events (the weekly-emails "
             "load step over that many users), executed in a sender process of its own, "
             "until every run is created and its message is on the broker (LLEN checked)")
    results = [_stream_in_child(b, n) for n in sizes]
    for res in results:
        n = res["n"]
        growth = res["peak_rss_kb"] - res["rss_before_kb"]
        b.say(f"  {count(n):>9} events: {seconds(res['seconds'])} "
              f"({us(res['seconds'] / n * 1e6)}/event); sender CPU "
              f"{us(res['cpu'] / n * 1e6)}/event, state Redis CPU "
              f"{us(res['state_cpu'] / n * 1e6)}/event; sender RSS {mib(res['rss_before_kb'])}"
              f" before, peak +{mib(growth)}")
        b.row("9", f"stream of {count(n)}: sender peak RSS growth", f"+{mib(growth)}", "",
              "", "<= 200 MB", growth <= 200 * 1024)
        b.row("9", f"stream of {count(n)}: time, per event", f"{seconds(res['seconds'])}, "
              f"{us(res['seconds'] / n * 1e6)}", "")
    if len(results) > 1:
        small, big = results[0], results[-1]
        wall = (big["seconds"] / big["n"]) / (small["seconds"] / small["n"])
        b.say(f"  linearity, per event at {count(big['n'])} / at {count(small['n'])}: "
              f"{wall:.2f}x")
        b.row("9", "per event, largest / smallest stream", f"{wall:.2f}x", "", "",
              "~1x (linear)", wall < 1.3)
