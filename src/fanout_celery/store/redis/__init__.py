"""The Redis implementation of the store port: the only code that speaks to Redis for
run state, and the only place that knows its keys and its Lua scripts."""

from .connect import TRANSIENT, connect, flush_database, is_transient
from .store import RedisStore

__all__ = ["TRANSIENT", "RedisStore", "connect", "flush_database", "is_transient"]
