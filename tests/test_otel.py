"""OpenTelemetry tracing (``OpenTelemetryMiddleware``): a span per run attempt and per
executed step, child runs in their parent's trace across ``send_event`` and ``invoke``,
errors on spans, and a no-op without the opentelemetry packages.

Spans are collected with the SDK's ``InMemorySpanExporter``; runs execute on a real
in-process Celery worker against a real redis-server.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
import support
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from fanout_celery import Event, Fanout, NonRetriableError, RetryPolicy
from fanout_celery.otel import OpenTelemetryMiddleware

pytestmark = pytest.mark.integration

wait_until = partial(support.wait_until, timeout=15.0)
only_run = partial(support.only_run, timeout=15.0)

FAST = RetryPolicy(max_retries=2, backoff=0.05, jitter=0)




@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield tracer_provider
    tracer_provider.shutdown()


@pytest.fixture
def fanout(app, provider) -> Fanout:
    return Fanout(app, middleware=[OpenTelemetryMiddleware(tracer_provider=provider)])


def spans(exporter: InMemorySpanExporter, name: str, count: int) -> list[ReadableSpan]:
    """The finished spans called ``name``, once there are ``count`` of them (a run span
    ends just after the run is marked final), oldest first."""
    def found() -> list[ReadableSpan] | None:
        named = [s for s in exporter.get_finished_spans() if s.name == name]
        return named if len(named) >= count else None

    named = wait_until(found)
    assert len(named) == count, [s.name for s in exporter.get_finished_spans()]
    return sorted(named, key=lambda s: s.start_time)


def ancestors(exporter: InMemorySpanExporter, span: ReadableSpan) -> list[int]:
    """Span ids of ``span``'s parent, grandparent... among the finished spans."""
    by_id = {s.context.span_id: s for s in exporter.get_finished_spans()}
    out = []
    parent = span.parent
    while parent is not None:
        out.append(parent.span_id)
        above = by_id.get(parent.span_id)
        parent = above.parent if above is not None else None
    return out


# -- spans -----------------------------------------------------------------------------
def test_a_span_per_run_attempt_and_per_executed_step(app, fanout, worker, exporter):
    tries: list[int] = []

    @fanout.function(id="traced", event="app/traced", retries=FAST)
    def traced(ctx):
        ctx.step.run("a", lambda: 1)

        def b():
            tries.append(1)
            if len(tries) == 1:
                raise RuntimeError("once")

        ctx.step.run("b", b)

    with worker(app):
        [event_id] = fanout.send(Event(name="app/traced"))
        run = fanout.wait_for_run(only_run(fanout, event_id).id)
        first, second = spans(exporter, "fanout.run traced", 2)

    assert run.status == "completed"
    for attempt in (first, second):
        assert attempt.attributes["fanout.run_id"] == run.id
        assert attempt.attributes["fanout.function_id"] == "traced"
        assert attempt.attributes["fanout.event"] == "app/traced"
    assert first.attributes["fanout.status"] == "queued"  # parked for the step's retry
    assert second.attributes["fanout.status"] == "completed"
    [a] = spans(exporter, "fanout.step a", 1)  # memoized on the second attempt: no span
    b_first, b_second = spans(exporter, "fanout.step b", 2)
    assert a.attributes["fanout.step_id"] == "a"
    assert a.attributes["fanout.run_id"] == run.id
    assert [b_first.attributes["fanout.attempt"], b_second.attributes["fanout.attempt"]] \
        == [0, 1]
    # Each step span is a child of its attempt's run span.
    assert a.parent.span_id == first.context.span_id
    assert b_first.parent.span_id == first.context.span_id
    assert b_second.parent.span_id == second.context.span_id
    assert b_first.status.status_code is StatusCode.ERROR
    assert b_second.status.status_code is StatusCode.UNSET


def test_a_failing_steps_span_has_error_status_and_the_exception(app, fanout, worker,
                                                                exporter):
    def charge():
        raise NonRetriableError("card declined")

    @fanout.function(id="payment", event="app/pay")
    def payment(ctx):
        ctx.step.run("charge", charge)

    with worker(app):
        [event_id] = fanout.send(Event(name="app/pay"))
        run = fanout.wait_for_run(only_run(fanout, event_id).id)
        [step] = spans(exporter, "fanout.step charge", 1)
        [attempt] = spans(exporter, "fanout.run payment", 1)

    assert run.status == "failed"
    assert step.status.status_code is StatusCode.ERROR
    assert "card declined" in step.status.description
    [exception] = [e for e in step.events if e.name == "exception"]
    assert exception.attributes["exception.type"].endswith("NonRetriableError")
    assert exception.attributes["exception.message"] == "card declined"
    # The failed run's span is an error too.
    assert attempt.attributes["fanout.status"] == "failed"
    assert attempt.status.status_code is StatusCode.ERROR


def test_a_child_started_by_send_event_is_in_the_parents_trace(app, fanout, worker,
                                                              exporter):
    @fanout.function(id="parent", event="app/parent")
    def parent(ctx):
        ctx.step.run("prepare", lambda: None)
        ctx.step.send_event("fan", Event(name="app/child"))

    @fanout.function(id="child", event="app/child")
    def child(ctx):
        ctx.step.run("work", lambda: None)

    with worker(app):
        [event_id] = fanout.send(Event(name="app/parent"))
        parent_run = fanout.wait_for_run(only_run(fanout, event_id).id)
        [child_event] = next(s for s in parent_run.steps if s.id == "fan").output
        fanout.wait_for_run(only_run(fanout, child_event).id)
        [parent_span] = spans(exporter, "fanout.run parent", 1)
        [child_span] = spans(exporter, "fanout.run child", 1)
        [work] = spans(exporter, "fanout.step work", 1)

    assert child_span.context.trace_id == parent_span.context.trace_id
    assert parent_span.context.span_id in ancestors(exporter, child_span)
    assert ancestors(exporter, work)[:2] == [child_span.context.span_id,
                                             child_span.parent.span_id]
    [stored] = fanout.store.get_events([child_event])
    assert "traceparent" in stored["trace"]


def test_an_invoked_child_is_in_the_parents_trace(app, fanout, worker, exporter):
    parent_parked = threading.Event()

    @fanout.function(id="callee")
    def callee(ctx):
        # The child ends only once its parent parked at the invoke (a child that ended
        # first would let the parent go on in the same attempt: one span, not two).
        assert parent_parked.wait(15), "the parent never parked"
        return ctx.step.run("compute", lambda: 42)

    @fanout.function(id="caller", event="app/caller")
    def caller(ctx):
        return ctx.step.invoke("call", function=callee, data={"x": 1})

    with worker(app):
        [event_id] = fanout.send(Event(name="app/caller"))
        caller_id = only_run(fanout, event_id).id
        support.wait_until(lambda: fanout.get_run(caller_id).status == "waiting")
        parent_parked.set()
        done = fanout.wait_for_run(caller_id)
        # The parent parks at the invoke and resumes: two attempts.
        parked, resumed = spans(exporter, "fanout.run caller", 2)
        [callee_span] = spans(exporter, "fanout.run callee", 1)

    assert done.output == 42
    assert parked.attributes["fanout.status"] == "waiting"
    assert resumed.attributes["fanout.status"] == "completed"
    assert callee_span.context.trace_id == parked.context.trace_id
    assert parked.context.span_id in ancestors(exporter, callee_span)


def test_runs_sent_from_inside_a_span_continue_the_senders_trace(app, fanout, worker,
                                                                exporter, provider):
    @fanout.function(id="handled", event="app/request")
    def handled(ctx):
        pass

    tracer = provider.get_tracer("web")
    with worker(app):
        with tracer.start_as_current_span("POST /signup") as request_span:
            [event_id] = fanout.send(Event(name="app/request"))
            invoked = fanout.invoke(handled)
        fanout.wait_for_run(only_run(fanout, event_id).id)
        fanout.wait_for_run(invoked)
        runs = spans(exporter, "fanout.run handled", 2)

    for run_span in runs:
        assert run_span.context.trace_id == request_span.get_span_context().trace_id
        assert run_span.parent.span_id == request_span.get_span_context().span_id


# -- without opentelemetry -------------------------------------------------------------
def test_without_opentelemetry_the_middleware_is_a_no_op(app, worker, monkeypatch,
                                                         exporter, provider):
    with monkeypatch.context() as patched:
        for name in [m for m in sys.modules if m == "opentelemetry"
                     or m.startswith("opentelemetry.")]:
            patched.setitem(sys.modules, name, None)  # `import` now raises ImportError
        with pytest.raises(ImportError):
            import opentelemetry.trace  # noqa: F401
        middleware = OpenTelemetryMiddleware(tracer_provider=provider)

    events = [{"name": "app/x", "data": {}}]
    assert middleware.before_send_events(None, events) is events
    fanout = Fanout(app, middleware=[middleware])
    seen: list[Any] = []

    @fanout.function(id="plain", event="app/plain")
    def plain(ctx):
        seen.append(ctx.step.run("s", lambda: "ok"))
        ctx.step.send_event("next", Event(name="app/next"))

    with worker(app):
        [event_id] = fanout.send(Event(name="app/plain"))
        run = fanout.wait_for_run(only_run(fanout, event_id).id)

    assert run.status == "completed" and seen == ["ok"]
    [sent] = fanout.store.get_events(run.steps[1].output)
    assert "trace" not in sent
    assert exporter.get_finished_spans() == ()
