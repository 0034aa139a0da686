"""The benchmark's Celery app: fanout functions and their plain-Celery equivalents.

Imported by the benchmark process and by every worker it starts
(``celery -A bench.app worker``), configured from the environment:

- ``BENCH_STATE_URL``: the Redis holding fanout's run state;
- ``BENCH_BROKER_URL``: the Redis broker (also holds the benchmark's counters, so that
  the state Redis sees fanout's traffic only);
- ``BENCH_RESULT_URL``: the result backend, used by one plain task only (figure 6).

Both sides of each comparison do the same user work and report completion the same way
(one ``INCR`` or ``RPUSH`` on the broker Redis), so the difference is the framework.
Functions on ``IDLE_QUEUE`` are never consumed by the workers: their messages are
counted (figure 1) or their runs executed in the benchmark process itself (2 and 3).
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from typing import Any

import redis
from celery import Celery, group
from celery.signals import worker_ready

from fanout_celery import Context, Event, Fanout, RetryPolicy

STATE_URL = os.environ.get("BENCH_STATE_URL", "").strip() or "redis://localhost:6379/0"
BROKER_URL = os.environ.get("BENCH_BROKER_URL", "").strip() or STATE_URL
RESULT_URL = os.environ.get("BENCH_RESULT_URL", "").strip() or BROKER_URL

IDLE_QUEUE = "bench-idle"
STEPS = 10

app = Celery("bench", broker=BROKER_URL, backend=RESULT_URL, set_as_current=False)
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_default_queue="celery",
    accept_content=["json"],
    # Plain Celery as commonly deployed for fire-and-forget work: no stored results
    # (one task of figure 6 stores its result, to weigh the backend's memory).
    task_ignore_result=True,
    fanout_redis_url=STATE_URL,
    # Figure 3 replays a run of 1,000 steps plus a sleep.
    fanout_max_steps=2000,
)
fanout = Fanout(app)
r = redis.Redis.from_url(BROKER_URL, decode_responses=True)


# -- completion signals (the same on both sides) -------------------------------------
def done_key(tag: str) -> str:
    return f"bench:done:{tag}"


def list_key(tag: str) -> str:
    return f"bench:list:{tag}"


def ready_key(token: str) -> str:
    return f"bench:ready:{token}"


def done(tag: str) -> None:
    r.incr(done_key(tag))


def trivial(total: int, n: int) -> int:
    return total + n


# -- figure 1: fan-out dispatch --------------------------------------------------------
@fanout.function("bench-dispatch", event="bench/dispatch", queue=IDLE_QUEUE, retries=0)
def dispatch_target(ctx: Context) -> None:
    """Never executed: figure 1 counts the messages its events put on the broker."""


# -- figure 9: a streamed fan-out ------------------------------------------------------
def stream_users(n: int) -> Any:
    """n events, one at a time (as rows of a database cursor would come)."""
    for i in range(n):
        yield {"name": "bench/dispatch", "data": {"i": i, "user": f"user-{i}@example.com"}}


@fanout.function("bench-stream", event="bench/stream", queue=IDLE_QUEUE, retries=0)
def streamer(ctx: Context) -> int:
    """Executed in the benchmark's sender process (figure 9): one send_event of a
    generator of n events."""
    return len(ctx.step.send_event("all", stream_users(int(ctx.event.data["n"]))))


@app.task(name="bench.plain_dispatch")
def plain_dispatch(i: int) -> None:
    """Never executed: the plain side of figure 1."""


# -- figure 2: ten trivial steps --------------------------------------------------------
def ten_steps(ctx: Context) -> int:
    total = 0
    for n in range(STEPS):
        total = ctx.step.run(f"s{n}", trivial, total, n)
    done(ctx.event.data["tag"])
    return total


steps_fn = fanout.function("bench-steps", event="bench/steps")(ten_steps)
# The same with buffered checkpoints (one write for the ten steps and the run's end).
buffered_fn = fanout.function("bench-steps-buffered", event="bench/steps-buffered",
                              checkpoints="buffered")(ten_steps)
# The same function on the idle queue: executed in the benchmark process, to count its
# Redis round trips exactly.
inproc_fn = fanout.function("bench-inproc", event="bench/inproc", queue=IDLE_QUEUE)(ten_steps)


@app.task(name="bench.plain_steps")
def plain_steps(i: int, tag: str) -> int:
    total = 0
    for n in range(STEPS):
        total = trivial(total, n)
    done(tag)
    return total


@app.task(name="bench.plain_result", ignore_result=False)
def plain_result(i: int, tag: str) -> int:
    """``plain_steps`` with its result stored in the result backend (figure 6)."""
    total = 0
    for n in range(STEPS):
        total = trivial(total, n)
    done(tag)
    return total


# -- figure 3: replaying 1,000 memoized steps --------------------------------------------
@fanout.function("bench-replay", event="bench/replay", queue=IDLE_QUEUE, retries=0)
def replay_fn(ctx: Context) -> int:
    steps = int(ctx.event.data["steps"])
    for n in range(steps):
        ctx.step.run(f"s{n}", trivial, n, 1)
    ctx.step.sleep("nap", float(ctx.event.data["nap"]))
    return steps


@app.task(name="bench.plain_redo")
def plain_redo(steps: int) -> int:
    """The plain alternative to a replay: do every call again."""
    total = 0
    for n in range(steps):
        total = trivial(n, 1)
    return total


# -- figure 4: timers and waits ----------------------------------------------------------
def woke(tag: str) -> float:
    now = time.time()
    done(tag)
    return now


@fanout.function("bench-sleep", event="bench/sleep")
def sleeper(ctx: Context) -> float:
    ctx.step.run("before", trivial, 0, 0)
    ctx.step.sleep("nap", float(ctx.event.data["seconds"]))
    return float(ctx.step.run("after", woke, ctx.event.data["tag"]))


@app.task(name="bench.plain_timer")
def plain_timer(eta: float, tag: str) -> None:
    """Started by an ETA: records how late it started."""
    r.rpush(list_key(tag), time.time() - eta)


def report_woke(k: int, tag: str) -> float:
    now = time.time()
    r.rpush(list_key(tag), json.dumps([k, now]))
    return now


@fanout.function("bench-wait", event="bench/wait.start")
def waiter(ctx: Context) -> float:
    ctx.step.run("before", trivial, 0, 0)
    ctx.step.wait_for_event("go", event="bench/wait.go", match="data.k", timeout="10m")
    return float(ctx.step.run("after", report_woke, ctx.event.data["k"],
                              ctx.event.data["tag"]))


@app.task(name="bench.plain_ping")
def plain_ping(k: int, tag: str) -> None:
    report_woke(k, tag)


# -- figure 5: the weekly-emails example, with in-memory users and a no-op mailer --------
WEEKLY_SEND = "bench/weekly.send"
EMAIL_RETRIES = RetryPolicy(max_retries=3, backoff=0.2, jitter=0)
PLANS = ("free", "pro", "team")


def make_users(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "name": f"User Number{i}", "email": f"user{i}@example.com",
             "plan": PLANS[i % 3]} for i in range(1, n + 1)]


def weekly_activity(user_id: int) -> dict[str, int]:
    return {"sessions": user_id % 23, "projects": user_id % 5 + 1,
            "minutes": user_id * 7 % 1000}


def compose(user: dict[str, Any], data: dict[str, Any]) -> tuple[str, str]:
    first = user["name"].split()[0]
    subject = f"Your week: {data['sessions']} sessions, {data['minutes']} minutes"
    body = (f"Hi {first},\n\nThis week you had {data['sessions']} sessions across "
            f"{data['projects']} project(s), {data['minutes']} minutes in total.\n\n"
            f"-- The team ({user['plan']} plan)\n")
    return subject, body


def email_user(user: dict[str, Any], data: dict[str, Any], tag: str) -> dict[str, Any]:
    subject, body = compose(user, data)
    done(tag)  # the no-op mailer: counts the email
    return {"outbox_id": user["id"], "to": user["email"], "bytes": len(subject) + len(body)}


def window_opens(send_after_ms: int) -> datetime:
    return datetime.fromtimestamp(send_after_ms / 1000, tz=UTC)


@fanout.function("bench-weekly-load-users")
def weekly_load_users(ctx: Context) -> dict[str, int]:
    users = ctx.step.run("fetch-users", make_users, int(ctx.event.data["users"]))
    events = [Event(name=WEEKLY_SEND, data={"user": u, "send_after": ctx.event.ts,
                                            "tag": ctx.event.data["tag"]}) for u in users]
    ctx.step.send_event("send-events", events)
    return {"count": len(users)}


def record_bounce(ctx: Context) -> None:
    """on_failure of the email function (no run fails in the benchmark)."""


@fanout.function("bench-weekly-send-email", event=WEEKLY_SEND, retries=EMAIL_RETRIES,
                 on_failure=record_bounce)
def weekly_send_email(ctx: Context) -> dict[str, Any]:
    user = ctx.event.data["user"]
    ctx.step.sleep_until("wait-for-send-window", window_opens(ctx.event.data["send_after"]))
    data = ctx.step.run("load-user-data", weekly_activity, user["id"])
    sent: dict[str, Any] = ctx.step.run("email-user", email_user, user, data,
                                        ctx.event.data["tag"])
    return sent


@app.task(name="bench.plain_weekly_load_users")
def plain_weekly_load_users(n: int, tag: str) -> int:
    users = make_users(n)
    send_after = int(time.time() * 1000)
    group(plain_weekly_send_email.s(u, send_after, tag) for u in users).apply_async()
    return len(users)


@app.task(name="bench.plain_weekly_send_email", bind=True, autoretry_for=(ConnectionError,),
          max_retries=3, default_retry_delay=0.2)
def plain_weekly_send_email(self: Any, user: dict[str, Any], send_after: int,
                            tag: str) -> dict[str, Any]:
    opens = window_opens(send_after)
    if opens > datetime.now(UTC):
        raise self.retry(eta=opens)
    data = weekly_activity(user["id"])
    return email_user(user, data, tag)


@worker_ready.connect
def _announce_ready(sender: Any = None, **kwargs: Any) -> None:
    fanout.publish_subscriptions()
    r.set(ready_key(os.environ.get("BENCH_WORKER_TOKEN", "")), os.getpid())
