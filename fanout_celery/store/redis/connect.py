"""Redis clients from URLs, and the errors a caller may retry."""

from __future__ import annotations

from typing import Any

import redis

# Errors that say "not now" rather than "never": the server is away, restarting, being
# failed over, or out of memory. Retrying later (with back-off) is the answer to each.
TRANSIENT: tuple[type[BaseException], ...] = (
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


def connect(url: str, **options: Any) -> redis.Redis[str]:
    """A client for ``redis://``, ``rediss://``, ``unix://`` or kombu's ``redis+socket://``."""
    if url.startswith("redis+socket://"):
        url = "unix://" + url[len("redis+socket://"):]
    settings: dict[str, Any] = {"decode_responses": True, "health_check_interval": 30,
                                "retry_on_timeout": True, "socket_keepalive": True}
    settings.update(options)
    return redis.Redis.from_url(url, **settings)


def flush_database(url: str) -> None:
    """Empty the database of ``url`` (``FLUSHDB``): for test fixtures only."""
    client = connect(url)
    try:
        client.flushdb()
    finally:
        client.close()
