"""Faults that used to loop runs or lose guarantees, on a real redis-server and a real
in-process worker: what cannot be stored, a fan-out too large for its record, the dedupe
window past a short retention, and a sender whose clock is behind the worker's."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from celery import Celery
from support import configure_app, wait_until

from fanout_celery import Event, Fanout, StepOutputError
from fanout_celery.model.events import derived_id

pytestmark = pytest.mark.integration


def final(fanout: Fanout, run_id: str, timeout: float = 20.0) -> Any:
    return fanout.wait_for_run(run_id, timeout=timeout)


# -- 1. outputs and errors that cannot be stored ------------------------------------
@pytest.mark.parametrize(("output", "error"), [
    ("x" * (5 * 1024 * 1024), "over the limit"),
    (None, "cannot be stored"),  # a list nested 5,000 deep: built in the handler
    ("\ud800", "cannot be stored"),
], ids=["5-MiB", "nested-5000", "lone-surrogate"])
def test_an_output_that_cannot_be_stored_fails_the_run_once(app: Celery, fanout: Fanout,
                                                            worker: Any, output: Any,
                                                            error: str) -> None:
    @fanout.function("unstorable", event="app/unstorable", retries=0)
    def unstorable(ctx: Any) -> Any:
        if output is None:
            nested: list[Any] = []
            for _ in range(5000):
                nested = [nested]
            return nested
        return output

    @fanout.function("watch-finished", event="fanout/function.finished")
    def watch(ctx: Any) -> None:
        return None

    with worker(app):
        [event_id] = fanout.send(Event(name="app/unstorable"))
        run = final(fanout, derived_id("unstorable", event_id))
    assert run.status == "failed"
    assert run.executions == 1
    assert run.error["type"] == "StepOutputError" and error in run.error["message"]


def test_a_large_output_is_kept_and_its_finished_event_says_it_was_left_out(
        app: Celery, fanout: Fanout, worker: Any) -> None:
    big = "y" * (3 * 1024 * 1024)

    @fanout.function("big-output", event="app/big")
    def big_output(ctx: Any) -> str:
        return big

    @fanout.function("watch-big", event="fanout/function.finished")
    def watch(ctx: Any) -> Any:
        return sorted(ctx.event.data)

    with worker(app):
        [event_id] = fanout.send(Event(name="app/big"))
        run = final(fanout, derived_id("big-output", event_id))
        [watcher] = wait_until(lambda: fanout.list_runs(function="watch-big").runs)
        watcher = final(fanout, watcher.id)
    assert run.status == "completed" and run.output == big and run.executions == 1
    assert "output_omitted" in watcher.output and "output" not in watcher.output


def test_a_step_error_with_a_huge_message_fails_the_run_once_with_the_message_cut(
        app: Celery, fanout: Fanout, worker: Any) -> None:
    @fanout.function("loud", event="app/loud", retries=0)
    def loud(ctx: Any) -> None:
        def shout() -> None:
            raise ValueError("!" * (3 * 1024 * 1024) + "\ud800")
        ctx.step.run("shout", shout)

    @fanout.function("watch-failed", event="fanout/function.failed")
    def watch(ctx: Any) -> None:
        return None

    with worker(app):
        [event_id] = fanout.send(Event(name="app/loud"))
        run = final(fanout, derived_id("loud", event_id))
    assert run.status == "failed" and run.executions == 1
    assert run.error["type"] == "ValueError" and run.error["step"] == "shout"
    assert len(run.error["message"]) < 5000 and "characters, cut" in run.error["message"]
    assert run.steps[0].status == "failed"


# -- 2. a fan-out too large for its step record -------------------------------------
def test_a_send_event_too_large_to_record_sends_nothing(redis_url: str, worker: Any) -> None:
    app = Celery("big-fan-out", set_as_current=False)
    configure_app(app, redis_url)
    app.conf.fanout_max_step_output_bytes = 2000  # about 50 event ids
    fanout = Fanout(app)

    @fanout.function("wide-parent", event="app/wide", retries=0)
    def parent(ctx: Any) -> None:
        ctx.step.send_event("fan-out", [Event(name="app/wide.child", data={"i": i})
                                        for i in range(200)])

    @fanout.function("wide-child", event="app/wide.child")
    def child(ctx: Any) -> None:
        return None

    with worker(app):
        [event_id] = fanout.send(Event(name="app/wide"))
        run = final(fanout, derived_id("wide-parent", event_id))
    assert run.status == "failed" and run.error["type"] == StepOutputError.__name__
    assert fanout.list_runs(function="wide-child").runs == []
    assert [e["name"] for e, _ in fanout.list_events()] == ["app/wide"]
    app.close()


# -- 4. the dedupe window, when runs are kept for less -------------------------------
def test_an_event_id_sent_again_within_the_dedupe_window_starts_nothing_after_its_run_expired(
        redis_url: str, worker: Any) -> None:
    app = Celery("dedupe", set_as_current=False)
    configure_app(app, redis_url)
    app.conf.update(fanout_retention=1, fanout_event_dedupe_window=3600)
    fanout = Fanout(app)
    client = redis.Redis.from_url(redis_url, decode_responses=True)

    @fanout.function("once", event="app/once")
    def once(ctx: Any) -> None:
        client.incr("dedupe:executions")

    with worker(app):
        fanout.send(Event(name="app/once", id="order-1"))
        run_id = derived_id("once", "order-1")
        assert final(fanout, run_id).status == "completed"
        wait_until(lambda: fanout.get_run(run_id) is None, timeout=10)  # expired
        fanout.send(Event(name="app/once", id="order-1"))
        # Anything the resend started would be queued by now and run within a second.
        time.sleep(1.0)
        assert fanout.get_run(run_id) is None
    assert client.get("dedupe:executions") == "1"
    client.close()
    app.close()


# -- 6. clocks apart ------------------------------------------------------------------
def test_a_wait_is_resolved_by_an_event_from_a_sender_whose_clock_is_behind(
        app: Celery, fanout: Fanout, worker: Any, redis_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)

    @fanout.function("skewed", event="app/skewed")
    def skewed(ctx: Any) -> Any:
        ctx.step.run("ready", lambda: client.set("skew:ready", 1))
        # Outside any step: the event is sent now, after "ready" and before the wait.
        while not client.get("skew:sent"):
            time.sleep(0.01)
        got = ctx.step.wait_for_event("ping", event="app/ping", timeout="20s",
                                      match="data.order")
        return None if got is None else got.id

    with worker(app):
        [event_id] = fanout.send(Event(name="app/skewed", data={"order": 7}))
        wait_until(lambda: client.get("skew:ready"))
        # This process's clock, as the engine reads it, runs five seconds behind.
        real = time.time
        monkeypatch.setattr("fanout_celery.engine.dispatcher.now_ms",
                            lambda: int((real() - 5) * 1000))
        fanout.send(Event(name="app/ping", id="ping-7", data={"order": 7}))
        monkeypatch.undo()
        client.set("skew:sent", 1)
        run = final(fanout, derived_id("skewed", event_id), timeout=30)
    assert run.status == "completed" and run.output == "ping-7"
    client.close()


# -- 5. an attempt stopped by Redis at its start -----------------------------------
def test_an_attempt_whose_start_failed_on_a_transient_error_runs_again(
        app: Celery, fanout: Fanout, worker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # As after a failover that lost the start's write (or Redis away): the run is still
    # queued and its message consumed. Without a retry of the message, only the dispatch
    # cover (fanout_redispatch_seconds, 300 s) would take the run up again.
    store = fanout.services.store
    real_start = store.start
    calls: list[str] = []

    def start_failing_once(*args: Any, **kwargs: Any) -> Any:
        calls.append("start")
        if len(calls) == 1:
            raise redis.ConnectionError("Redis went away")
        return real_start(*args, **kwargs)

    monkeypatch.setattr(store, "start", start_failing_once)

    @fanout.function("restarted", event="app/restarted", retries=0)
    def restarted(ctx: Any) -> str:
        return ctx.step.run("only", lambda: "done")

    with worker(app):
        [event_id] = fanout.send(Event(name="app/restarted"))
        run = final(fanout, derived_id("restarted", event_id), timeout=30)
    assert (run.status, run.output) == ("completed", "done")
    assert calls == ["start", "start"]  # the failed attempt's message came back once
