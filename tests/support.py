"""Plain helpers shared by test modules (import them as ``from support import ...``;
a ``conftest`` module cannot be imported reliably once subfolders have their own)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from celery import Celery

# "cluster" with FANOUT_TEST_STATE=cluster: fanout's state on a local Redis Cluster.
STATE_MODE = os.environ.get("FANOUT_TEST_STATE", "").strip().lower()


def in_ci() -> bool:
    """Whether CI=true: there a missing server fails the tests that need it."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def configure_app(app: Celery, url: str) -> None:
    """Test settings: fast pump, short leases (crash tests resume quickly)."""
    app.conf.update(
        broker_url=url,
        result_backend=None,
        fanout_pump_interval=0.05,
        fanout_lease_seconds=3,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_default_queue="celery",
    )


def wait_until(condition: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll ``condition`` until it returns a truthy value; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"condition not met within {timeout}s"
        time.sleep(0.02)


def only_run(fanout: Any, event_id: str, timeout: float = 20.0) -> Any:
    """The one run ``event_id`` started, once it exists."""
    [run] = wait_until(lambda: fanout.runs_for_event(event_id), timeout)
    return run


def publish_run(fanout: Any, run_id: str, task: str, queue: str = "",
                event_name: str = "") -> None:
    """Put a run's task message on the broker again, as a duplicate delivery would."""
    from fanout_celery.model.records import Route, RunMessage

    fanout.engine.broker.publish([RunMessage(run_id, Route(task, queue, event_name))])


def run_ids_of(fanout: Any, function_id: str) -> list[str]:
    """The ids of a function's runs, newest first."""
    return [run.id for run in fanout.list_runs(function=function_id, limit=1000).runs]
