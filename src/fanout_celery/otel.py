"""OpenTelemetry tracing (``pip install fanout_celery[otel]``): one span per run attempt
and per executed step, linked parent -> child across ``send_event`` and ``invoke``.

The run span of a child continues the trace of the step that sent its event (the trace
context travels in the event's ``trace`` field). Without the opentelemetry packages
installed, the middleware does nothing.
"""

from __future__ import annotations

from typing import Any

from .model.forksafe import ForkSafeLock
from .model.middleware import Middleware


class OpenTelemetryMiddleware(Middleware):
    """Spans ``fanout.run <function>`` and ``fanout.step <step id>``."""

    def __init__(self, tracer_provider: Any = None) -> None:
        try:
            from opentelemetry import context, propagate, trace
        except ImportError:  # no-op without the extra
            self._trace: Any = None
            return
        self._trace, self._context, self._propagate = trace, context, propagate
        self._tracer = trace.get_tracer("fanout_celery", tracer_provider=tracer_provider)
        self._open: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._lock = ForkSafeLock()

    def _start(self, key: tuple[str, str], name: str, parent: Any,
               attributes: dict[str, Any]) -> None:
        span = self._tracer.start_span(name, context=parent, attributes=attributes)
        token = self._context.attach(self._trace.set_span_in_context(span))
        with self._lock:
            self._open[key] = (span, token)

    def _end(self, key: tuple[str, str], error: BaseException | None,
             attributes: dict[str, Any], failed: bool = False) -> None:
        with self._lock:
            opened = self._open.pop(key, None)
        if opened is None:
            return
        span, token = opened
        for name, value in attributes.items():
            span.set_attribute(name, value)
        if error is not None and isinstance(error, Exception):
            span.record_exception(error)
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, str(error)))
        elif failed:  # the run failed: its error is on the run, no exception escaped
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, "run failed"))
        span.end()
        try:
            self._context.detach(token)
        except Exception:  # detached in another context (async handlers): harmless
            pass

    def before_execution(self, ctx: Any) -> None:
        if self._trace is None:
            return
        carrier = ctx.event.trace or {}
        parent = self._propagate.extract(carrier) if carrier else None
        self._start((ctx.run_id, ""), f"fanout.run {ctx.function_id}", parent, {
            "fanout.run_id": ctx.run_id, "fanout.function_id": ctx.function_id,
            "fanout.event": ctx.event.name, "fanout.attempt": ctx.attempt})

    def after_execution(self, ctx: Any, status: str, error: BaseException | None) -> None:
        if self._trace is not None:
            self._end((ctx.run_id, ""), error, {"fanout.status": status},
                      failed=status == "failed")

    def before_step(self, ctx: Any, step_id: str) -> None:
        if self._trace is not None:
            self._start((ctx.run_id, step_id), f"fanout.step {step_id}", None, {
                "fanout.run_id": ctx.run_id, "fanout.step_id": step_id,
                "fanout.attempt": ctx.step.attempt})

    def after_step(self, ctx: Any, step_id: str, output: Any,
                   error: BaseException | None) -> None:
        if self._trace is not None:
            self._end((ctx.run_id, step_id), error, {})

    def before_send_events(self, ctx: Any, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self._trace is None:
            return events
        carrier: dict[str, str] = {}
        self._propagate.inject(carrier)
        if not carrier:
            return events
        return [{**e, "trace": carrier} for e in events]
