"""Redis clients from URLs, and the errors a caller may retry."""

from __future__ import annotations

from typing import Any

import redis

# Errors that say "not now" rather than "never": the server is away, restarting, or
# being failed over. Retrying later (with back-off) is the right answer to each.
TRANSIENT: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
)


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
