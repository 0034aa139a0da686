"""What ``@fanout.function`` declares, validated, and the form it is published in.

``declare(...)`` checks every decorator argument before anything is registered and
returns a ``FunctionDef``; ``FunctionDef.subscription()`` is the part other processes
need (triggers, task name, queue, flow control), published to the store as JSON.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import ConfigurationError
from .cancellation import CancelOn, Timeouts, coerce_cancel_on
from .cron import check_missed, parse_cron
from .events import FUNCTION_FAILED
from .flowcontrol import FlowControl, Throttle
from .patterns import check_pattern, matches, resolve_path
from .retry import RetryPolicy

FUNCTION_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-.]{0,127}\Z")

# Celery task options a function passes through to its task, with Celery's meaning (a
# time limit applies to each attempt). ``rate_limit`` and ``priority`` are arguments of
# ``@fanout.function`` of their own: Celery's forms of them are read there.
TASK_OPTIONS = frozenset({
    "time_limit", "soft_time_limit", "track_started", "store_errors_even_if_ignored",
})

_RETRIES = ("every exception a step raises is retried under the function's "
            "retries=RetryPolicy(max_retries, backoff, backoff_factor, backoff_max, jitter); "
            "raise NonRetriableError to fail at once")
_FANOUT_OWNS = "fanout sets this option itself: a durable run's task relies on it"
# Celery task options that would mean something else (or nothing) on a function's task,
# and what to use instead.
REFUSED_TASK_OPTIONS = {
    "default_retry_delay": "use retries=RetryPolicy(backoff=<seconds>)",
    "max_retries": "use retries=<int> or retries=RetryPolicy(max_retries=...)",
    "autoretry_for": _RETRIES,
    "dont_autoretry_for": "raise NonRetriableError for errors that must not be retried",
    "retry_kwargs": _RETRIES,
    "retry_backoff": "use retries=RetryPolicy(backoff=..., backoff_factor=...)",
    "retry_backoff_max": "use retries=RetryPolicy(backoff_max=...)",
    "retry_jitter": "use retries=RetryPolicy(jitter=True)",
    "expires": "a run's message must not expire unrun; use timeouts=Timeouts(start=...) to "
               "cancel a run that has not started in time",
    "routing_key": "use queue=<name>, or Celery's task_routes for the task fanout.<id>",
    "exchange": "use queue=<name>, or Celery's task_routes for the task fanout.<id>",
    "acks_late": _FANOUT_OWNS, "acks_on_failure_or_timeout": _FANOUT_OWNS,
    "reject_on_worker_lost": _FANOUT_OWNS, "serializer": _FANOUT_OWNS, "bind": _FANOUT_OWNS,
    "base": _FANOUT_OWNS, "ignore_result": _FANOUT_OWNS, "typing": _FANOUT_OWNS,
    "shared": _FANOUT_OWNS, "lazy": _FANOUT_OWNS, "throws": _FANOUT_OWNS,
}

# Celery's rate units: "10/s", "10/m", "10/h" (a bare number is per second).
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([smh]))?\s*\Z")
_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
MAX_MESSAGE_PRIORITY = 255


def _no_handler(ctx: Any) -> None:  # pragma: no cover - replaced by bind()
    raise ConfigurationError("this function has no handler yet")


@dataclass(frozen=True)
class Subscription:
    """One function's event triggers and where its runs go: what a process that does
    not import the function needs to start its runs."""

    function_id: str
    events: tuple[str, ...]
    task: str
    queue: str = ""
    # Equality filters on the event, by dotted path (used by on_failure handlers).
    where: tuple[tuple[str, Any], ...] = ()
    # Cron triggers (texts as declared) and what to do with slots missed while down.
    crons: tuple[str, ...] = ()
    missed: str = "latest"
    missed_limit: int = 10
    # (event, match path, timeout seconds) of each cancel_on, and the start timeout.
    cancel_on: tuple[tuple[Any, ...], ...] = ()
    start_timeout: float | None = None
    # Flow-control options (FlowControl.as_dict()), enforced by senders and workers.
    flow: dict[str, Any] | None = None
    # Celery's message priority of the runs' task messages.
    priority: int | None = None

    def accepts(self, event: dict[str, Any]) -> bool:
        """Whether ``event`` (a stored event dict) starts a run of this function."""
        return self.listens_to(event["name"]) and self.admits(event)

    def listens_to(self, name: str) -> bool:
        """Whether an event of this name can start a run of this function."""
        return any(matches(p, name) for p in self.events)

    def admits(self, event: dict[str, Any]) -> bool:
        """Whether ``event``, of a name this function listens to, passes its ``where``."""
        return all(resolve_path(event, path) == value for path, value in self.where)

    @property
    def flow_control(self) -> FlowControl:
        return FlowControl.loads(self.flow)

    def dumps(self) -> str:
        return json.dumps({"events": list(self.events), "task": self.task, "queue": self.queue,
                           "where": [list(w) for w in self.where], "crons": list(self.crons),
                           "missed": self.missed, "missed_limit": self.missed_limit,
                           "cancel_on": [list(c) for c in self.cancel_on],
                           "start_timeout": self.start_timeout, "flow": self.flow,
                           "priority": self.priority})

    @classmethod
    def loads(cls, function_id: str, raw: str) -> Subscription:
        data = json.loads(raw)
        return cls(function_id=function_id, events=tuple(data["events"]), task=data["task"],
                   queue=data.get("queue", ""),
                   where=tuple((p, v) for p, v in data.get("where", [])),
                   crons=tuple(data.get("crons", [])), missed=data.get("missed", "latest"),
                   missed_limit=int(data.get("missed_limit", 10)),
                   cancel_on=tuple(tuple(c) for c in data.get("cancel_on", [])),
                   start_timeout=data.get("start_timeout"), flow=data.get("flow"),
                   priority=data.get("priority"))


@dataclass(frozen=True)
class FunctionDef:
    """A declared function: id, triggers, policies, handler and Celery task name."""

    function_id: str
    handler: Callable[..., Any] = _no_handler
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
    # Celery's message priority of every task message of its runs (None: the broker's).
    priority: int | None = None
    # "durable": each step.run checkpoint is written before the next step starts;
    # "buffered": written together, before any effect outside the run and at least every
    # fanout_checkpoint_buffer_steps steps / _ms milliseconds.
    checkpoints: str = "durable"

    def bind(self, handler: Callable[..., Any]) -> FunctionDef:
        """This definition with its handler (checked to take one argument, ``ctx``)."""
        check_handler(handler, self.function_id)
        return replace(self, handler=handler)

    def failure_handler(self, handler: Callable[..., Any]) -> FunctionDef:
        """The definition of this function's ``on_failure`` handler: a function of its
        own, triggered by ``fanout/function.failed`` events of this function."""
        return FunctionDef(function_id=f"{self.function_id}-failure", events=(FUNCTION_FAILED,),
                           retry_policy=self.retry_policy,
                           task_name=default_task(f"{self.function_id}-failure"), queue=self.queue,
                           priority=self.priority, where=(("data.function_id", self.function_id),)).bind(handler)

    def subscription(self) -> Subscription:
        return Subscription(function_id=self.function_id, events=self.events,
                            task=self.task_name, queue=self.queue, where=self.where,
                            crons=self.crons, missed=self.missed,
                            missed_limit=self.missed_limit,
                            cancel_on=tuple(tuple(c.as_list()) for c in self.cancel_on),
                            start_timeout=self.timeouts.start_seconds if self.timeouts else None,
                            flow=None if self.flow.empty else self.flow.as_dict(),
                            priority=self.priority)


CHECKPOINT_MODES = ("durable", "buffered")


def declare(function_id: Any, *, events: Sequence[str], cron: Any, retries: Any,
            on_failure: Any, name: Any, queue: Any, cron_missed: Any, cron_missed_limit: Any,
            cancel_on: Any, timeouts: Any, flow: dict[str, Any],
            task_options: dict[str, Any], checkpoints: Any = "durable") -> FunctionDef:
    """Validate the arguments of ``@fanout.function`` (all but the handler);
    ``ConfigurationError`` names the first that is wrong."""
    fid = check_function_id(function_id)
    triggers = tuple(check_pattern(e) for e in events)
    crons = tuple(parse_cron(c).text for c in as_list(cron, "cron"))
    missed, missed_limit = check_missed(cron_missed, cron_missed_limit)
    cancel_list = coerce_cancel_on(cancel_on)
    if timeouts is not None and not isinstance(timeouts, Timeouts):
        raise ConfigurationError(f"function {fid!r}: timeouts must be a Timeouts(...)")
    policy = RetryPolicy.coerce(retries)
    check_task_options(task_options, fid)
    flow = dict(flow)
    message_priority = celery_priority(flow.get("priority"), fid)
    if message_priority is not None:
        flow["priority"] = None
    throttle = celery_rate_limit(flow.get("rate_limit"), fid)
    if throttle is not None:
        if flow.get("throttle") is not None:
            raise ConfigurationError(
                f"function {fid!r}: rate_limit={flow['rate_limit']!r} is Celery's rate "
                "limit, which fanout enforces as a Throttle; pass one of rate_limit and "
                "throttle")
        flow["throttle"], flow["rate_limit"] = throttle, None
    flow_control = FlowControl.build(**flow)
    if queue is not None and (not isinstance(queue, str) or not queue):
        raise ConfigurationError(f"function {fid!r}: queue must be a non-empty string")
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigurationError(f"function {fid!r}: name must be a non-empty string")
    if on_failure is not None:
        check_handler(on_failure, f"{fid}-failure")
    if checkpoints not in CHECKPOINT_MODES:
        raise ConfigurationError(
            f"function {fid!r}: checkpoints must be one of {', '.join(CHECKPOINT_MODES)}, "
            f"not {checkpoints!r}")
    return FunctionDef(
        function_id=fid, events=triggers, crons=crons, retry_policy=policy,
        task_name=name or default_task(fid), queue=queue or "",
        on_failure=f"{fid}-failure" if on_failure is not None else None,
        missed=missed, missed_limit=missed_limit, cancel_on=cancel_list,
        timeouts=timeouts, flow=flow_control, priority=message_priority,
        checkpoints=checkpoints)


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


def default_task(function_id: str) -> str:
    """The Celery task name of a function declared without ``name=``."""
    return f"fanout.{function_id}"


def check_task_options(options: dict[str, Any], function_id: str) -> None:
    for name in sorted(options):
        if name in REFUSED_TASK_OPTIONS:
            raise ConfigurationError(
                f"function {function_id!r}: Celery's task option {name}= does not apply to "
                f"a durable function: {REFUSED_TASK_OPTIONS[name]}")
    unknown = sorted(set(options) - TASK_OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"function {function_id!r}: unknown option(s) {', '.join(unknown)}; the Celery "
            f"task options passed through are {', '.join(sorted(TASK_OPTIONS))} "
            "(and Celery's forms of rate_limit= and priority=)")


def celery_rate_limit(value: Any, function_id: str) -> Any:
    """Celery's ``rate_limit`` (``"10/m"``, or a number per second) as the fanout
    ``Throttle`` that enforces it, across all workers; None for anything else (a
    ``RateLimit(...)`` is fanout's own, checked with the other options)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    match = _RATE_RE.match(str(value))
    if match is None or float(match.group(1)) <= 0:
        raise ConfigurationError(
            f"function {function_id!r}: rate_limit={value!r} is neither Celery's form "
            "(\"10/s\", \"10/m\", \"10/h\", or a number per second) nor a RateLimit(...)")
    count, period = float(match.group(1)), _RATE_UNITS[match.group(2) or "s"]
    if count.is_integer():
        return Throttle(limit=int(count), period=period)
    return Throttle(limit=1, period=period / count)  # "0.5/s": one start every 2 s


def celery_priority(value: Any, function_id: str) -> int | None:
    """Celery's integer ``priority`` (the broker's message priority) or None (a
    ``Priority(...)`` is fanout's own ordering of runs waiting for a slot)."""
    if value is None or not isinstance(value, int):
        return None
    if isinstance(value, bool) or not 0 <= value <= MAX_MESSAGE_PRIORITY:
        raise ConfigurationError(
            f"function {function_id!r}: priority={value!r}: Celery's message priority is "
            f"an integer from 0 to {MAX_MESSAGE_PRIORITY} (Redis: 0-9, 0 first), or "
            "Priority(run=...) to order runs waiting for a concurrency slot")
    return value
