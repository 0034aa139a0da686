"""Buffered checkpoints (``checkpoints="buffered"``) on a real Redis and a real worker:
consecutive ``step.run`` checkpoints are written together, in order, before any effect
outside the run, every ``fanout_checkpoint_buffer_steps`` steps, and with the run's end
(one round trip).
The chaos suite runs in this mode too (``tests/chaos/test_worker_kills.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from fanout_celery import ConfigurationError, Event, Fanout, InvalidStepError, RetryPolicy
from fanout_celery.model.events import derived_id

pytestmark = pytest.mark.integration


@pytest.fixture
def writes(fanout: Fanout, monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[Any]]:
    """``writes()`` starts logging every step-record write of the store, in order:
    ("one", key) for a checkpoint, ("many", [keys]) for a buffered batch, ("send", n) for
    events a step sent, ("end", status, [keys written with it]); call it after any
    ``reload_settings``."""

    def start() -> list[Any]:
        log: list[Any] = []
        store = fanout.store
        checkpoint, checkpoint_many, finish = (store.checkpoint, store.checkpoint_many,
                                               store.finish)
        dispatch = fanout.engine.dispatcher.dispatch

        def one(run_id: str, token: str, key: str, record: str, **kw: Any) -> None:
            log.append(("one", key))
            checkpoint(run_id, token, key, record, **kw)

        def many(run_id: str, token: str, records: Any, **kw: Any) -> None:
            log.append(("many", [k for k, _ in records]))
            checkpoint_many(run_id, token, records, **kw)

        def ended(run_id: str, token: str, status: str, *args: Any, **kw: Any) -> Any:
            log.append(("end", status, [k for k, _ in kw.get("steps", ())]))
            return finish(run_id, token, status, *args, **kw)

        def sent(records: Any, *args: Any, **kw: Any) -> Any:
            if kw.get("parent"):
                log.append(("send", len(records)))
            return dispatch(records, *args, **kw)

        monkeypatch.setattr(store, "checkpoint", one)
        monkeypatch.setattr(store, "checkpoint_many", many)
        monkeypatch.setattr(store, "finish", ended)
        monkeypatch.setattr(fanout.engine.dispatcher, "dispatch", sent)
        return log

    return start


def test_ten_buffered_steps_are_written_with_the_runs_end(
        app: Any, fanout: Fanout, worker: Any, writes: Callable[[], list[Any]]) -> None:
    log = writes()

    @fanout.function("ten", event="app/ten", checkpoints="buffered")
    def ten(ctx: Any) -> int:
        return sum(ctx.step.run(f"s{i}", lambda i=i: i) for i in range(10))

    with worker(app):
        [event_id] = fanout.send(Event(name="app/ten"))
        run = fanout.wait_for_run(derived_id("ten", event_id), 20)
    assert run.status == "completed" and run.output == 45
    assert [s.id for s in run.steps] == [f"s{i}" for i in range(10)]
    assert log == [("end", "completed", [f"s{i}" for i in range(10)])]


def test_buffered_steps_are_written_before_an_effect_outside_the_run(
        app: Any, fanout: Fanout, worker: Any, writes: Callable[[], list[Any]]) -> None:
    log = writes()

    @fanout.function("mixed", event="app/mixed", checkpoints="buffered")
    def mixed(ctx: Any) -> None:
        ctx.step.run("a", lambda: 1)
        ctx.step.run("b", lambda: 2)
        ctx.step.send_event("tell", [{"name": "app/told"}])
        ctx.step.run("c", lambda: 3, buffered=False)  # this one now
        ctx.step.run("d", lambda: 4)

    with worker(app):
        [event_id] = fanout.send(Event(name="app/mixed"))
        run = fanout.wait_for_run(derived_id("mixed", event_id), 20)
    assert run.status == "completed"
    assert log == [("many", ["a", "b"]), ("send", 1), ("one", "tell"), ("one", "c"),
                      ("end", "completed", ["d"])]


def test_the_buffer_is_written_every_n_steps(app: Any, fanout: Fanout, worker: Any,
                                             writes: Callable[[], list[Any]]) -> None:
    app.conf.fanout_checkpoint_buffer_steps = 4
    fanout.reload_settings()
    log = writes()

    @fanout.function("long", event="app/long", checkpoints="buffered")
    def long(ctx: Any) -> None:
        for i in range(10):
            ctx.step.run(f"s{i}", lambda: None)

    with worker(app):
        [event_id] = fanout.send(Event(name="app/long"))
        assert fanout.wait_for_run(derived_id("long", event_id), 20).status == "completed"
    assert log == [("many", ["s0", "s1", "s2", "s3"]), ("many", ["s4", "s5", "s6", "s7"]),
                      ("end", "completed", ["s8", "s9"])]


def test_a_failing_handler_keeps_the_buffered_steps_it_passed(
        app: Any, fanout: Fanout, worker: Any) -> None:
    calls: list[str] = []

    @fanout.function("flaky", event="app/flaky", checkpoints="buffered",
                     retries=RetryPolicy(max_retries=1, backoff=0.01, jitter=0))
    def flaky(ctx: Any) -> str:
        ctx.step.run("a", lambda: calls.append("a"))
        if ctx.attempt == 0:
            raise RuntimeError("once")  # the retry's park writes "a" first
        return "ok"

    with worker(app):
        [event_id] = fanout.send(Event(name="app/flaky"))
        run = fanout.wait_for_run(derived_id("flaky", event_id), 20)
    assert run.status == "completed" and run.executions == 2
    assert calls == ["a"]  # not run again by the retry


def test_durable_functions_write_each_step_and_options_are_checked(
        app: Any, fanout: Fanout, worker: Any, writes: Callable[[], list[Any]]) -> None:
    log = writes()
    with pytest.raises(ConfigurationError, match="checkpoints must be one of durable"):
        fanout.function("bad", event="app/bad", checkpoints="lazy")

    @fanout.function("plain", event="app/plain")
    def plain(ctx: Any) -> None:
        ctx.step.run("a", lambda: 1)
        ctx.step.run("b", lambda: 2, buffered=True)  # waits for the next write
        ctx.step.run("c", lambda: 3)

    @fanout.function("wrong", event="app/wrong", retries=0)
    def wrong(ctx: Any) -> None:
        ctx.step.run("a", lambda: 1, buffered="yes")

    with worker(app):
        [event_id] = fanout.send(Event(name="app/plain"))
        assert fanout.wait_for_run(derived_id("plain", event_id), 20).status == "completed"
        [bad_id] = fanout.send(Event(name="app/wrong"))
        bad = fanout.wait_for_run(derived_id("wrong", bad_id), 20)
    assert log[:3] == [("one", "a"), ("many", ["b", "c"]), ("end", "completed", [])]
    assert bad.status == "failed" and bad.error["type"] == InvalidStepError.__name__
