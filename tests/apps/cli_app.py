"""The Celery app of the ``celery fanout`` entry-point test and the Flower test.

``python -m celery -A tests.apps.cli_app worker|flower|fanout ...`` with
``FANOUT_TEST_REDIS_URL`` (broker and fanout state) in the environment, and for a worker
``FANOUT_TEST_WORKER_TOKEN`` (readiness key, as for ``tests/apps/crash_app.py``, so
``tests/procs.py`` can start it).

One function per way a run's Celery task can end: ``cli-hello`` completes, ``cli-fail``
fails, ``cli-sleeper`` parks in a long sleep, ``cli-waiter`` parks waiting for an event,
``cli-flaky`` parks once for a retry back-off (counted in Redis) and then completes;
``cli-queued`` is routed to a queue no worker consumes.
``FANOUT_TEST_TASK_EVENTS=0`` sets ``fanout_task_events=False``.
"""

from __future__ import annotations

import os
from typing import Any

from fanout_celery import NonRetriableError, RetryPolicy

from .base import worker_app

app, fanout, r = worker_app(
    "cli_app",
    fanout_lease_seconds=3,
    # FANOUT_TEST_TASK_EVENTS=0 turns the custom task events of parked runs off.
    fanout_task_events=os.environ.get("FANOUT_TEST_TASK_EVENTS", "1") == "1",
)

HELLO = "test/cli.hello"
SLEEP = "test/cli.sleep"
FAIL = "test/cli.fail"
WAIT = "test/cli.wait"
FLAKY = "test/cli.flaky"
QUEUED = "test/cli.queued"
# Long enough that a sleeping run stays parked for the whole test.
NAP_SECONDS = 600



@fanout.function("cli-hello", event=HELLO, retries=0)
def hello(ctx: Any) -> dict[str, Any]:
    return {"greeting": ctx.step.run("greet", lambda: f"hello {ctx.event.data.get('who')}")}


@fanout.function("cli-sleeper", event=SLEEP, retries=0)
def sleeper(ctx: Any) -> str:
    """A step, then a durable sleep that outlasts the test: the run stays parked."""
    ctx.step.run("before", lambda: "before")
    ctx.step.sleep("nap", NAP_SECONDS)
    return "woke up"


def _reject() -> None:
    raise NonRetriableError("rejected on purpose")


@fanout.function("cli-fail", event=FAIL, retries=0)
def fail(ctx: Any) -> None:
    ctx.step.run("reject", _reject)


@fanout.function("cli-waiter", event=WAIT, retries=0)
def waiter(ctx: Any) -> Any:
    """Waits for an approval that never comes within the test: the run stays parked."""
    return ctx.step.wait_for_event("approval", event="test/cli.approved", timeout=NAP_SECONDS)


def _fail_first_attempt(run_id: str) -> str:
    if r.incr(f"cli:flaky:{run_id}") == 1:
        raise ConnectionError("transient, on purpose")
    return "second time lucky"


@fanout.function("cli-flaky", event=FLAKY, retries=RetryPolicy(max_retries=2, backoff=0.05,
                                                                 jitter=0))
def flaky(ctx: Any) -> str:
    """Its step fails once: the run parks for a short back-off, then completes."""
    result: str = ctx.step.run("flaky", _fail_first_attempt, ctx.run_id)
    return result


@fanout.function("cli-queued", event=QUEUED, queue="cli-nobody", retries=0)
def queued(ctx: Any) -> None:
    """On a queue no worker consumes: its runs stay queued."""


@fanout.function("cli-nap-child", event="test/cli.nap-child", retries=0)
def nap_child(ctx: Any) -> str:
    """Sleeps a second: its second attempt is published by the pump, not by its parent."""
    ctx.step.sleep("nap", 1)
    return "rested"


@fanout.function("cli-parent", event="test/cli.parent", retries=0)
def parent(ctx: Any) -> Any:
    """Invokes cli-nap-child and returns its output."""
    return ctx.step.invoke("child", function="cli-nap-child", timeout=60)
