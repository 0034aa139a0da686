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
    RetryAfterError,
    RunFailedError,
    RunTimeoutError,
    StepError,
    StepOutputError,
    TooManyStepsError,
    UnknownFunctionError,
)
from .events import Event
from .fanout import Fanout
from .flow import CancelOn, Timeouts
from .flowcontrol import Batch, Concurrency, Debounce, Priority, RateLimit, Singleton, Throttle
from .function import Function
from .middleware import Middleware
from .retry import RetryPolicy
from .runs import Run, StepRecord
from .step import Context, Step
from .typed import EventType

__version__ = "0.1.0"

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
    "NonRetriableError",
    "Priority",
    "RateLimit",
    "RetryAfterError",
    "RetryPolicy",
    "Run",
    "RunFailedError",
    "RunTimeoutError",
    "Singleton",
    "Step",
    "StepError",
    "StepOutputError",
    "StepRecord",
    "Throttle",
    "Timeouts",
    "TooManyStepsError",
    "UnknownFunctionError",
    "__version__",
]
