"""Flower shows fanout runs: a real ``celery flower`` process against a real worker
subprocess (``tests/apps/cli_app.py``) that sends task events (``-E``).

Each run's task message carries the run id as its only argument and the event name in its
kwargs; a run that parks (sleep, wait for an event, retry back-off) ends its task with a
custom task event, which Flower shows as the state SLEEPING / WAITING / RETRYING instead of
SUCCESS; a failed run's task is a FAILURE.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from procs import REPO_ROOT, wait_for, worker_process

from fanout_celery import Fanout

pytestmark = pytest.mark.integration

CLI_APP = "tests.apps.cli_app"
# Mirrors tests/apps/cli_app.py.
HELLO, SLEEP, FAIL = "test/cli.hello", "test/cli.sleep", "test/cli.fail"
WAIT, FLAKY, QUEUED = "test/cli.wait", "test/cli.flaky", "test/cli.queued"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def flower_process(redis_url: str) -> Iterator[str]:
    """``celery -A tests.apps.cli_app flower`` on a free port until the block ends;
    yields its base URL. Flower is always killed at the end, with its process group."""
    port = free_port()
    env = {**os.environ, "FANOUT_TEST_REDIS_URL": redis_url,
           # Flower 2 refuses its HTTP API without authentication unless told otherwise.
           "FLOWER_UNAUTHENTICATED_API": "true",
           "PYTHONPATH": os.pathsep.join(
               p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    fd, name = tempfile.mkstemp(prefix="flower-", suffix=".log")
    log_path = Path(name)
    with os.fdopen(fd, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", CLI_APP, "flower", f"--port={port}",
             "--address=127.0.0.1"],
            cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def answers() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"flower exited with {proc.returncode}:\n"
                                     f"{log_path.read_text(errors='replace')[-4000:]}")
            try:
                with urllib.request.urlopen(f"{base}/healthcheck", timeout=1) as response:
                    return response.status == 200
            except (urllib.error.URLError, OSError):
                return False

        wait_for(answers, 30, "flower to answer on its port", interval=0.1)
        yield base
    except BaseException:
        print(f"--- flower log ---\n{log_path.read_text(errors='replace')[-4000:]}",
              file=sys.stderr)
        raise
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: pgid == pid
        proc.wait(timeout=10)
        log_path.unlink(missing_ok=True)


def tasks_by_run(base: str) -> dict[str, list[dict[str, Any]]]:
    """Flower's tasks (``/api/tasks``) grouped by run id (the task's only argument),
    each run's tasks in the order they were received."""
    out: dict[str, list[dict[str, Any]]] = {}
    for task in get_json(f"{base}/api/tasks").values():
        if not (task.get("name") or "").startswith("fanout.") or not task.get("args"):
            continue
        [run_id] = ast.literal_eval(task["args"])
        out.setdefault(run_id, []).append(task)
    for tasks in out.values():
        tasks.sort(key=lambda t: t.get("received") or t.get("timestamp") or 0)
    return out


def flower_sees_events(base: str, fanout: Fanout) -> None:
    """Block until Flower's event receiver is consuming: events sent before it bound its
    queue are lost, so send runs until one of them shows up."""

    def seen() -> bool:
        [event_id] = fanout.send({"name": HELLO, "data": {"who": "probe"}})
        run_id = fanout.runs_for_event(event_id)[0].id
        try:
            wait_for(lambda: run_id in tasks_by_run(base), 2, "the probe run in flower")
        except AssertionError:
            return False
        return True

    wait_for(seen, 30, "flower to receive task events", interval=0)


def start(fanout: Fanout, name: str) -> str:
    [event_id] = fanout.send({"name": name})
    return fanout.runs_for_event(event_id)[0].id


def states_when_settled(base: str, expected: dict[str, list[str]],
                        timeout: float = 20.0) -> dict[str, list[str]]:
    """Poll Flower until each run's tasks are in ``expected`` states; returns what Flower
    shows in the end (the test then compares it, with a useful diff on a timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        tasks = tasks_by_run(base)
        states = {rid: [t["state"] for t in tasks.get(rid, [])] for rid in expected}
        if states == expected or time.monotonic() >= deadline:
            return states
        time.sleep(0.1)


def test_flower_lists_runs_with_their_run_id_event_name_and_parked_state(
        redis_url, app, fanout):
    # The sender's task-sent events show runs no worker has taken yet.
    app.conf.task_send_sent_event = True
    with worker_process(redis_url, app=CLI_APP, events=True), \
            flower_process(redis_url) as base:
        flower_sees_events(base, fanout)
        runs = {name: start(fanout, name)
                for name in (HELLO, SLEEP, WAIT, FLAKY, FAIL, QUEUED)}
        expected = {
            runs[HELLO]: ["SUCCESS"],
            runs[SLEEP]: ["SLEEPING"],
            runs[WAIT]: ["WAITING"],
            # Parked for its back-off, then a new task message resumes it.
            runs[FLAKY]: ["RETRY", "SUCCESS"],
            runs[FAIL]: ["FAILURE"],
            runs[QUEUED]: ["PENDING"],
        }
        states = states_when_settled(base, expected)
        tasks = tasks_by_run(base)
        found = get_json(f"{base}/api/tasks?search={runs[SLEEP]}")
        final = {name: fanout.get_run(run_id).status for name, run_id in runs.items()}

    assert states == expected
    assert final == {HELLO: "completed", SLEEP: "sleeping", WAIT: "waiting",
                     FLAKY: "completed", FAIL: "failed", QUEUED: "queued"}
    for name, run_id in runs.items():
        for task in tasks[run_id]:
            assert task["name"] == {HELLO: "fanout.cli-hello", SLEEP: "fanout.cli-sleeper",
                                    WAIT: "fanout.cli-waiter", FLAKY: "fanout.cli-flaky",
                                    FAIL: "fanout.cli-fail", QUEUED: "fanout.cli-queued"}[name]
            assert ast.literal_eval(task["args"]) == [run_id]
            assert ast.literal_eval(task["kwargs"]) == {"event": name}
    # A parked task sent no task-succeeded event.
    assert tasks[runs[SLEEP]][0]["succeeded"] is None
    # The failed run's task carries the handler's own error.
    assert tasks[runs[FAIL]][0]["exception"] == "NonRetriableError('rejected on purpose')"
    # Flower's search finds a run's task by the run id.
    assert list(found) == [tasks[runs[SLEEP]][0]["uuid"]]


def test_a_finished_runs_attempts_read_final_and_a_retry_is_found_as_retry(
        redis_url, app, fanout):
    with worker_process(redis_url, app=CLI_APP, events=True), \
            flower_process(redis_url) as base:
        flower_sees_events(base, fanout)
        waiter, flaky = start(fanout, WAIT), start(fanout, FLAKY)
        wait_for(lambda: fanout.get_run(waiter).status == "waiting", 20, "the wait")
        fanout.send({"name": "test/cli.approved"})
        # The waiter's first attempt parked (WAITING); once the run completes, its task
        # reads SUCCESS too: no attempt of a finished run reads as still waiting.
        states = states_when_settled(base, {waiter: ["SUCCESS", "SUCCESS"],
                                            flaky: ["RETRY", "SUCCESS"]})
        retried = get_json(f"{base}/api/tasks?state=RETRY")
        tasks = tasks_by_run(base)

    assert states == {waiter: ["SUCCESS", "SUCCESS"], flaky: ["RETRY", "SUCCESS"]}
    # Flower's "Retried" filter (state RETRY) finds the attempt whose step retried.
    assert list(retried) == [tasks[flaky][0]["uuid"]]
    assert "ConnectionError" in tasks[flaky][0]["exception"]


def test_every_attempt_of_a_child_run_links_to_the_parent_attempt_that_started_it(
        redis_url, app, fanout):
    with worker_process(redis_url, app=CLI_APP, events=True), \
            flower_process(redis_url) as base:
        flower_sees_events(base, fanout)
        parent = start(fanout, "test/cli.parent")
        assert fanout.wait_for_run(parent, timeout=30).output == "rested"
        child = fanout.get_run(parent).steps[0].detail["child_run_id"]
        states = states_when_settled(base, {child: ["SUCCESS", "SUCCESS"],
                                            parent: ["SUCCESS", "SUCCESS"]})
        tasks = tasks_by_run(base)

    assert states[child] == ["SUCCESS", "SUCCESS"]
    first_parent_task = tasks[parent][0]
    # The child's second attempt was published by a worker's pump, outside any task;
    # it still links to the parent's attempt that invoked it, as the first one does.
    for attempt in tasks[child]:
        assert attempt["parent_id"] == first_parent_task["uuid"]
        assert attempt["root_id"] == first_parent_task["root_id"]


def test_without_fanout_task_events_a_parked_runs_task_shows_as_plain_success(
        redis_url, fanout, monkeypatch):
    monkeypatch.setenv("FANOUT_TEST_TASK_EVENTS", "0")
    with worker_process(redis_url, app=CLI_APP, events=True), \
            flower_process(redis_url) as base:
        flower_sees_events(base, fanout)
        sleeper = start(fanout, SLEEP)
        wait_for(lambda: fanout.get_run(sleeper).status == "sleeping", 20,
                 "the run to sleep")
        # A barrier: once Flower shows a run started after the sleeper parked, it would
        # have received a task-sleeping event sent when the sleeper parked.
        later = start(fanout, HELLO)
        states = states_when_settled(base, {sleeper: ["SUCCESS"], later: ["SUCCESS"]})
        tasks = tasks_by_run(base)

    # With the setting off the worker's own task-succeeded event goes out unchanged: the
    # parked run's task shows as a plain SUCCESS, as any Celery task would.
    assert states == {sleeper: ["SUCCESS"], later: ["SUCCESS"]}
    # Without task_send_sent_event the sender publishes on its fast path: the messages
    # still carry the run id and the event name.
    for run_id, name in ((sleeper, SLEEP), (later, HELLO)):
        assert ast.literal_eval(tasks[run_id][0]["args"]) == [run_id]
        assert ast.literal_eval(tasks[run_id][0]["kwargs"]) == {"event": name}
