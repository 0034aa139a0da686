"""Throw-away real ``redis-server`` processes: see ``fanout_celery.devtools.embedded``.

Kept importable here for the example project, the benchmarks and users' own tests."""

from .devtools.embedded import (
    DEFAULT_ENV_VAR,
    EmbeddedRedis,
    find_redis_server,
    redis_url_or_embedded,
)

__all__ = ["DEFAULT_ENV_VAR", "EmbeddedRedis", "find_redis_server", "redis_url_or_embedded"]
