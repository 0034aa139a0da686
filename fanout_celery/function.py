"""Function definitions and the Celery task each one becomes."""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery import Task
from celery.worker.request import Request

from .errors import ConfigurationError, RunFailedError
from .flow import CancelOn, Timeouts
from .flowcontrol import FlowControl
from .retry import RetryPolicy
from .routing import Subscription, check_pattern

if TYPE_CHECKING:
    from .fanout import Fanout

logger = logging.getLogger("fanout.function")

# The Celery task event sent when a run parks, by the status it parks in.
PARKED_EVENTS = {"queued": "task-retrying", "sleeping": "task-sleeping",
                 "waiting": "task-waiting", "throttled": "task-throttled"}
# The same, keyed by the task's result as the worker reports it (its repr).
PARKED_RESULTS = {**{repr(k): v for k, v in PARKED_EVENTS.items()}, **PARKED_EVENTS}

FUNCTION_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-.]{0,127}\Z")

# Celery task options a function may pass through. Options the library relies on
# (acks_late, serializer, bind, ...) are not among them.
TASK_OPTIONS = frozenset({
    "rate_limit", "time_limit", "soft_time_limit", "priority", "expires", "routing_key",
    "exchange", "track_started", "default_retry_delay", "store_errors_even_if_ignored",
})


@dataclass
class FunctionDef:
    """What ``@fanout.function`` declared: id, triggers, policy, handler."""

    function_id: str
    handler: Callable[..., Any]
    events: tuple[str, ...] = ()
    crons: tuple[str, ...] = ()
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    task_name: str = ""
    queue: str = ""
    where: tuple[tuple[str, Any], ...] = ()
    on_failure: str | None = None
    missed: str = "latest"
    missed_limit: int = 10
    cancel_on: tuple[CancelOn, ...] = ()
    timeouts: Timeouts | None = None
    flow: FlowControl = field(default_factory=FlowControl)

    def subscription(self) -> Subscription:
        return Subscription(function_id=self.function_id, events=self.events,
                            task=self.task_name, queue=self.queue, where=self.where,
                            crons=self.crons, missed=self.missed,
                            missed_limit=self.missed_limit,
                            cancel_on=tuple(tuple(c.as_list()) for c in self.cancel_on),
                            start_timeout=self.timeouts.start_seconds if self.timeouts else None,
                            flow=None if self.flow.empty else self.flow.as_dict())


JSON = "application/json"


class FunctionRequest(Request):  # type: ignore[misc]
    """Worker-side request of a function task.

    It refuses messages that are not JSON: a run's message carries only its run id, always
    as JSON; any other content type (pickle, yaml) was not sent by this library and is
    dropped unexecuted, as if revoked.

    And it tells monitors what a parked run is doing: the task of a run that parked
    returns its status, and the worker's ``task-succeeded`` event for it is sent as
    ``task-sleeping`` / ``task-waiting`` / ``task-retrying`` / ``task-throttled`` instead
    (Flower shows that state). Rewriting the event here costs nothing; ending the task
    with an exception would cost a formatted traceback per park.
    """

    def send_event(self, type: str, **fields: Any) -> None:  # noqa: A002 - Celery's name
        if type == "task-succeeded":
            parked = PARKED_RESULTS.get(str(fields.get("result", "")))
            if parked is not None and self.task.fanout.settings.task_events:
                type = parked
                fields.pop("result", None)
        super().send_event(type, **fields)

    def revoked(self) -> bool:
        if self.content_type != JSON:
            if not self._already_revoked:
                logger.error("refusing a %s message for task %s: fanout functions accept "
                             "JSON only", self.content_type, self.task_name)
                self._announce_revoked("refused: not JSON", False, None, False)
            return True
        return bool(super().revoked())


class Function(Task):  # type: ignore[misc]
    """A fanout function: a registered Celery task whose runs are durable.

    Calling the task directly is not how runs start: use ``fanout.send`` (events) or
    ``fanout.invoke``. The task's only argument is a run id.
    """

    Request = "fanout_celery.function:FunctionRequest"
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    serializer = "json"
    typing = False
    fanout: Fanout
    definition: FunctionDef

    @property
    def function_id(self) -> str:
        return self.definition.function_id

    def report(self, run_id: str, status: str) -> str:
        """End the Celery task so monitors show the run's state, not a plain SUCCESS.

        A parked run's task returns its status, which ``FunctionRequest`` turns into a
        custom task event; a failed run ends the task as FAILURE.
        """
        if status == "failed":
            raise RunFailedError(f"run {run_id} of {self.function_id!r} failed")
        return status


def check_function_id(value: Any) -> str:
    if not isinstance(value, str) or not FUNCTION_ID_RE.match(value):
        raise ConfigurationError(
            f"a function id is 1-128 characters of letters, digits and _-. "
            f"(not starting with punctuation), got {value!r}"
        )
    return value


def as_list(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and value:
        return tuple(value)
    raise ConfigurationError(f"{what} must be a string or a non-empty list of strings, "
                             f"not {value!r}")


def check_handler(handler: Any, function_id: str) -> None:
    if not callable(handler):
        raise ConfigurationError(f"function {function_id!r}: the handler must be callable")
    try:
        sig = inspect.signature(handler)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(object())
    except TypeError:
        raise ConfigurationError(
            f"function {function_id!r}: the handler must take exactly one argument, ctx"
        ) from None


def check_task_options(options: dict[str, Any], function_id: str) -> None:
    unknown = sorted(set(options) - TASK_OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"function {function_id!r}: unknown option(s) {', '.join(unknown)}; "
            f"Celery task options accepted here: {', '.join(sorted(TASK_OPTIONS))}"
        )


def check_events(events: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(check_pattern(e) for e in events)
