"""Middleware: hooks around a run attempt, each step, and event sending.

Hooks run in the order middleware was added; "after" hooks and ``transform_input`` (which
undoes what ``transform_output`` did) run in reverse, like nested layers — the order
Inngest uses. Every hook is optional; the base class does nothing.

- ``transform_input(ctx, step_id, value)``: data read back from storage: each trigger
  event (``step_id`` None) and each memoized step output. Returns the value to use.
- ``transform_output(ctx, step_id, value)``: data about to be stored: each step output
  and the function's return value (``step_id`` None). The handler still receives the
  original value; only the stored copy is transformed.
- ``before_execution(ctx)`` / ``after_execution(ctx, status, error)``: around one attempt.
- ``before_step(ctx, step_id)`` / ``after_step(ctx, step_id, output, error)``: around a
  step body that executes (not a memoized one).
- ``before_send_events(ctx, events)``: events (dicts) about to be published, by
  ``fanout.send`` (``ctx`` None) or ``step.send_event``; returns the events to publish.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class Middleware:
    """Base class: override the hooks you need."""

    def transform_input(self, ctx: Any, step_id: str | None, value: Any) -> Any:
        return value

    def transform_output(self, ctx: Any, step_id: str | None, value: Any) -> Any:
        return value

    def before_execution(self, ctx: Any) -> None:
        return None

    def after_execution(self, ctx: Any, status: str, error: BaseException | None) -> None:
        return None

    def before_step(self, ctx: Any, step_id: str) -> None:
        return None

    def after_step(self, ctx: Any, step_id: str, output: Any,
                   error: BaseException | None) -> None:
        return None

    def before_send_events(self, ctx: Any, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return events


class Chain:
    """The middleware of one Fanout, applied in the documented order."""

    def __init__(self, items: Sequence[Middleware] = ()) -> None:
        self.items: list[Middleware] = []
        for item in items:
            self.add(item)

    def __bool__(self) -> bool:
        return bool(self.items)

    def add(self, item: Middleware) -> None:
        if not isinstance(item, Middleware):
            from ..errors import ConfigurationError

            raise ConfigurationError(f"middleware must subclass fanout_celery.Middleware, "
                                     f"not {type(item).__name__}")
        self.items.append(item)

    def transform_input(self, ctx: Any, step_id: str | None, value: Any) -> Any:
        for m in reversed(self.items):
            value = m.transform_input(ctx, step_id, value)
        return value

    def transform_output(self, ctx: Any, step_id: str | None, value: Any) -> Any:
        for m in self.items:
            value = m.transform_output(ctx, step_id, value)
        return value

    def before_execution(self, ctx: Any) -> None:
        for m in self.items:
            m.before_execution(ctx)

    def after_execution(self, ctx: Any, status: str, error: BaseException | None) -> None:
        for m in reversed(self.items):
            m.after_execution(ctx, status, error)

    def before_step(self, ctx: Any, step_id: str) -> None:
        for m in self.items:
            m.before_step(ctx, step_id)

    def after_step(self, ctx: Any, step_id: str, output: Any,
                   error: BaseException | None) -> None:
        for m in reversed(self.items):
            m.after_step(ctx, step_id, output, error)

    def before_send_events(self, ctx: Any, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for m in self.items:
            events = m.before_send_events(ctx, events)
        return events
