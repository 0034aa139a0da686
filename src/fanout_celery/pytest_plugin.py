"""pytest fixtures for integration tests of fanout functions: a real Redis, a Celery app
bound to it, and real Celery workers in the test process.

Installed with the package (the ``pytest11`` entry point ``fanout_celery``); disable it
with ``-p no:fanout_celery``. Every fixture name starts with ``fanout_``:

- ``fanout_redis_server`` (session): the URL of ``$FANOUT_TEST_REDIS_URL``, or of an
  embedded ``redis-server`` (``fanout_celery.embedded``) started for the session. Without
  one the tests that use it skip, or fail when ``CI`` is set.
- ``fanout_redis``: that URL, its database emptied before the test.
- ``fanout_app``: a fresh Celery app whose broker and fanout state are that Redis, with
  a fast timer pump. Override it to test your own app (see ``configure_test_app``).
- ``fanout_instance``: the ``Fanout`` of ``fanout_app`` (created if it has none).
- ``fanout_worker``: ``with fanout_worker(): ...`` runs a worker for ``fanout_app`` (or
  ``fanout_worker(app)``) on the threads pool until the block ends.

Unit tests need none of this: see ``fanout_celery.testing.run_function``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import pytest

# fanout_celery is imported inside the fixtures: a plugin module is imported before any
# test starts, and importing the package then would hide its module-level lines from
# coverage measurement.
if TYPE_CHECKING:
    from celery import Celery

    from .fanout import Fanout

TEST_REDIS_ENV = "FANOUT_TEST_REDIS_URL"


def configure_test_app(app: Celery, redis_url: str) -> None:
    """Point ``app``'s broker and fanout state at ``redis_url``, with a fast timer pump.

    Safe whenever it is called: a ``Fanout`` already bound to ``app`` (one that served
    unit tests, say) reads the new settings at its next use, so nothing reaches the
    Redis named in the app's own configuration.
    """
    from .fanout import fanout_for

    app.conf.update(
        broker_url=redis_url,
        fanout_redis_url=redis_url,
        result_backend=None,
        fanout_pump_interval=0.05,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    fanout = fanout_for(app)
    if fanout is not None:
        fanout.reload_settings()


@pytest.fixture(scope="session")
def fanout_redis_server() -> Iterator[str]:
    """The URL of a real Redis for the session: ``$FANOUT_TEST_REDIS_URL``, else an
    embedded ``redis-server``."""
    url = os.environ.get(TEST_REDIS_ENV, "").strip()
    if url:
        yield url
        return
    from .devtools.embedded import EmbeddedRedis, find_redis_server

    try:
        find_redis_server()
    except RuntimeError as exc:
        if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
            pytest.fail(f"CI is set but no redis-server is available: {exc}")
        pytest.skip(f"no redis-server available: {exc}")
    server = EmbeddedRedis().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def fanout_redis(fanout_redis_server: str) -> str:
    """The session's Redis URL, its database emptied (FLUSHDB) before the test."""
    from .store.redis import flush_database

    flush_database(fanout_redis_server)
    return fanout_redis_server


@pytest.fixture
def fanout_app(fanout_redis: str) -> Iterator[Celery]:
    """A fresh Celery app on the test Redis (broker and fanout state)."""
    from celery import Celery

    app = Celery("fanout-tests", set_as_current=False)
    configure_test_app(app, fanout_redis)
    yield app
    app.close()


@pytest.fixture
def fanout_instance(fanout_app: Celery) -> Fanout:
    """The ``Fanout`` of ``fanout_app``: declare the functions under test on it."""
    from .fanout import Fanout, fanout_for

    return fanout_for(fanout_app) or Fanout(fanout_app)


@pytest.fixture
def fanout_worker(fanout_app: Celery) -> Callable[..., AbstractContextManager[Any]]:
    """``with fanout_worker(app=None, concurrency=4): ...`` runs a real Celery worker
    (threads pool, timer pump included) in this process while the block runs."""
    from celery.contrib.testing.worker import start_worker

    def start(app: Celery | None = None, concurrency: int = 4,
              **options: Any) -> AbstractContextManager[Any]:
        settings = {"pool": "threads", "concurrency": concurrency, "loglevel": "WARNING",
                    "perform_ping_check": False, "shutdown_timeout": 10, **options}
        worker: AbstractContextManager[Any] = start_worker(
            app if app is not None else fanout_app, **settings)
        return worker

    return start
