"""Durable, event-driven functions for Celery: checkpointed steps in Redis, event fan-out,
cron through beat, and per-function retries."""

from .errors import (
    ConfigurationError,
    DuplicateFunctionError,
    FanoutError,
    InvalidEventError,
    InvalidStepError,
    LeaseLostError,
    NestedStepError,
    NonRetriableError,
    NoSubscriptionsError,
    RetryAfterError,
    RunFailedError,
    RunNotFoundError,
    RunTimeoutError,
    StepError,
    StepOutputError,
    TooManyStepsError,
    UnknownFunctionError,
)
from .fanout import Fanout
from .integration import signals
from .integration.task import Function
from .model.cancellation import CancelOn, Timeouts
from .model.events import Event, StreamedIds
from .model.flowcontrol import (
    Batch,
    Concurrency,
    Debounce,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
)
from .model.middleware import Middleware
from .model.retry import RetryPolicy
from .model.runs import Run, RunNode, StepRecord
from .model.typed import EventType
from .runtime.context import Context
from .runtime.step import Step

__version__ = "0.2.0"

__all__ = [
    "Batch",
    "CancelOn",
    "Concurrency",
    "ConfigurationError",
    "Context",
    "Debounce",
    "DuplicateFunctionError",
    "Event",
    "EventType",
    "Fanout",
    "FanoutError",
    "Function",
    "InvalidEventError",
    "InvalidStepError",
    "LeaseLostError",
    "Middleware",
    "NestedStepError",
    "NoSubscriptionsError",
    "NonRetriableError",
    "Priority",
    "RateLimit",
    "RetryAfterError",
    "RetryPolicy",
    "Run",
    "RunNode",
    "RunFailedError",
    "RunNotFoundError",
    "RunTimeoutError",
    "Singleton",
    "Step",
    "StepError",
    "StepOutputError",
    "StepRecord",
    "StreamedIds",
    "Throttle",
    "Timeouts",
    "TooManyStepsError",
    "UnknownFunctionError",
    "__version__",
    "signals",
]
