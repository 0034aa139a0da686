"""One hierarchy for every error fanout_celery raises.

Control-flow signals used internally to park a run (``Suspend``) derive from
``BaseException`` so that a handler's ``except Exception`` cannot swallow them.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any


class FanoutError(Exception):
    """Base class of every exception raised by fanout_celery."""


class ConfigurationError(FanoutError, ValueError):
    """A setting, a function option or a decorator argument is invalid."""


class DuplicateFunctionError(ConfigurationError):
    """Two functions were declared with the same id on one ``Fanout``."""


class InvalidEventError(FanoutError, ValueError):
    """An event given to ``send`` or ``step.send_event`` is malformed: bad name,
    data that is not JSON, an id with forbidden characters, or over the size limit."""


class InvalidStepError(FanoutError, ValueError):
    """A step was used wrongly: a bad step id, a step nested inside another step,
    an output that is not JSON or too large, or more steps than the limit allows."""


class NestedStepError(InvalidStepError):
    """A step was called from inside another step's function."""


class StepOutputError(InvalidStepError):
    """A step's return value cannot be stored: it is not JSON or exceeds the size limit."""


class TooManyStepsError(InvalidStepError):
    """A run used more steps than ``fanout_max_steps`` allows."""


class NoSubscriptionsError(FanoutError):
    """``send`` found no function published in Redis and declares none itself: the
    events would start no run. Redis lost its data, or no worker has started yet; it is
    safe to send the same events again once a worker is up."""


class UnknownFunctionError(FanoutError, LookupError):
    """No function with that id (or that object) is registered."""


class RunTimeoutError(FanoutError, TimeoutError):
    """``wait_for_run`` gave up before the run reached a final status."""


class RunFailedError(FanoutError):
    """A function's Celery task ends with the error that failed its run (the handler's or
    a step's own exception, so ``task_failure`` receivers and Flower see it); this one
    stands in when that exception is not at hand (a run failed by a replay of a step's
    recorded failure). The run's recorded error is on the run."""


class RunNotFoundError(FanoutError, LookupError):
    """A function's task was given a run id that names no run (never created, expired,
    or not a run id at all: the task was called by hand)."""


class NonRetriableError(FanoutError):
    """Raise from a step or handler to fail at once, without further retries."""


class RetryAfterError(FanoutError):
    """Raise from a step or handler to retry no earlier than ``retry_after``.

    ``retry_after`` is a number of seconds, a ``timedelta`` or an aware ``datetime``.
    The attempt still counts against the function's retry policy.
    """

    def __init__(self, message: str, retry_after: float | timedelta | datetime) -> None:
        super().__init__(message)
        if isinstance(retry_after, bool) or not isinstance(
            retry_after, (int, float, timedelta, datetime)
        ):
            raise ConfigurationError(
                "retry_after must be seconds, a timedelta or a datetime, "
                f"not {type(retry_after).__name__}"
            )
        self.retry_after = retry_after


class StepError(FanoutError):
    """A step exhausted its retries (or raised ``NonRetriableError``).

    Raised inside the handler at the failed step on every replay, so a handler can
    catch it deterministically. ``error`` holds the recorded error: ``type``,
    ``message`` and ``traceback`` of the step's last failure.
    """

    def __init__(self, step_id: str, error: dict[str, Any]) -> None:
        self.step_id = step_id
        self.error = error
        super().__init__(f"step {step_id!r} failed: {error.get('type')}: {error.get('message')}")


class LeaseLostError(FanoutError):
    """This execution lost its lease on the run (it expired and another worker took
    over); the execution stops without writing anything more."""


class Suspend(BaseException):  # noqa: N818 - a control-flow signal, not an error
    """Internal: unwinds the handler to park the run until ``wake_at`` (ms)."""

    def __init__(self, status: str, wake_at_ms: int | None,
                 step: tuple[str, str, dict[str, Any]] | None = None,
                 error: BaseException | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.wake_at_ms = wake_at_ms
        # (step key, encoded record, record) to checkpoint together with parking.
        self.step = step
        # The error of a step that parks to retry after its back-off.
        self.error = error
        # True when the step already parked the run (atomically with registering a wait).
        self.parked = False


class CancelRequested(BaseException):  # noqa: N818 - a control-flow signal, not an error
    """Internal: the run was cancelled while executing; stop at this step boundary."""
