"""Middleware: the order hooks run in, which steps they see, what they may change, and
what an error raised by a hook does.

Errors in hooks (the behaviour these tests pin down):
- ``transform_input`` of the trigger event and ``before_execution`` run inside the
  attempt: an error there is handled like one raised by the handler (retried with the
  function's policy, then the run fails; a ``ConfigurationError`` such as
  ``DecryptionError`` fails it at once). ``after_execution`` still runs.
- ``before_step`` / ``after_step`` / a step's ``transform_output`` raise out of
  ``ctx.step.run`` into the handler: the step is not checkpointed, the handler is retried.
- ``transform_output`` of the function's return value fails the run.
- ``after_execution`` errors are logged: the attempt's outcome is already committed.
- ``before_send_events`` errors propagate to whoever sends (``fanout.send`` raises,
  nothing is published).

Real redis-server and real in-process Celery workers.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import pytest
import support

from fanout_celery import (
    ConfigurationError,
    Event,
    Fanout,
    InvalidEventError,
    Middleware,
    NonRetriableError,
    RetryPolicy,
)
from fanout_celery.model.records import unpack_step

pytestmark = pytest.mark.integration

wait_until = partial(support.wait_until, timeout=15.0)
only_run = partial(support.only_run, timeout=15.0)

FAST = RetryPolicy(max_retries=2, backoff=0.05, jitter=0)




class Recorder(Middleware):
    """Records every hook call as ``(name, hook, detail)``; ``transform_output`` wraps a
    value as ``{name: value}`` and ``transform_input`` unwraps it, so the nesting order
    shows in what is stored."""

    def __init__(self, name: str, log: list[tuple[str, str, Any]]) -> None:
        self.name = name
        self.log = log

    def transform_input(self, ctx, step_id, value):
        self.log.append((self.name, "transform_input", step_id))
        if isinstance(value, dict) and set(value) == {self.name}:
            return value[self.name]
        return value

    def transform_output(self, ctx, step_id, value):
        self.log.append((self.name, "transform_output", step_id))
        return {self.name: value}

    def before_execution(self, ctx):
        self.log.append((self.name, "before_execution", None))

    def after_execution(self, ctx, status, error):
        self.log.append((self.name, "after_execution", status))

    def before_step(self, ctx, step_id):
        self.log.append((self.name, "before_step", step_id))

    def after_step(self, ctx, step_id, output, error):
        self.log.append((self.name, "after_step", step_id))

    def before_send_events(self, ctx, events):
        self.log.append((self.name, "before_send_events", None))
        return events


@pytest.fixture
def log() -> list[tuple[str, str, Any]]:
    return []


@pytest.fixture
def fanout(app, log) -> Fanout:
    return Fanout(app, middleware=[Recorder("A", log), Recorder("B", log)])


# -- order -----------------------------------------------------------------------------
def test_before_hooks_run_in_registration_order_and_after_hooks_in_reverse(
        app, fanout, worker, log):
    @fanout.function(id="ordered", event="app/ordered")
    def ordered(ctx):
        ctx.step.run("s", lambda: 1)
        return {"ok": True}

    with worker(app):
        [event_id] = fanout.send(Event(name="app/ordered"))
        assert fanout.wait_for_run(only_run(fanout, event_id).id).status == "completed"

    assert log == [
        ("A", "before_send_events", None), ("B", "before_send_events", None),
        ("B", "transform_input", None), ("A", "transform_input", None),  # trigger event
        ("A", "before_execution", None), ("B", "before_execution", None),
        ("A", "before_step", "s"), ("B", "before_step", "s"),
        ("B", "after_step", "s"), ("A", "after_step", "s"),
        ("A", "transform_output", "s"), ("B", "transform_output", "s"),
        ("A", "transform_output", None), ("B", "transform_output", None),  # return value
        ("B", "after_execution", "completed"), ("A", "after_execution", "completed"),
    ]


def test_transform_output_nests_in_order_and_transform_input_unwraps_in_reverse(
        app, fanout, worker, log, redis_client):
    seen: list[Any] = []
    failures: list[int] = []

    @fanout.function(id="layers", event="app/layers", retries=FAST)
    def layers(ctx):
        seen.append(ctx.step.run("s", lambda: {"n": 1}))

        def fail_once():
            failures.append(1)
            if len(failures) == 1:
                raise RuntimeError("forces a replay of s")

        ctx.step.run("t", fail_once)
        return "done"

    with worker(app):
        [event_id] = fanout.send(Event(name="app/layers"))
        done = fanout.wait_for_run(only_run(fanout, event_id).id)

    assert done.status == "completed"
    # Stored: B's layer outside A's. Read back: B unwraps first, then A.
    stored = unpack_step(fanout.store.step_record(done.id, "s"))
    assert stored["output"] == {"B": {"A": {"n": 1}}}
    assert done.output == {"B": {"A": "done"}}
    assert seen == [{"n": 1}, {"n": 1}]  # first run (not transformed) and replay


def test_step_hooks_run_only_for_executed_steps_not_memoized_ones(app, fanout, worker, log):
    bodies: list[str] = []

    @fanout.function(id="memo", event="app/memo", retries=FAST)
    def memo(ctx):
        ctx.step.run("first", lambda: bodies.append("first"))

        def second():
            bodies.append("second")
            if bodies.count("second") == 1:
                raise RuntimeError("retry me")

        ctx.step.run("second", second)

    with worker(app):
        [event_id] = fanout.send(Event(name="app/memo"))
        assert fanout.wait_for_run(only_run(fanout, event_id).id).status == "completed"

    assert bodies == ["first", "second", "second"]
    a = [(hook, detail) for name, hook, detail in log if name == "A"]
    attempts = [i for i, entry in enumerate(a) if entry[0] == "before_execution"]
    assert len(attempts) == 2
    second_attempt = a[attempts[1]:]
    assert ("before_step", "first") not in second_attempt
    assert ("after_step", "first") not in second_attempt
    assert ("transform_input", "first") in second_attempt  # the memo is read back
    assert ("before_step", "second") in second_attempt
    assert a.count(("before_step", "first")) == 1
    assert a.count(("before_step", "second")) == 2


def test_after_step_receives_the_output_or_the_error_of_the_step(app, worker):
    calls: list[tuple[str, Any, BaseException | None]] = []

    class Watch(Middleware):
        def after_step(self, ctx, step_id, output, error):
            calls.append((step_id, output, error))

    fanout = Fanout(app, middleware=[Watch()])

    @fanout.function(id="breaks", event="app/breaks", retries=0)
    def breaks(ctx):
        ctx.step.run("fine", lambda: (1, 2))
        ctx.step.run("broken", lambda: 1 / 0)

    with worker(app):
        [event_id] = fanout.send(Event(name="app/breaks"))
        done = fanout.wait_for_run(only_run(fanout, event_id).id)

    assert done.status == "failed"
    [(ok_id, ok_output, ok_error), (bad_id, bad_output, bad_error)] = calls
    assert (ok_id, ok_output, ok_error) == ("fine", [1, 2], None)  # the JSON round trip
    assert (bad_id, bad_output) == ("broken", None)
    assert isinstance(bad_error, ZeroDivisionError)


def test_after_execution_receives_the_status_of_each_attempt(app, worker):
    statuses: list[tuple[str, str, BaseException | None]] = []

    class Status(Middleware):
        def after_execution(self, ctx, status, error):
            statuses.append((ctx.function_id, status, error))

    fanout = Fanout(app, middleware=[Status()])
    tries: list[int] = []

    @fanout.function(id="journey", event="app/journey", retries=FAST)
    def journey(ctx):
        def flaky():
            tries.append(1)
            if len(tries) == 1:
                raise RuntimeError("once")

        ctx.step.run("flaky", flaky)
        ctx.step.sleep("nap", 0.05)

    @fanout.function(id="doomed", event="app/doomed")
    def doomed(ctx):
        ctx.step.run("no", lambda: (_ for _ in ()).throw(NonRetriableError("no")))

    with worker(app):
        [ok] = fanout.send(Event(name="app/journey"))
        assert fanout.wait_for_run(only_run(fanout, ok).id).status == "completed"
        [bad] = fanout.send(Event(name="app/doomed"))
        assert fanout.wait_for_run(only_run(fanout, bad).id).status == "failed"

    assert statuses == [("journey", "queued", None), ("journey", "sleeping", None),
                        ("journey", "completed", None), ("doomed", "failed", None)]


# -- sending ---------------------------------------------------------------------------
class Tenant(Middleware):
    """Adds the sender's run id (or "outside") to every event sent."""

    def before_send_events(self, ctx, events):
        sender = "outside" if ctx is None else ctx.run_id
        return [{**e, "data": {**e["data"], "sent_by": sender}} for e in events]


def test_before_send_events_can_modify_events_from_send_and_send_event(app, worker):
    fanout = Fanout(app, middleware=[Tenant()])
    received: list[dict[str, Any]] = []

    @fanout.function(id="parent", event="app/parent")
    def parent(ctx):
        received.append(ctx.event.data)
        ctx.step.send_event("fan", Event(name="app/child", data={"n": 1}))

    @fanout.function(id="child", event="app/child")
    def child(ctx):
        received.append(ctx.event.data)

    with worker(app):
        [event_id] = fanout.send(Event(name="app/parent", data={"n": 0}))
        parent_run = fanout.wait_for_run(only_run(fanout, event_id).id)
        [child_event] = parent_run.steps[0].output
        fanout.wait_for_run(only_run(fanout, child_event).id)

    assert received == [{"n": 0, "sent_by": "outside"}, {"n": 1, "sent_by": parent_run.id}]
    [stored] = fanout.store.get_events([child_event])
    assert stored["data"] == {"n": 1, "sent_by": parent_run.id}


@pytest.mark.parametrize("broken", [
    {"name": "not a valid name!"},
    {"data": {"value": {1, 2}}},  # not JSON
    {"id": "bad id/with slash"},
])
def test_events_returned_by_before_send_events_are_validated_again(app, redis_client,
                                                                   broken):
    class Corrupt(Middleware):
        def before_send_events(self, ctx, events):
            return [{**e, **broken} for e in events]

    fanout = Fanout(app, middleware=[Corrupt()])

    @fanout.function(id="target", event="app/target")
    def target(ctx):
        pass

    with pytest.raises(InvalidEventError):
        fanout.send(Event(name="app/target", data={"value": 1}))
    assert redis_client.keys("*") == []  # nothing was published


def test_add_middleware_appends_after_the_constructors(app, worker, log):
    fanout = Fanout(app, middleware=[Recorder("A", log)])
    fanout.add_middleware(Recorder("B", log))

    @fanout.function(id="late", event="app/late")
    def late(ctx):
        pass

    with worker(app):
        [event_id] = fanout.send(Event(name="app/late"))
        fanout.wait_for_run(only_run(fanout, event_id).id)

    assert [n for n, hook, _ in log if hook == "before_execution"] == ["A", "B"]
    assert [n for n, hook, _ in log if hook == "after_execution"] == ["B", "A"]


@pytest.mark.parametrize("bad", [object(), Recorder, "middleware"])
def test_middleware_must_be_a_middleware_instance(app, bad):
    with pytest.raises(ConfigurationError, match="Middleware"):
        Fanout(app, middleware=[bad])
    fanout = Fanout(app)
    with pytest.raises(ConfigurationError, match="Middleware"):
        fanout.add_middleware(bad)


# -- errors in hooks -------------------------------------------------------------------
class Boom(Middleware):
    """Raises from ``hook`` the first ``times`` calls (for ``step`` only, if given)."""

    def __init__(self, hook: str, times: int = 10**9, step: str | None = None) -> None:
        self.hook, self.times, self.step = hook, times, step
        self.calls: list[Any] = []

    def _maybe(self, hook: str, step_id: str | None = None) -> None:
        if hook == self.hook and (self.step is None or step_id == self.step):
            self.calls.append(step_id)
            if len(self.calls) <= self.times:
                raise RuntimeError(f"{hook} exploded")

    def before_execution(self, ctx):
        self._maybe("before_execution")

    def after_execution(self, ctx, status, error):
        self._maybe("after_execution")

    def before_step(self, ctx, step_id):
        self._maybe("before_step", step_id)

    def before_send_events(self, ctx, events):
        self._maybe("before_send_events")
        return events


def test_an_error_in_before_step_is_retried_like_a_handler_error(app, worker):
    fanout = Fanout(app, middleware=[Boom("before_step", times=1, step="s")])
    bodies: list[str] = []

    @fanout.function(id="hooked", event="app/hooked", retries=FAST)
    def hooked(ctx):
        ctx.step.run("s", lambda: bodies.append("s"))

    with worker(app):
        [event_id] = fanout.send(Event(name="app/hooked"))
        done = fanout.wait_for_run(only_run(fanout, event_id).id)

    assert done.status == "completed"
    assert done.attempt == 1  # the handler was retried once
    assert bodies == ["s"]  # the step body did not run for the failed attempt


def test_an_error_in_before_execution_fails_the_run_after_the_handler_retries(app, worker):
    statuses: list[str] = []

    class Status(Middleware):
        def after_execution(self, ctx, status, error):
            statuses.append(status)

    fanout = Fanout(app, middleware=[Status(), Boom("before_execution")])
    called: list[int] = []

    @fanout.function(id="never", event="app/never", retries=FAST)
    def never(ctx):
        called.append(1)

    with worker(app):
        [event_id] = fanout.send(Event(name="app/never"))
        done = fanout.wait_for_run(only_run(fanout, event_id).id)

    assert done.status == "failed"
    assert done.error["type"] == "RuntimeError"
    assert done.error["message"] == "before_execution exploded"
    assert done.attempt == FAST.max_retries
    assert called == []
    assert statuses == ["queued", "queued", "failed"]  # after_execution still runs


def test_an_error_in_after_execution_is_logged_and_the_run_still_completes(
        app, worker, caplog):
    fanout = Fanout(app, middleware=[Boom("after_execution")])

    @fanout.function(id="ends", event="app/ends")
    def ends(ctx):
        return 5

    with caplog.at_level(logging.ERROR, logger="fanout.execution"), worker(app):
        [event_id] = fanout.send(Event(name="app/ends"))
        done = fanout.wait_for_run(only_run(fanout, event_id).id)
        wait_until(lambda: any("after_execution failed" in r.getMessage()
                               for r in caplog.records))

    assert (done.status, done.output) == ("completed", 5)


def test_an_error_in_transform_output_of_the_return_value_fails_the_run(app, worker):
    class OnlyReturn(Middleware):
        def transform_output(self, ctx, step_id, value):
            if step_id is None:
                raise RuntimeError("cannot store the output")
            return value

    fanout = Fanout(app, middleware=[OnlyReturn()])

    @fanout.function(id="unstorable", event="app/unstorable", retries=FAST)
    def unstorable(ctx):
        ctx.step.run("s", lambda: 1)
        return "result"

    with worker(app):
        [event_id] = fanout.send(Event(name="app/unstorable"))
        done = fanout.wait_for_run(only_run(fanout, event_id).id)

    assert done.status == "failed"
    assert done.error == {**done.error, "type": "RuntimeError",
                          "message": "cannot store the output"}
    assert done.output is None


def test_an_error_in_before_send_events_reaches_the_sender_and_nothing_is_sent(
        app, redis_client):
    fanout = Fanout(app, middleware=[Boom("before_send_events")])

    @fanout.function(id="quiet", event="app/quiet")
    def quiet(ctx):
        pass

    with pytest.raises(RuntimeError, match="before_send_events exploded"):
        fanout.send(Event(name="app/quiet"))
    assert redis_client.keys("*") == []
