"""A deployment mid-upgrade from 0.1.0 keeps every run.

The 0.1.0 wheel is built from its commit (the repository's history has it) into a venv
of its own; its workers and senders and this release's run ``tests/apps/upgrade_app.py``
against one Redis. Runs that 0.1.0 parked (sleeping, waiting for an event) and queued
(sent while no worker ran) finish on this release's workers; then a fleet of both
releases on one queue, senders of both, each run's parts passing between them, loses and
repeats nothing. Every step body counts its executions in Redis.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile

import pytest
import redis
from procs import REPO_ROOT, wait_for, worker_process
from support import in_ci

import fanout_celery
from fanout_celery import Fanout
from fanout_celery.model.events import derived_id

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

# 0.1.0: the last commit before the compact record layout, the version of setup.cfg then.
RELEASE_0_1_0 = "912fc00c384e58d50baff9965653c7674470aa03"
APP = "tests.apps.upgrade_app"
FLOW = "upgrade-flow"


def _run(cmd: list[str], **kwargs) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


@pytest.fixture(scope="module")
def old_python(tmp_path_factory) -> str:
    """The interpreter of a venv with the 0.1.0 wheel, built from its commit, and the
    newest of what it depends on."""
    have = subprocess.run(["git", "-C", str(REPO_ROOT), "cat-file", "-e",
                           f"{RELEASE_0_1_0}^{{commit}}"], capture_output=True)
    if have.returncode != 0:
        message = f"the repository's history has no commit {RELEASE_0_1_0[:7]} (0.1.0)"
        if in_ci():
            pytest.fail(f"CI is set but {message}: clone with the whole history")
        pytest.skip(message)
    folder = tmp_path_factory.mktemp("release-0.1.0")
    source, wheels, venv = folder / "src", folder / "wheels", folder / "venv"
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", "--format=tar",
                              RELEASE_0_1_0], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(source, filter="data")
    uv = [sys.executable, "-m", "uv"]  # the test extra's uv: a wheel and a venv in seconds
    _run([*uv, "build", "--wheel", "--out-dir", str(wheels), str(source)])
    _run([*uv, "venv", "--python", sys.executable, str(venv)])
    python = str(venv / "bin" / "python")
    [wheel] = wheels.glob("*.whl")
    _run([*uv, "pip", "install", "--python", python, str(wheel)])
    assert wheel.name == "fanout_celery-0.1.0-py3-none-any.whl"
    version = _run([python, "-c", "import fanout_celery; print(fanout_celery.__version__)"],
                   cwd=folder)
    assert version.strip() == "0.1.0"
    return python


def _env(redis_url: str, rolling: bool) -> dict[str, str]:
    env = {**os.environ, "FANOUT_TEST_REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(REPO_ROOT)}
    env.pop("FANOUT_TEST_STATE_URL", None)
    if rolling:
        env["FANOUT_UPGRADE_ROLLING"] = "1"
    return env


def send(python: str, redis_url: str, names_and_keys: list[tuple[str, str]],
         rolling: bool = False) -> list[str]:
    """Send events from a process of ``python``'s release; their ids."""
    script = (
        "import json, sys\n"
        "from fanout_celery import Event\n"
        f"from {APP} import fanout\n"
        "pairs = json.loads(sys.argv[1])\n"
        "print(json.dumps(fanout.send([Event(name=n, data={'key': k, 'n': i})\n"
        "                              for i, (n, k) in enumerate(pairs)])))\n")
    out = _run([python, "-c", script, json.dumps(names_and_keys)], cwd=REPO_ROOT,
               env=_env(redis_url, rolling))
    return json.loads(out.strip().splitlines()[-1])


def started(event_ids: list[str]) -> list[str]:
    return [derived_id(FLOW, event_id) for event_id in event_ids]


def waits_for_go(fanout: Fanout, run_id: str) -> bool:
    run = fanout.get_run(run_id)
    return run is not None and run.status == "waiting" and any(s.id == "go" for s in run.steps)


def counts(client: redis.Redis, run_ids: list[str]) -> dict[str, int]:
    return {f"{run_id}:{step}": int(client.get(f"upgrade:count:{run_id}:{step}") or 0)
            for run_id in run_ids for step in ("first", "last")}


def test_runs_parked_and_queued_by_0_1_0_finish_on_this_releases_workers(
        old_python, redis_url, redis_client, fanout):
    with worker_process(redis_url, app=APP, python=old_python,
                        env=_env(redis_url, False)) as old:
        parked = started(send(old_python, redis_url,
                                      [("upgrade/start", f"p{i}") for i in range(6)]))
        # two sleep (or are about to), the rest wait for their event
        wait_for(lambda: all(waits_for_go(fanout, run_id) for run_id in parked[2:]), 60,
                 "0.1.0's runs to park on their wait")
    assert not old.alive()
    # Sent by 0.1.0 while no worker runs: queued on the broker, created by 0.1.0.
    queued = started(send(old_python, redis_url,
                                  [("upgrade/start", f"q{i}") for i in range(6)]))
    assert {fanout.get_run(run_id).status for run_id in queued} == {"queued"}

    everything = parked + queued
    with worker_process(redis_url, app=APP) as new:
        wait_for(lambda: all(waits_for_go(fanout, run_id) for run_id in everything), 60,
                 "every run to wait for its event on the new worker")
        send(sys.executable, redis_url, [("upgrade/go", k) for k in
                                         [f"p{i}" for i in range(6)] + [f"q{i}" for i in range(6)]])
        done = [fanout.wait_for_run(run_id, timeout=60) for run_id in everything]
        assert new.alive()

    assert [run.status for run in done] == ["completed"] * len(everything)
    assert set(counts(redis_client, everything).values()) == {1}
    # 0.1.0 ran the first steps of the parked runs, this release every last step
    assert {run.output["first"] for run in done[:6]} == {"0.1.0"}
    assert {run.output["last"] for run in done} == {fanout_celery.__version__}


def test_a_fleet_of_0_1_0_and_this_release_on_one_queue_loses_and_repeats_nothing(
        old_python, redis_url, redis_client, fanout):
    keys = [f"m{i}" for i in range(24)]
    with worker_process(redis_url, app=APP, python=old_python, concurrency=2,
                        env=_env(redis_url, False)), \
            worker_process(redis_url, app=APP, concurrency=2, env=_env(redis_url, True)):
        ids = send(old_python, redis_url, [("upgrade/start", k) for k in keys[:12]])
        ids += send(sys.executable, redis_url, [("upgrade/start", k) for k in keys[12:]],
                    rolling=True)
        runs = started(ids)
        wait_for(lambda: all(waits_for_go(fanout, run_id) for run_id in runs), 90,
                 "every run to wait for its event")
        # half the answers from each release
        send(old_python, redis_url, [("upgrade/go", k) for k in keys[::2]])
        send(sys.executable, redis_url, [("upgrade/go", k) for k in keys[1::2]],
             rolling=True)
        done = [fanout.wait_for_run(run_id, timeout=90) for run_id in runs]

    assert [run.status for run in done] == ["completed"] * len(keys)
    assert set(counts(redis_client, runs).values()) == {1}
    # both releases did work: the fleet was mixed, not one side idle
    releases = redis_client.smembers("upgrade:releases:first") | \
        redis_client.smembers("upgrade:releases:last")
    assert releases == {"0.1.0", fanout_celery.__version__}


def test_the_0_1_0_wheel_is_what_its_commit_builds(old_python):
    # the old venv's package comes from its own site-packages, not this checkout
    where = _run([old_python, "-c", "import fanout_celery; print(fanout_celery.__file__)"],
                 cwd="/")
    assert "site-packages" in where
