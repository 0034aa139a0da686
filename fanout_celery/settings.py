"""Settings read from ``app.conf.fanout_*`` (so Django's ``CELERY_FANOUT_*`` works)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigurationError

REDIS_SCHEMES = ("redis", "rediss", "redis+socket", "unix")

DEFAULTS: dict[str, Any] = {
    "redis_url": None,
    "key_prefix": "fanout",
    "retention": timedelta(days=7),
    "event_dedupe_window": timedelta(hours=24),
    "max_event_bytes": 512 * 1024,
    "max_step_output_bytes": 4 * 1024 * 1024,
    "max_steps": 1000,
    "lease_seconds": 30,
    # How often the timer pump in each worker looks for due timers and expired leases.
    "pump_interval": 0.2,
    # A run whose message was published (a new run, or one a pump woke) but never
    # started a task is published again after this long; it only matters when a pump or
    # broker loses a message.
    "redispatch_seconds": 300,
    # How far back a newly registered wait_for_event looks for events it may have just
    # missed (sent after the previous step, before the wait was registered).
    "wait_lookback": 300,
    # Send custom task events (task-sleeping, task-waiting, task-retrying) when a run
    # parks, so Flower shows that state rather than SUCCESS.
    "task_events": True,
}


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigurationError(f"fanout_{name} must be a positive number of seconds or a "
                                 f"timedelta, not {value!r}")
    return float(value)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(f"fanout_{name} must be a positive integer, not {value!r}")
    return value


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, for logs and CLI output."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


@dataclass(frozen=True)
class Settings:
    """Validated fanout settings of one Celery app."""

    redis_url: str
    key_prefix: str = "fanout"
    retention: float = 7 * 86400.0
    event_dedupe_window: float = 86400.0
    max_event_bytes: int = 512 * 1024
    max_step_output_bytes: int = 4 * 1024 * 1024
    max_steps: int = 1000
    lease_seconds: float = 30.0
    pump_interval: float = 0.2
    redispatch_seconds: float = 300.0
    wait_lookback: float = 300.0
    task_events: bool = True

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{f.name}={redact_url(self.redis_url) if f.name == 'redis_url' else getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
        )
        return f"Settings({fields})"

    @classmethod
    def from_app(cls, app: Any, **overrides: Any) -> Settings:
        """Build settings from ``app.conf.fanout_*``; keyword overrides win when not None."""
        raw: dict[str, Any] = {}
        for name, default in DEFAULTS.items():
            value = overrides.get(name)
            if value is None:
                value = app.conf.get(f"fanout_{name}", default)
            raw[name] = default if value is None else value
        url = raw["redis_url"]
        if url is None:
            broker = app.conf.broker_url or ""
            if isinstance(broker, str) and broker.split("://", 1)[0] in REDIS_SCHEMES:
                url = broker
            else:
                raise ConfigurationError(
                    "fanout needs Redis for its state: set app.conf.fanout_redis_url "
                    "(the broker is not Redis, so it cannot be used)"
                )
        if not isinstance(url, str) or url.split("://", 1)[0] not in REDIS_SCHEMES:
            raise ConfigurationError(
                f"fanout_redis_url must be a redis://, rediss://, redis+socket:// or unix:// "
                f"URL, not {redact_url(str(url))!r}"
            )
        prefix = raw["key_prefix"]
        if not isinstance(prefix, str) or not prefix or any(c in prefix for c in "{} \n"):
            raise ConfigurationError(
                f"fanout_key_prefix must be a non-empty string without braces or spaces, "
                f"not {prefix!r}"
            )
        return cls(
            redis_url=url,
            key_prefix=prefix,
            retention=_seconds("retention", raw["retention"]),
            event_dedupe_window=_seconds("event_dedupe_window", raw["event_dedupe_window"]),
            max_event_bytes=_positive_int("max_event_bytes", raw["max_event_bytes"]),
            max_step_output_bytes=_positive_int(
                "max_step_output_bytes", raw["max_step_output_bytes"]
            ),
            max_steps=_positive_int("max_steps", raw["max_steps"]),
            lease_seconds=_seconds("lease_seconds", raw["lease_seconds"]),
            pump_interval=_seconds("pump_interval", raw["pump_interval"]),
            redispatch_seconds=_seconds("redispatch_seconds", raw["redispatch_seconds"]),
            wait_lookback=_seconds("wait_lookback", raw["wait_lookback"]),
            task_events=bool(raw["task_events"]),
        )
