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
from .function import Function
from .retry import RetryPolicy
from .runs import Run, StepRecord
from .step import Context, Step

__version__ = "0.1.0"

__all__ = [
    "CancelOn",
    "ConfigurationError",
    "Context",
    "DuplicateFunctionError",
    "Event",
    "Fanout",
    "FanoutError",
    "Function",
    "InvalidEventError",
    "InvalidStepError",
    "LeaseLostError",
    "NestedStepError",
    "NonRetriableError",
    "RetryAfterError",
    "RetryPolicy",
    "RunFailedError",
    "Run",
    "RunTimeoutError",
    "Step",
    "StepError",
    "StepOutputError",
    "StepRecord",
    "Timeouts",
    "TooManyStepsError",
    "UnknownFunctionError",
    "__version__",
]
