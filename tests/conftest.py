"""Shared fixtures: a real redis-server for the session, a fresh Celery app bound to a
``Fanout`` per test, and real in-process Celery workers on the threads pool."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
import redis
from celery import Celery

# pytest-celery's plugin replaces this fixture with one that needs Docker: restore
# Celery's own threaded worker fixture.
from celery.contrib.pytest import celery_worker  # noqa: F401
from celery.contrib.testing.worker import start_worker
from support import STATE_MODE, configure_app, in_ci

from fanout_celery import Fanout


def _resolved_versions() -> str:
    """The package and the versions this run resolved to (the version envs differ here)."""
    from importlib.metadata import PackageNotFoundError, version

    import fanout_celery

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "none"

    origin = "an installed wheel" if "site-packages" in fanout_celery.__file__ \
        else "the checkout"
    return f"fanout_celery {fanout_celery.__version__} from {origin}; " + ", ".join(
        f"{name} {installed(name)}" for name in (
            "celery", "kombu", "redis", "billiard", "click", "croniter", "pydantic", "rich",
            "hiredis"))


def pytest_report_header(config: pytest.Config) -> list[str]:
    """What the session tests: the versions it resolved and the server it runs on."""
    from fanout_celery.devtools.binaries import find_redis_server, server_version

    state = [_resolved_versions(),
             "fanout state: on a local 3-master Redis Cluster (FANOUT_TEST_STATE=cluster)"
             if STATE_MODE == "cluster" else "fanout state: on the session's Redis"]
    url = os.environ.get("FANOUT_TEST_REDIS_URL", "").strip()
    if url:
        return [f"redis: {url} (FANOUT_TEST_REDIS_URL)", *state]
    try:
        binary = find_redis_server()
    except RuntimeError as exc:
        return [f"redis-server: none ({exc})", *state]
    return [f"redis-server: {server_version(binary)} ({binary})", *state]


@pytest.fixture(scope="session")
def redis_server(fanout_redis_server: str) -> str:
    """The URL of a real Redis: FANOUT_TEST_REDIS_URL, else an embedded redis-server,
    from the package's own pytest plugin (``fanout_redis_server``).

    Without a redis-server the Redis tests skip locally and fail when CI=true.
    """
    return fanout_redis_server


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """A headless Chromium driven by Selenium (Debian's ``chromium`` and
    ``chromium-driver``). Without them the browser tests skip locally, fail in CI."""
    import shutil

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        message = "no chromium and chromedriver (Debian: apt-get install chromium chromium-driver)"
        if in_ci():
            pytest.fail(f"CI is set but {message}")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """The URL of a real RabbitMQ: FANOUT_TEST_AMQP_URL, else a node of Debian's
    ``rabbitmq-server`` started for the session. Without one the RabbitMQ tests skip
    locally and fail when CI=true."""
    from rabbit import rabbitmq_node

    url = os.environ.get("FANOUT_TEST_AMQP_URL", "").strip()
    if url:
        yield url
        return
    try:
        node = rabbitmq_node()
        started = node.__enter__()
    except RuntimeError as exc:
        if in_ci():
            pytest.fail(f"CI is set but RabbitMQ could not be started: {exc}")
        pytest.skip(f"no RabbitMQ: {exc}")
    try:
        yield started
    finally:
        node.__exit__(None, None, None)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[str]:
    """The ``redis+cluster://`` URL of a real local Redis Cluster (3 masters, each with a
    replica: cluster-enabled processes of the session's redis-server, joined here), or
    FANOUT_TEST_CLUSTER_URL. Without a redis-server it skips locally, fails in CI."""
    from fanout_celery.devtools.cluster import LocalCluster

    url = os.environ.get("FANOUT_TEST_CLUSTER_URL", "").strip()
    if url:
        yield url
        return
    try:
        cluster = LocalCluster(masters=3, replicas=1).start()
    except RuntimeError as exc:
        if in_ci():
            pytest.fail(f"CI is set but no local Redis Cluster could start: {exc}")
        pytest.skip(f"no local Redis Cluster: {exc}")
    try:
        yield cluster.url
    finally:
        cluster.stop()




@pytest.fixture(scope="session", autouse=STATE_MODE == "cluster")
def state_server(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """With FANOUT_TEST_STATE=cluster, the suite keeps fanout's state on a local Redis
    Cluster (the broker stays on the session's Redis): its URL, exported for worker
    subprocesses as FANOUT_TEST_STATE_URL. Otherwise None."""
    if STATE_MODE != "cluster":
        yield None
        return
    from fanout_celery.model import settings as settings_module

    url = request.getfixturevalue("redis_cluster")
    plain = request.getfixturevalue("redis_server")
    os.environ["FANOUT_TEST_STATE_URL"] = url
    os.environ["FANOUT_TEST_SESSION_REDIS"] = plain  # workers on it keep state on the cluster
    # Every Fanout of this process whose state would default to the session's Redis (its
    # broker, without fanout_redis_url) keeps it on the cluster instead, as the workers'
    # apps do (tests/apps/base.py).
    original = settings_module.Settings.from_app.__func__  # type: ignore[attr-defined]

    def from_app(cls: Any, app: Any, **overrides: Any) -> Any:
        if overrides.get("redis_url") is None and not app.conf.get("fanout_redis_url") \
                and str(app.conf.broker_url or "").startswith(plain.rsplit("/", 1)[0]):
            overrides["redis_url"] = url
        return original(cls, app, **overrides)

    settings_module.Settings.from_app = classmethod(from_app)  # type: ignore[method-assign]
    try:
        yield url
    finally:
        settings_module.Settings.from_app = classmethod(original)  # type: ignore[method-assign]
        os.environ.pop("FANOUT_TEST_STATE_URL", None)
        os.environ.pop("FANOUT_TEST_SESSION_REDIS", None)


@pytest.fixture
def redis_url(redis_server: str, state_server: str | None) -> str:
    """A Redis emptied before the test (and the state cluster, with
    FANOUT_TEST_STATE=cluster)."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    if state_server is not None:
        from fanout_celery.store.redis import flush_database

        flush_database(state_server)
    return redis_server


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def state_client(redis_client: redis.Redis, state_server: str | None) -> Iterator[Any]:
    """The client of the Redis holding fanout's state: ``redis_client``, or a cluster
    client with FANOUT_TEST_STATE=cluster (for tests that inspect the state's keys)."""
    if state_server is None:
        yield redis_client
        return
    from fanout_celery.store.redis import connect

    client = connect(state_server, {"decode_responses": True})
    yield client
    client.close()


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    application = Celery("tests", set_as_current=False)
    configure_app(application, redis_url)
    if os.environ.get("FANOUT_TEST_STATE_URL"):
        application.conf.fanout_redis_url = os.environ["FANOUT_TEST_STATE_URL"]
    yield application
    application.close()


@pytest.fixture
def fanout(app: Celery) -> Fanout:
    return Fanout(app)


@pytest.fixture
def worker() -> Callable[..., AbstractContextManager[Any]]:
    """``with worker(app): ...`` runs a real Celery worker (threads pool, 4 threads)."""

    def start(app: Celery, concurrency: int = 4, **kwargs: Any) -> AbstractContextManager[Any]:
        return start_worker(app, pool="threads", concurrency=concurrency,
                            perform_ping_check=False, loglevel="WARNING",
                            shutdown_timeout=10, **kwargs)

    return start
