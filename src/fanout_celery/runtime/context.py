"""What a handler receives as ``ctx``: the trigger event(s), the step API, run details,
and a logger that stays silent while memoized steps are replayed."""

from __future__ import annotations

import logging
from typing import Any

from ..model.events import Event
from .asyncstep import AsyncStep
from .core import StepCore
from .state import AttemptState
from .step import Step


class ReplayAwareLogger:
    """``ctx.logger``: a logger that stays silent while memoized steps are replayed."""

    def __init__(self, logger: logging.Logger, execution: AttemptState) -> None:
        self._logger = logger
        self._x = execution

    def _log(self, level: int, msg: str, *args: Any, **kwargs: Any) -> None:
        if not self._x.replaying:
            self._logger.log(level, msg, *args, **kwargs)

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._log(logging.DEBUG, msg, *args, **kwargs)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._log(logging.INFO, msg, *args, **kwargs)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._log(logging.WARNING, msg, *args, **kwargs)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._log(logging.ERROR, msg, *args, **kwargs)

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("exc_info", True)
        self._log(logging.ERROR, msg, *args, **kwargs)


class Context:
    """What a handler receives: the trigger event(s), the step API and run details."""

    def __init__(self, execution: AttemptState) -> None:
        self._x = execution
        self.events = [Event(**e) for e in execution.events]
        self.event = self.events[0]
        self._core = StepCore(execution)
        self._step = Step(self._core)
        self.step: Any = AsyncStep(self._step, self._core) if execution.is_async else self._step
        self.run_id = execution.run_id
        self.function_id = execution.function.function_id
        self.logger = ReplayAwareLogger(
            logging.getLogger(f"fanout.function.{self.function_id}"), execution)

    @property
    def data(self) -> Any:
        """The trigger event's data: its pydantic model when the event name has an
        ``EventType`` registered with the Fanout, else the dict."""
        event_type = self._x.services.event_types.get(self.event.name)
        return self.event.data if event_type is None else event_type.parse(self.event.data)

    @property
    def attempt(self) -> int:
        """0-based attempt of the step now executing (of the handler body outside steps)."""
        return self._core.attempt if self._core.in_step else self._x.body_attempt
