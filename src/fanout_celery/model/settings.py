"""Settings read from ``app.conf.fanout_*`` (so Django's ``CELERY_FANOUT_*`` works).

Every ``fanout_*`` setting is parsed and checked here, and nowhere else: a bad value is
a ``ConfigurationError`` naming the setting, an unknown ``fanout_*`` name a warning
with the closest valid one. Durations are seconds (or a ``timedelta``); the ``*_ms``
properties give them in milliseconds, the unit of every timestamp in the store.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import ConfigurationError

logger = logging.getLogger("fanout")

REDIS_SCHEMES = ("redis", "rediss", "redis+socket", "unix")
# Redis Sentinel: kombu's form (sentinel://host:port;sentinel://host:port/db) and
# celery-redbeat's (redis-sentinel://...); the service name comes from fanout_redis_options.
SENTINEL_SCHEMES = ("sentinel", "redis-sentinel")
# Redis Cluster: redis+cluster://host:port[,host:port...] (rediss+cluster:// with TLS).
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
STATE_SCHEMES = REDIS_SCHEMES + SENTINEL_SCHEMES + CLUSTER_SCHEMES

# fanout_redis_options: how to reach the state's Redis beyond its URL (celery-redbeat's
# names for redbeat_redis_options where they overlap).
REDIS_OPTIONS = {
    "sentinels": "a list of (host, port) pairs or 'host:port' strings",
    "service_name": "the Sentinel service (master) name",
    "sentinel_kwargs": "a dict of connection options for the Sentinels themselves",
    "password": "a string", "username": "a string", "db": "an integer >= 0",
    "socket_timeout": "a number of seconds", "socket_connect_timeout": "a number of seconds",
    "wait_replicas": "an integer >= 0: replicas that must have each checkpoint",
    "wait_timeout": "a number of seconds: how long to wait for them",
    "cluster": "True for a Redis Cluster (or a redis+cluster:// URL)",
    "shards": "the number of shards on a cluster: 2, 4, 8, ..., 256 (default 64)",
}


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigurationError(f"fanout_{name} must be a positive number of seconds or a "
                                 f"timedelta, not {value!r}")
    return float(value)


def _sink(name: str, value: Any) -> Any:
    from .history import coerce_sink

    return coerce_sink(value, f"fanout_{name}")


def _optional_seconds(name: str, value: Any) -> float | None:
    return None if value is None else _seconds(name, value)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(f"fanout_{name} must be a positive integer, not {value!r}")
    return value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"fanout_{name} must be True or False, not {value!r}")
    return value


def _prefix(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value or any(c in value for c in "{} \n"):
        raise ConfigurationError(
            f"fanout_{name} must be a non-empty string without braces or spaces, "
            f"not {value!r}")
    return value


def _url(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value.split("://", 1)[0] not in STATE_SCHEMES:
        raise ConfigurationError(
            f"fanout_{name} must be a redis://, rediss://, redis+socket://, unix://, "
            f"sentinel:// or redis+cluster:// URL, not {redact_url(str(value))!r}")
    return value


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value >= 0


def _redis_options(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigurationError(f"fanout_{name} must be a dict, not {value!r}")
    for key, item in value.items():
        if key not in REDIS_OPTIONS:
            raise ConfigurationError(
                f"fanout_{name}: unknown option {key!r}; the options are "
                f"{', '.join(sorted(REDIS_OPTIONS))}")
        ok = {
            "sentinels": isinstance(item, (list, tuple)) and bool(item) and all(
                (isinstance(x, str) and ":" in x) or (isinstance(x, (list, tuple))
                                                      and len(x) == 2) for x in item),
            "service_name": isinstance(item, str) and bool(item),
            "sentinel_kwargs": isinstance(item, dict),
            "password": isinstance(item, str), "username": isinstance(item, str),
            "db": isinstance(item, int) and not isinstance(item, bool) and item >= 0,
            "socket_timeout": _number(item), "socket_connect_timeout": _number(item),
            "wait_replicas": isinstance(item, int) and not isinstance(item, bool) and item >= 0,
            "wait_timeout": _number(item),
            "cluster": isinstance(item, bool),
            "shards": isinstance(item, int) and not isinstance(item, bool)
            and 2 <= item <= 256 and 256 % item == 0,
        }[key]
        if not ok:
            raise ConfigurationError(
                f"fanout_{name}[{key!r}] must be {REDIS_OPTIONS[key]}, not {item!r}")
    if value.get("cluster") and (value.get("sentinels") or value.get("wait_replicas")):
        raise ConfigurationError(
            f"fanout_{name}: a Redis Cluster takes neither sentinels nor wait_replicas "
            "(its masters fail over to their replicas by themselves)")
    return dict(value)


# name -> (default, parser); the names are those of app.conf without "fanout_".
SPEC: dict[str, tuple[Any, Callable[[str, Any], Any]]] = {
    "redis_url": (None, _url),
    "redis_options": ({}, _redis_options),
    "key_prefix": ("fanout", _prefix),
    "retention": (timedelta(days=7), _seconds),
    # How long the step records (outputs, errors) of a finished run are kept; its summary
    # (status, output, error, timestamps) stays for the retention. None: the retention.
    "output_retention": (None, _optional_seconds),
    "event_dedupe_window": (timedelta(hours=24), _seconds),
    "max_event_bytes": (512 * 1024, _positive_int),
    "max_step_output_bytes": (4 * 1024 * 1024, _positive_int),
    "max_steps": (1000, _positive_int),
    "lease_seconds": (30, _seconds),
    # How often the timer pump in each worker looks for due timers and expired leases.
    "pump_interval": (0.2, _seconds),
    # A run whose message was published (a new run, or one a pump woke) but never
    # started a task is published again after this long; it only matters when a pump or
    # broker loses a message.
    "redispatch_seconds": (300, _seconds),
    # How far back a newly registered wait_for_event looks for events it may have just
    # missed (sent after the previous step, before the wait was registered).
    "wait_lookback": (300, _seconds),
    # Send custom task events (task-sleeping, task-waiting, task-retrying) when a run
    # parks, so Flower shows that state rather than SUCCESS.
    "task_events": (True, _flag),
    # Publish run messages straight into a Redis broker's queue, pipelined (see
    # integration/publisher.py); False publishes through app.send_task.
    "fast_publish": (True, _flag),
    # How often beat sends the cron tick that fires due cron slots.
    "cron_interval": (1.0, _seconds),
    # Use fanout's subclass of kombu's Redis transport for a Redis broker: it counts the
    # replies of a failover or a full Redis as connection errors (integration/transport.py).
    "broker_transport": (True, _flag),
    # Run the timer pump in this app's workers. A deployment with dedicated queues may
    # turn it off on some workers (or start them with --without-fanout-pump); at least
    # one worker must run it, or sleeps, retries and lost messages never come back.
    "pump": (True, _flag),
    # A function with checkpoints="buffered" writes its buffered step.run checkpoints at
    # the latest after this many steps, or once the oldest is this old when a step starts.
    "checkpoint_buffer_steps": (50, _positive_int),
    # Where every finished run goes before it expires (model/history.py): an object with
    # write(runs), a callable, or "package.module:name". None: nowhere.
    "history_sink": (None, _sink),
    "checkpoint_buffer_ms": (1000, _positive_int),
    # Run and step records in the compact layout (store/redis/base.py, static_fields;
    # model/records.py, pack_step). False writes the layout before it, which workers of
    # 0.1 read: for a rolling upgrade from 0.1, while old and new workers share runs.
    "compact_records": (True, _flag),
}


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, for logs and CLI output (each part
    of a ``;``-separated list of Sentinel URLs)."""
    if ";" in url:
        return ";".join(redact_url(part) for part in url.split(";"))
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
    redis_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    key_prefix: str = "fanout"
    retention: float = 7 * 86400.0
    output_retention: float | None = None
    event_dedupe_window: float = 86400.0
    max_event_bytes: int = 512 * 1024
    max_step_output_bytes: int = 4 * 1024 * 1024
    max_steps: int = 1000
    lease_seconds: float = 30.0
    pump_interval: float = 0.2
    redispatch_seconds: float = 300.0
    wait_lookback: float = 300.0
    task_events: bool = True
    fast_publish: bool = True
    cron_interval: float = 1.0
    broker_transport: bool = True
    pump: bool = True
    compact_records: bool = True
    checkpoint_buffer_steps: int = 50
    checkpoint_buffer_ms: int = 1000
    history_sink: Any = None
    # Not a fanout_ setting: the Celery app's own (timezone, enable_utc), the zone of
    # cron expressions without a TZ= prefix.
    timezone: str = "UTC"

    def __repr__(self) -> str:
        def shown(name: str) -> str:
            if name == "redis_url":
                return repr(redact_url(self.redis_url))
            if name == "redis_options":
                return repr({k: "***" if "password" in k else v
                             for k, v in self.redis_options.items()})
            return repr(getattr(self, name))

        fields = ", ".join(f"{f.name}={shown(f.name)}" for f in dataclasses.fields(self))
        return f"Settings({fields})"

    # -- in milliseconds, as the store keeps time
    @property
    def retention_ms(self) -> int:
        return int(self.retention * 1000)

    @property
    def output_retention_ms(self) -> int:
        """How long a finished run's step records are kept (at most the retention)."""
        if self.output_retention is None:
            return self.retention_ms
        return int(min(self.output_retention, self.retention) * 1000)

    @property
    def keep_events_ms(self) -> int:
        """How long events and their run lists are kept: they de-duplicate for the
        dedupe window even when runs are kept for less."""
        return int(max(self.retention, self.event_dedupe_window) * 1000)

    @property
    def lease_ms(self) -> int:
        return int(self.lease_seconds * 1000)

    @property
    def redispatch_ms(self) -> int:
        return int(self.redispatch_seconds * 1000)

    @property
    def lookback_ms(self) -> int:
        return int(self.wait_lookback * 1000)

    @classmethod
    def from_app(cls, app: Any, **overrides: Any) -> Settings:
        """Build settings from ``app.conf.fanout_*``; keyword overrides win when not None."""
        conf = app.conf
        _warn_unknown(conf)
        raw: dict[str, Any] = {}
        for name, (default, parse) in SPEC.items():
            value = overrides.get(name)
            if value is None:
                value = conf.get(f"fanout_{name}", default)
            raw[name] = parse(name, default if value is None else value)
        raw["timezone"] = app_timezone(conf)
        if raw["redis_url"] is None:
            broker = conf.broker_url or ""
            scheme = broker.split("://", 1)[0] if isinstance(broker, str) else ""
            if scheme in REDIS_SCHEMES:
                raw["redis_url"] = broker
            elif scheme in SENTINEL_SCHEMES:
                # The broker's Sentinels, and kombu's name for the service.
                raw["redis_url"] = broker
                master = (conf.broker_transport_options or {}).get("master_name")
                if master and "service_name" not in raw["redis_options"]:
                    raw["redis_options"] = {**raw["redis_options"], "service_name": master}
            else:
                raise ConfigurationError(
                    "fanout needs Redis for its state: set app.conf.fanout_redis_url "
                    "(the broker is not Redis, so it cannot be used)")
        scheme = raw["redis_url"].split("://", 1)[0]
        if scheme in CLUSTER_SCHEMES and raw["redis_options"].get("wait_replicas"):
            raise ConfigurationError("fanout_redis_options: a Redis Cluster takes no "
                                     "wait_replicas")
        if scheme in SENTINEL_SCHEMES \
                and not raw["redis_options"].get("service_name"):
            raise ConfigurationError(
                "fanout_redis_url is a Sentinel URL: name the service in "
                "fanout_redis_options = {'service_name': ...} (or the broker's "
                "broker_transport_options = {'master_name': ...})")
        return cls(**raw)


def app_timezone(conf: Any) -> str:
    """The IANA name of a Celery app's zone: ``timezone``, else UTC (with ``enable_utc``,
    Celery's default) or the machine's local zone."""
    zone = conf.get("timezone")
    if zone:
        return str(getattr(zone, "key", zone))
    if conf.get("enable_utc", True):
        return "UTC"
    import os

    local = os.environ.get("TZ", "").lstrip(":")
    if not local and os.path.islink("/etc/localtime"):
        local = os.path.realpath("/etc/localtime").split("zoneinfo/", 1)[-1]
    return local or "UTC"


def read_setting(app: Any, name: str) -> Any:
    """One setting of ``app``, parsed and checked, without building (or caching) the
    whole ``Settings``: for what is needed before the app is fully configured."""
    default, parse = SPEC[name]
    value = app.conf.get(f"fanout_{name}", default)
    return parse(name, default if value is None else value)


def _warn_unknown(conf: Any) -> None:
    try:
        names = [str(k) for k in conf.keys()]
    except Exception:  # a conf without keys(): nothing to check
        return
    known = [f"fanout_{n}" for n in SPEC]
    for name in names:
        low = name.lower()
        if low.startswith("fanout_") and low not in known:
            # Compared without the shared prefix, which would make any name look close.
            close = difflib.get_close_matches(low[len("fanout_"):], list(SPEC), n=1)
            hint = f"; did you mean fanout_{close[0]}?" if close else ""
            logger.warning("fanout: unknown setting %s is ignored%s", name, hint)
