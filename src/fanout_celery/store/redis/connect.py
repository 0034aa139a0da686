"""Redis clients from URLs, and the errors a caller may retry."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .forks import guard

T = TypeVar("T")

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


# A refused login (a wrong password or user) is a ConnectionError to redis-py, but it is
# the configuration, not the moment: it fails at once, and a run's attempt fails with it.
REFUSED: tuple[type[Exception], ...] = (
    redis.exceptions.AuthenticationError,
    redis.exceptions.AuthenticationWrongNumberOfArgsError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether a Redis error is worth retrying later (see ``TRANSIENT``)."""
    if isinstance(exc, REFUSED):
        return False
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


class StateRetry(Retry):
    """redis-py's ``Retry``, retrying only what ``is_transient`` calls transient: not a
    refused login (``REFUSED``), which redis-py counts among connection errors, so it
    would back off for seconds.

    The loop is written here rather than inherited: redis-py 5.x calls
    ``call_with_retry(do, fail)``, 7.2 and later add ``is_retryable`` and
    ``with_failure_count``, and Celery 5.4 and 5.5 pin redis-py below 6. This one takes
    both forms, so the state client works beside every redis-py a supported Celery
    resolves to."""

    def call_with_retry(self, do: Callable[[], T], fail: Callable[..., Any],
                        is_retryable: Callable[[Exception], bool] | None = None,
                        with_failure_count: bool = False) -> T:
        # Retry's own fields, the same from redis-py 5.0 to 8.x (the stubs omit them).
        fields: Any = self
        fields._backoff.reset()
        failures = 0
        while True:
            try:
                return do()
            except fields._supported_errors as error:
                retry = is_transient(error) and (is_retryable is None or is_retryable(error))
                failures += 1
                # The failure handler runs before a refusal is raised as well: it is
                # where the connection is closed (and a pipeline's WATCH forgotten).
                if with_failure_count:
                    fail(error, failures)
                else:
                    fail(error)
                if not retry or (fields._retries >= 0 and failures > fields._retries):
                    raise error
                pause = fields._backoff.compute(failures)
                if pause > 0:
                    time.sleep(pause)


def retry_policy() -> Retry:
    """How the state client retries transient errors (see ``TRANSIENT``)."""
    return StateRetry(ExponentialBackoff(cap=BACKOFF_CAP, base=BACKOFF_BASE), RETRIES,
                      supported_errors=TRANSIENT)


def backoff(attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (1-based), as ``retry_policy`` does."""
    return float(min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt))


SENTINEL_SCHEMES = ("sentinel://", "redis-sentinel://")
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
# fanout_redis_options that are fanout's own, not connection options.
OWN_OPTIONS = ("sentinels", "service_name", "sentinel_kwargs", "wait_replicas",
               "wait_timeout", "cluster", "shards")
# Shards of a Redis Cluster deployment: enough that 3 to 12 masters (and 16, 32, 64)
# each hold an even share, few enough that the pump's round reads them all in one
# pipeline per master.
DEFAULT_SHARDS = 64


def is_cluster(url: str, options: dict[str, Any] | None) -> bool:
    """Whether ``url`` / ``options`` name a Redis Cluster."""
    return url.startswith(CLUSTER_SCHEMES) or bool((options or {}).get("cluster"))


def cluster_nodes(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The start-up nodes and the login of ``redis+cluster://[user:pw@]h:p,h:p[/db]``
    (or a plain ``redis://`` URL of one node, with the ``cluster`` option)."""
    scheme, _, rest = url.partition("://")
    tls = scheme.startswith("rediss")
    login, _, hosts = rest.rpartition("@")
    hosts = hosts.split("/", 1)[0]
    nodes = []
    for part in hosts.split(","):
        host, _, port = part.strip().rpartition(":")
        nodes.append((host or "localhost", int(port or 6379)))
    extra: dict[str, Any] = {"ssl": True} if tls else {}
    if login:
        user, _, password = login.partition(":")
        if user:
            extra["username"] = unquote(user)
        if password:
            extra["password"] = unquote(password)
    return nodes, extra


@dataclass(frozen=True)
class SentinelTarget:
    """Where the Sentinels are, which service to ask them for, and how to log in."""

    sentinels: list[tuple[str, int]]
    service_name: str
    connection: dict[str, Any]       # for the master's connections (password, db...)
    sentinel_kwargs: dict[str, Any]  # for the Sentinels' own connections


def sentinel_target(url: str, options: dict[str, Any]) -> SentinelTarget | None:
    """The Sentinel set-up of ``url`` and ``options``, or None for a plain Redis: the
    ``sentinels`` option, or kombu's ``sentinel://[:password@]host:port[;...]/db`` URL."""
    listed = options.get("sentinels")
    if not listed and not url.startswith(SENTINEL_SCHEMES):
        return None
    connection = {k: v for k, v in options.items() if k not in OWN_OPTIONS}
    hosts: list[tuple[str, int]] = []
    if url.startswith(SENTINEL_SCHEMES):
        for part in url.split(";"):
            parts = urlsplit(part.strip())
            hosts.append((parts.hostname or "localhost", parts.port or 26379))
            if parts.password and "password" not in connection:
                connection["password"] = unquote(parts.password)
            if parts.username and "username" not in connection:
                connection["username"] = unquote(parts.username)
            db = parts.path.strip("/")
            if db.isdigit() and "db" not in connection:
                connection["db"] = int(db)
    for item in listed or ():
        host, port = item.rsplit(":", 1) if isinstance(item, str) else item
        hosts.append((str(host), int(port)))
    return SentinelTarget(hosts, str(options.get("service_name", "")), connection,
                          dict(options.get("sentinel_kwargs") or {}))


def client_settings(**options: Any) -> dict[str, Any]:
    """The state client's connection settings: decoded replies, keep-alive, and retries
    of transient errors with back-off."""
    settings: dict[str, Any] = {"decode_responses": True, "health_check_interval": 30,
                                "socket_keepalive": True, "retry": retry_policy(),
                                "retry_on_error": list(TRANSIENT)}
    settings.update(options)
    return settings


def connect(url: str, redis_options: dict[str, Any] | None = None,
            **options: Any) -> redis.Redis[str]:
    """A client for ``redis://``, ``rediss://``, ``unix://`` or kombu's ``redis+socket://``,
    for the master of a Sentinel service (``sentinel://`` or the ``sentinels`` of
    ``redis_options``, fanout_redis_options), or for a Redis Cluster
    (``redis+cluster://`` or the ``cluster`` option), retrying transient errors (a
    restart, a failover, a full Redis) with back-off. Through Sentinel, a reconnection
    asks the Sentinels where the master is now; on a cluster, redis-py follows MOVED and
    ASK and refreshes its map of the slots."""
    if is_cluster(url, redis_options):
        return guard(connect_cluster(url, redis_options or {}, **options))  # type: ignore[no-any-return]
    target = sentinel_target(url, redis_options or {})
    if target is not None:
        from redis.sentinel import Sentinel

        settings = client_settings(**target.connection, **options)
        sentinel = Sentinel(target.sentinels, sentinel_kwargs=target.sentinel_kwargs,
                            **settings)
        master: redis.Redis[str] = sentinel.master_for(target.service_name, **settings)
        return guard(master)  # type: ignore[no-any-return]
    if url.startswith("redis+socket://"):
        url = "unix://" + url[len("redis+socket://"):]
    extra = {k: v for k, v in (redis_options or {}).items() if k not in OWN_OPTIONS}
    return guard(redis.Redis.from_url(url, **client_settings(**extra, **options)))  # type: ignore[no-any-return]


def connect_cluster(url: str, redis_options: dict[str, Any], **options: Any) -> Any:
    """A ``RedisCluster`` client from its start-up nodes (``cluster_nodes``)."""
    from redis.cluster import ClusterNode, RedisCluster

    nodes, login = cluster_nodes(url)
    extra = {k: v for k, v in redis_options.items() if k not in OWN_OPTIONS and k != "db"}
    settings = client_settings(**login, **extra, **options)
    settings.pop("health_check_interval", None)
    return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes],
                        require_full_coverage=False, **settings)


def flush_database(url: str, redis_options: dict[str, Any] | None = None) -> None:
    """Empty the database of ``url`` (``FLUSHDB``; every master of a cluster): for test
    fixtures only."""
    client = connect(url, redis_options)
    try:
        if is_cluster(url, redis_options):
            client.flushdb(target_nodes="primaries")
        else:
            client.flushdb()
    finally:
        client.close()


class ReplicaLagError(redis.exceptions.ConnectionError):
    """Fewer replicas than ``wait_replicas`` confirmed a write in ``wait_timeout``: the
    write is on the primary only, and a failover now could lose it. Transient: the
    attempt that wrote it ends and its run resumes, re-reading what survived."""


class ReplicatedClient:
    """A state client whose every script call and pipeline is followed, on the same
    connection, by ``WAIT <replicas> <timeout>`` (``fanout_redis_options``
    ``wait_replicas``): a checkpoint is acknowledged once that many replicas have it, so
    a failover to one of them loses no acknowledged checkpoint."""

    def __init__(self, client: redis.Redis[str], replicas: int, timeout_ms: int) -> None:
        self._client = client
        self._replicas = replicas
        self._timeout_ms = timeout_ms

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _check(self, acked: Any) -> None:
        if isinstance(acked, Exception):
            raise acked
        if int(acked) < self._replicas:
            raise ReplicaLagError(f"{acked} of {self._replicas} replicas confirmed the "
                                  f"write within {self._timeout_ms} ms")

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        pipe = self._client.pipeline(transaction=False)
        pipe.evalsha(sha, numkeys, *keys_and_args)
        pipe.execute_command("WAIT", self._replicas, self._timeout_ms)  # type: ignore[no-untyped-call]
        result, acked = pipe.execute(raise_on_error=False)
        if isinstance(result, Exception):
            raise result
        self._check(acked)
        return result

    def pipeline(self, transaction: bool = True) -> ReplicatedPipeline:
        if transaction:  # WAIT must follow on the same connection, which MULTI ends
            raise TypeError("the store builds no transactional pipeline")
        return ReplicatedPipeline(self, self._client.pipeline(transaction=False))


class ReplicatedPipeline:
    """A pipeline of a ``ReplicatedClient``: ``WAIT`` is added when it is executed."""

    def __init__(self, owner: ReplicatedClient, pipe: Any) -> None:
        self._owner = owner
        self._pipe = pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def __enter__(self) -> ReplicatedPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pipe.reset()

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        if not self._pipe.command_stack:
            return []
        self._pipe.execute_command("WAIT", self._owner._replicas, self._owner._timeout_ms)
        results = list(self._pipe.execute(raise_on_error=raise_on_error))
        self._owner._check(results.pop())
        return results
