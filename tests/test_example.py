"""The example project: the demo end to end (a real worker subprocess), and the
example's functions on an in-process worker of a fresh app."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from support import wait_until

from fanout_celery import RunNode

REPO_ROOT = Path(__file__).resolve().parent.parent
USERS = 12
INVALID_USER = 7  # the seeded user whose address is "not-an-email"
FLAKY_USERS = [3, 6, 9, 12]  # the mail relay drops their first attempt



def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_demo_emails_everyone_but_the_invalid_address_and_exits_0(redis_url, tmp_path):
    db = tmp_path / "weekly.db"
    env = {**os.environ, "FANOUT_REDIS_URL": redis_url, "EXAMPLE_DB": str(db),
           "PYTHONPATH": os.pathsep.join(
               p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}

    done = subprocess.run([sys.executable, "-m", "example_project"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=90)

    out = done.stdout
    assert done.returncode == 0, f"stdout:\n{out}\nstderr:\n{done.stderr}"
    assert "Run tree" in out
    assert re.search(r"^weekly-activity-load-users  \w{12}  completed", out, re.M)
    assert len(re.findall(r"weekly-activity-send-email  \w{12}  completed", out)) == USERS - 1
    assert len(re.findall(r"weekly-activity-send-email  \w{12}  failed", out)) == 1
    assert "step email-user  [completed, 2 attempts" in out
    # The send window is already open in the demo: every email run passes it at once.
    assert len(re.findall(r"step wait-for-send-window  \[completed, sleep, ", out)) == USERS
    assert "emails in the outbox:       11 (to 11 users, at most once each: yes)" in out
    assert f"failed run:                 user {INVALID_USER} <not-an-email>: " \
           "NonRetriableError at step email-user" in out
    assert "email retries:              4 (transient ConnectionError, users 3, 6, 9, 12)" in out
    assert "load-user-data executions:  12 for 12 users (never re-run by a retry)" in out
    assert f"on_failure handler:         ran; user {INVALID_USER} <not-an-email> marked as " \
           "bouncing" in out
    assert "\nOK: " in out
    # The demo used the given database, and left no worker behind.
    assert db.exists()
    worker_pid = int(re.search(r"worker:    pid (\d+)", out).group(1))
    assert not pid_alive(worker_pid)


def redeclare_example_functions(fanout) -> None:
    """Declare the example's functions, same ids and options, on another ``Fanout``."""
    from example_project import functions

    load = functions.load_cron.definition
    send = functions.send_reminder.definition
    fanout.function(load.function_id, cron=list(load.crons))(load.handler)
    fanout.function(send.function_id, event=list(send.events), retries=send.retry_policy,
                    on_failure=functions.record_bounce)(send.handler)


def test_the_example_functions_retry_only_the_email_step_on_an_in_process_worker(
        app, fanout, worker, tmp_path, monkeypatch):
    from example_project import users

    monkeypatch.setenv(users.ENV_VAR, str(tmp_path / "weekly.db"))
    users.seed()
    redeclare_example_functions(fanout)

    def settled(run_id: str) -> RunNode | None:
        node = fanout.run_tree(run_id)
        runs = node.walk() if node else []
        return node if len(runs) == USERS + 1 and all(r.finished for r in runs) else None

    with worker(app, concurrency=8):
        run_id = fanout.invoke("weekly-activity-load-users")
        parent = fanout.wait_for_run(run_id, timeout=20)
        tree = wait_until(lambda: settled(run_id))
        bounces = wait_until(lambda: users.query("SELECT * FROM bounces"))

    assert parent.status == "completed"
    assert parent.output == {"count": USERS}
    children = tree.walk()[1:]
    by_user = {run.events[0]["data"]["user"]["id"]: run for run in children}
    assert sorted(by_user) == list(range(1, USERS + 1))
    assert [uid for uid, run in by_user.items() if run.status == "failed"] == [INVALID_USER]
    assert by_user[INVALID_USER].error["type"] == "NonRetriableError"
    email_attempts = {uid: {s.id: s.attempts for s in run.steps}["email-user"]
                      for uid, run in by_user.items()}
    assert [uid for uid, n in email_attempts.items() if n == 2] == FLAKY_USERS
    # Each run passed its (already open) send window, a durable sleep_until, first.
    assert all(run.steps[0].id == "wait-for-send-window" and run.steps[0].kind == "sleep"
               and run.steps[0].status == "completed" for run in children)
    # load-user-data ran once per user: a retry of email-user replayed it from its memo.
    assert users.query("SELECT user_id, n FROM step_executions ORDER BY user_id") == [
        {"user_id": uid, "n": 1} for uid in range(1, USERS + 1)]
    assert users.query("SELECT user_id FROM outbox ORDER BY user_id") == [
        {"user_id": uid} for uid in range(1, USERS + 1) if uid != INVALID_USER]
    [bounce] = bounces
    assert bounce["user_id"] == INVALID_USER
    assert bounce["failed_run_id"] == by_user[INVALID_USER].id
    assert users.query("SELECT id FROM users WHERE email_status = 'bouncing'") == [
        {"id": INVALID_USER}]
    # The next week's fan-out skips the bouncing address.
    assert INVALID_USER not in [u["id"] for u in users.list_users()]

