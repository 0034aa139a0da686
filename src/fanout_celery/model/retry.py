"""Retry policies and back-off."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import ConfigurationError, RetryAfterError


@dataclass(frozen=True)
class RetryPolicy:
    """How many times a step (or the handler body) is retried, and how long to wait.

    The delay before retry ``n`` (1-based) is ``backoff * backoff_factor ** (n - 1)``
    seconds, capped at ``backoff_max``. ``jitter`` spreads a burst of failures: a
    fraction (0.1: up to 10 % of the delay added or removed), or Celery's
    ``retry_jitter`` forms: ``True`` for full jitter (a random delay from 0 to the
    computed one), ``False`` for none.
    """

    max_retries: int = 4
    backoff: float = 1.0
    backoff_factor: float = 2.0
    backoff_max: float = 600.0
    jitter: float | bool = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) \
                or not 0 <= self.max_retries <= 10_000:
            raise ConfigurationError(
                f"max_retries must be an integer from 0 to 10000, not {self.max_retries!r}")
        for name in ("backoff", "backoff_factor", "backoff_max", "jitter"):
            value = getattr(self, name)
            if name == "jitter" and isinstance(value, bool):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigurationError(f"{name} must be a number >= 0, not {value!r}")
        if self.backoff_factor < 1:
            raise ConfigurationError(f"backoff_factor must be >= 1, not {self.backoff_factor!r}")
        if not isinstance(self.jitter, bool) and self.jitter > 1:
            raise ConfigurationError(f"jitter is a fraction from 0 to 1, not {self.jitter!r}")

    @classmethod
    def coerce(cls, value: Any) -> RetryPolicy:
        """A policy from ``retries=``: an int (max retries) or a ``RetryPolicy``."""
        if isinstance(value, RetryPolicy):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(max_retries=value)
        raise ConfigurationError(
            f"retries must be an int or a RetryPolicy, not {type(value).__name__}")

    def delay(self, retry_number: int) -> float:
        """Seconds to wait before retry ``retry_number`` (1-based)."""
        base = min(self.backoff * self.backoff_factor ** max(retry_number - 1, 0),
                   self.backoff_max)
        if self.jitter is True:
            return random.uniform(0.0, base)
        if self.jitter:
            base += base * self.jitter * (2 * random.random() - 1)
        return max(base, 0.0)

    def as_dict(self) -> dict[str, Any]:
        return {"max_retries": self.max_retries, "backoff": self.backoff,
                "backoff_factor": self.backoff_factor, "backoff_max": self.backoff_max,
                "jitter": self.jitter}


def retry_at_ms(policy: RetryPolicy, retry_number: int, now_ms: int,
                exc: BaseException | None = None) -> int:
    """When the next attempt may start, honouring a ``RetryAfterError``."""
    if isinstance(exc, RetryAfterError):
        after = exc.retry_after
        if isinstance(after, datetime):
            if after.tzinfo is None:
                after = after.replace(tzinfo=UTC)
            return max(int(after.timestamp() * 1000), now_ms)
        if isinstance(after, timedelta):
            after = after.total_seconds()
        return now_ms + int(max(float(after), 0.0) * 1000)
    return now_ms + int(policy.delay(retry_number) * 1000)
