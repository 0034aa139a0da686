"""Redis clients from URLs, and the errors a caller may retry."""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

# Errors that say "not now" rather than "never": the server is away, restarting, being
# failed over, or out of memory. Retrying later (with back-off) is the answer to each.
TRANSIENT: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    *(getattr(redis.exceptions, name) for name in (
        "OutOfMemoryError", "MasterDownError", "TryAgainError", "ClusterDownError")
      if hasattr(redis.exceptions, name)),
)
# The same errors as Redis words them, for replies redis-py maps to a plain ResponseError
# (inside MULTI, or from a script): OOM, READONLY, LOADING, MASTERDOWN, TRYAGAIN.
TRANSIENT_PREFIXES = ("OOM", "READONLY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")


def is_transient(exc: BaseException) -> bool:
    """Whether a Redis error is worth retrying later (see ``TRANSIENT``)."""
    if isinstance(exc, TRANSIENT):
        return True
    if isinstance(exc, redis.exceptions.ResponseError):
        text = str(exc).lstrip("-")
        return text.startswith(TRANSIENT_PREFIXES) or any(
            f"-{prefix} " in text or f" {prefix} " in text for prefix in TRANSIENT_PREFIXES
            if prefix in ("OOM", "READONLY"))
    return False


# A command refused with one of these is retried this many times, backing off from
# BACKOFF_BASE up to BACKOFF_CAP seconds between tries (about 5 s in all), each time on a
# new connection: after a failover behind a stable address, that reaches the new primary.
RETRIES = 6
BACKOFF_BASE = 0.05
BACKOFF_CAP = 2.0


def retry_policy() -> Retry:
    """How the state client retries transient errors (see ``TRANSIENT``)."""
    return Retry(ExponentialBackoff(cap=BACKOFF_CAP, base=BACKOFF_BASE), RETRIES,
                 supported_errors=TRANSIENT)


def backoff(attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (1-based), as ``retry_policy`` does."""
    return float(min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt))


def connect(url: str, **options: Any) -> redis.Redis[str]:
    """A client for ``redis://``, ``rediss://``, ``unix://`` or kombu's ``redis+socket://``,
    retrying transient errors (a restart, a failover, a full Redis) with back-off."""
    if url.startswith("redis+socket://"):
        url = "unix://" + url[len("redis+socket://"):]
    settings: dict[str, Any] = {"decode_responses": True, "health_check_interval": 30,
                                "socket_keepalive": True, "retry": retry_policy(),
                                "retry_on_error": list(TRANSIENT)}
    settings.update(options)
    return redis.Redis.from_url(url, **settings)


def flush_database(url: str) -> None:
    """Empty the database of ``url`` (``FLUSHDB``): for test fixtures only."""
    client = connect(url)
    try:
        client.flushdb()
    finally:
        client.close()
