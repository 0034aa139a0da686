"""The testing kit and the pytest plugin never write to the Redis named in an app's own
configuration, whatever order unit and integration tests run in.

"Production" here is a real redis-server the app module names in its configuration; the
test Redis is the plugin's. Each test counts the keys of both.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from fanout_celery import Event, Fanout
from fanout_celery.devtools.embedded import EmbeddedRedis
from fanout_celery.pytest_plugin import configure_test_app
from fanout_celery.testing import run_function


@pytest.fixture(scope="module")
def production() -> Iterator[str]:
    """The URL of a server standing for the Redis an app module names."""
    with EmbeddedRedis() as server:
        yield server.url


def keys_in(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.dbsize())
    finally:
        client.close()


def user_app(production: str) -> tuple[Celery, Fanout, Any]:
    """An app as a user's module would define it: its Redis hard-coded."""
    app = Celery("user-project", broker=production, set_as_current=False)
    app.conf.update(fanout_redis_url=production, result_backend=None)
    fanout = Fanout(app)

    @fanout.function("greet", event="app/greet")
    def greet(ctx: Any) -> str:
        return ctx.step.run("hello", lambda: f"hello {ctx.event.data['name']}")

    return app, fanout, greet


def test_run_function_needs_no_redis_and_writes_nothing(production: str,
                                                        fanout_redis: str) -> None:
    app, _, greet = user_app(production)
    before = keys_in(fanout_redis)
    result = run_function(greet, {"name": "app/greet", "data": {"name": "ada"}})
    assert result.output == "hello ada"
    assert keys_in(production) == 0
    assert keys_in(fanout_redis) == before
    app.close()


def test_an_app_used_by_unit_tests_first_then_configured_for_integration_writes_only_to_the_test_redis(
        production: str, fanout_redis: str) -> None:
    app, fanout, greet = user_app(production)
    run_function(greet, {"name": "app/greet", "data": {"name": "ada"}})
    configure_test_app(app, fanout_redis)

    [event_id] = fanout.send(Event(name="app/greet", data={"name": "bob"}))

    assert keys_in(production) == 0
    assert fanout.get_event(event_id) is not None  # in the test Redis
    app.close()


def test_an_app_already_sending_then_configured_for_tests_moves_to_the_test_redis(
        production: str, fanout_redis: str) -> None:
    # The worst order: the app's Fanout was used (settings resolved, client connected)
    # before the fixture pointed it at the test Redis.
    app, fanout, greet = user_app(production)
    assert fanout.settings.redis_url == production
    configure_test_app(app, fanout_redis)
    run_function(greet, {"name": "app/greet", "data": {"name": "ada"}})

    fanout.send(Event(name="app/greet", data={"name": "bob"}))

    assert fanout.settings.redis_url == fanout_redis
    assert keys_in(production) == 0
    assert keys_in(fanout_redis) > 0
    app.close()


def test_the_plugin_fixtures_bind_their_own_app_to_the_test_redis(
        production: str, fanout_redis: str, fanout_instance: Fanout) -> None:
    @fanout_instance.function("plugin-greet", event="app/plugin-greet")
    def greet(ctx: Any) -> None:
        return None

    run_function(greet, {"name": "app/plugin-greet"})
    fanout_instance.send(Event(name="app/plugin-greet"))

    assert fanout_instance.settings.redis_url == fanout_redis
    assert keys_in(production) == 0
