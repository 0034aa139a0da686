"""The weekly-activity demo, end to end: ``python -m example_project``.

1. Redis: ``$FANOUT_REDIS_URL``, or an embedded ``redis-server`` when it is unset.
2. A fresh SQLite user store (``$EXAMPLE_DB``, see ``users.py``) with 12 users, one of
   them with an invalid address.
3. A real Celery worker in a subprocess (threads pool).
4. The cron function is started now with ``fanout.invoke`` instead of waiting for Friday;
   it fans out one event per user, and each event starts an email run.
5. When every run is final, the run tree and a summary are printed, and the outcome is
   checked: exit code 0 when it is the expected one, 1 otherwise.

The worker and the embedded Redis are stopped on every exit path (error, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from fanout_celery import Run, RunNode, RunTimeoutError
from fanout_celery.embedded import redis_url_or_embedded

from . import mailer, users

if TYPE_CHECKING:
    from celery import Celery

    from fanout_celery import Fanout

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STOP_TIMEOUT = 10.0

T = TypeVar("T")


class DemoError(Exception):
    """The demo could not run (a process did not start, a deadline passed)."""


def poll(what: str, check: Callable[[], T | None], deadline: float,
         interval: float = 0.05) -> T:
    """Call ``check`` until it returns something other than None; ``DemoError`` once
    ``deadline`` (a ``time.monotonic()`` value) has passed."""
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            raise DemoError(f"timed out waiting for {what}")
        time.sleep(interval)


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "<no log>"
    return "\n".join(text.splitlines()[-lines:]) or "<empty log>"


class WorkerProcess:
    """``celery -A example_project.app worker`` as a child process, stopped on exit."""

    def __init__(self, redis_url: str, db: Path, log_path: Path) -> None:
        self.name = f"weekly-demo-{os.getpid()}@localhost"
        self.log_path = log_path
        pythonpath = os.pathsep.join(
            p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        self.env = {**os.environ, "FANOUT_REDIS_URL": redis_url, "EXAMPLE_DB": str(db),
                    "PYTHONPATH": pythonpath}
        self.cmd = [
            sys.executable, "-m", "celery", "-A", "example_project.app", "worker",
            "--pool=threads", "--concurrency=8", "-l", "warning", "--hostname", self.name,
            # Alone on this broker: skip the start-up sync with other workers.
            "--without-mingle", "--without-gossip",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            # Own session: a Ctrl-C in the terminal reaches only the demo, which then
            # shuts the worker down in order (warm shutdown first).
            self.proc = subprocess.Popen(
                self.cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, app: Celery, timeout: float) -> float:
        """Block until the worker answers a remote-control ping; returns seconds waited."""
        started = time.monotonic()

        def answered() -> bool | None:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise DemoError(f"the worker exited during start-up (exit code {code}); "
                                f"its log ({self.log_path}):\n{log_tail(self.log_path)}")
            replies = app.control.ping(destination=[self.name], timeout=0.5) or []
            return True if any(self.name in reply for reply in replies) else None

        try:
            poll("the worker to answer a ping", answered, started + timeout, interval=0.1)
        except DemoError as exc:
            if "timed out" in str(exc):
                raise DemoError(f"{exc} after {timeout:g}s; its log ({self.log_path}):\n"
                                f"{log_tail(self.log_path)}") from None
            raise
        return time.monotonic() - started

    def stop(self) -> None:
        """SIGTERM (warm shutdown), then SIGKILL if it has not exited in time."""
        proc = self.proc
        if proc is None:
            return
        # ``self.proc`` is cleared only once the worker is reaped: a stop cut short (by
        # Ctrl-C) is completed by the next call, from the demo's clean-up.
        try:
            if proc.poll() is None:
                # The worker leads its own process group: signal the group so nothing
                # it may have spawned outlives it.
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        except ProcessLookupError:
            proc.wait()
        self.proc = None


def wait_for_tree(fanout: Fanout, run_id: str, deadline: float) -> RunNode:
    """The run tree once the parent and every run it started are final."""
    parent = fanout.wait_for_run(run_id, timeout=max(deadline - time.monotonic(), 0.1))
    expected = (parent.output or {}).get("count", 0) if parent.status == "completed" else 0

    def settled() -> RunNode | None:
        node = fanout.run_tree(run_id)
        if node is None:
            return None
        runs = node.walk()
        if len(runs) - 1 >= expected and all(run.finished for run in runs):
            return node
        return None

    return poll(f"the {expected} child runs to finish", settled, deadline)


def user_id_of(run: Run) -> int:
    """The id of the user a ``weekly-activity-send-email`` run was for."""
    return int(run.events[0]["data"]["user"]["id"]) if run.events else 0


def step_attempts(run: Run, step_id: str) -> int:
    return next((s.attempts for s in run.steps if s.id == step_id), 0)


@dataclass
class Outcome:
    """What the runs did, from the run tree and the example's database."""

    parent: Run
    children: list[Run]
    users: list[dict[str, Any]]
    invalid_ids: list[int]  # users whose address the mail server rejects
    sent: dict[int, int]  # user id -> emails in the outbox
    retried: dict[int, int]  # user id -> retries of its email-user step
    executions: dict[int, int]  # user id -> executions of its load-user-data body
    bounces: list[dict[str, Any]]  # rows the on_failure handler wrote
    handler_runs: list[Run]  # the on_failure runs
    errors: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[Run]:
        return [run for run in self.children if run.status != "completed"]

    @property
    def valid_ids(self) -> list[int]:
        return [u["id"] for u in self.users if u["id"] not in self.invalid_ids]


def collect(fanout: Fanout, tree: RunNode, deadline: float) -> Outcome:
    all_users = users.query("SELECT id, name, email FROM users ORDER BY id")
    invalid_ids = [u["id"] for u in all_users if not mailer.ADDRESS_RE.match(u["email"])]
    errors: list[str] = []

    # The on_failure handler runs as its own function (weekly-activity-send-email-failure)
    # and stores its run id with the bounce it records: that is how the demo finds it.
    def bounced() -> list[dict[str, Any]] | None:
        rows = users.query("SELECT * FROM bounces ORDER BY user_id")
        return rows if len(rows) >= len(invalid_ids) else None

    try:
        bounces = poll("the on_failure handler", bounced, deadline)
    except DemoError as exc:
        errors.append(str(exc))
        bounces = users.query("SELECT * FROM bounces ORDER BY user_id")
    handler_runs = []
    for row in bounces:
        try:
            handler_runs.append(fanout.wait_for_run(
                row["handler_run_id"], timeout=max(deadline - time.monotonic(), 0.1)))
        except RunTimeoutError as exc:
            errors.append(f"on_failure run: {exc}")

    children = tree.walk()[1:]
    return Outcome(
        parent=tree.run, children=children, users=all_users, invalid_ids=invalid_ids,
        sent={r["user_id"]: r["n"] for r in users.query(
            "SELECT user_id, COUNT(*) AS n FROM outbox GROUP BY user_id")},
        retried={user_id_of(run): step_attempts(run, "email-user") - 1 for run in children
                 if step_attempts(run, "email-user") > 1},
        executions={r["user_id"]: r["n"] for r in users.query(
            "SELECT user_id, n FROM step_executions WHERE step = 'load-user-data'")},
        bounces=bounces, handler_runs=handler_runs, errors=errors,
    )


def print_report(tree: RunNode, out: Outcome) -> None:
    print("\nRun tree")
    print(tree.format())
    for run in out.handler_runs:
        print(f"\non_failure handler (started by {(run.parent_run_id or '?')[:12]})")
        print(RunNode(run).format())

    once = max(out.sent.values(), default=1) == 1
    print("\nSummary")
    print(f"  users:                      {len(out.users)}")
    print(f"  child runs:                 {len(out.children)} "
          f"({len(out.children) - len(out.failed)} completed, {len(out.failed)} failed)")
    print(f"  emails in the outbox:       {sum(out.sent.values())} "
          f"(to {len(out.sent)} users, at most once each: {'yes' if once else 'NO'})")
    for run in out.failed:
        error = run.error or {}
        email = run.events[0]["data"]["user"]["email"] if run.events else "?"
        print(f"  failed run:                 user {user_id_of(run)} <{email}>: "
              f"{error.get('type')} at step {error.get('step')}: {error.get('message')}")
    print(f"  email retries:              {sum(out.retried.values())} "
          f"(transient ConnectionError, users {', '.join(map(str, sorted(out.retried))) or '-'})")
    never = set(out.executions.values()) <= {1}
    print(f"  load-user-data executions:  {sum(out.executions.values())} for {len(out.users)} "
          f"users ({'never re-run by a retry' if never else 'RE-RUN'})")
    for row in out.bounces:
        print(f"  on_failure handler:         ran; user {row['user_id']} <{row['email']}> "
              f"marked as bouncing ({row['reason']})")


def check(out: Outcome) -> list[str]:
    """How the outcome differs from the expected one (empty when it does not)."""
    problems = list(out.errors)
    n = len(out.users)
    if out.parent.status != "completed" or out.parent.output != {"count": n}:
        problems.append(f"parent run {out.parent.status} with output {out.parent.output!r}, "
                        f"expected completed with {{'count': {n}}}")
    if len(out.children) != n:
        problems.append(f"{len(out.children)} child runs for {n} users")
    if out.sent != {uid: 1 for uid in out.valid_ids}:
        problems.append(f"emails per user are {out.sent}, expected one for each of "
                        f"{out.valid_ids}")
    failed_ids = sorted(user_id_of(run) for run in out.failed)
    if failed_ids != out.invalid_ids:
        problems.append(f"failed runs are for users {failed_ids}, expected only "
                        f"{out.invalid_ids}")
    problems += [f"run {run.id[:12]} failed with {run.error!r}, expected a NonRetriableError"
                 for run in out.failed if (run.error or {}).get("type") != "NonRetriableError"]
    flaky = [uid for uid in out.valid_ids if mailer.is_flaky_for(uid)]
    if out.retried != {uid: 1 for uid in flaky}:
        problems.append(f"email retries per user are {out.retried}, expected one for each of "
                        f"{flaky}")
    if out.executions != {u["id"]: 1 for u in out.users}:
        problems.append(f"load-user-data executions per user are {out.executions}, expected "
                        "exactly one each")
    bounced = sorted(row["user_id"] for row in out.bounces)
    if bounced != out.invalid_ids:
        problems.append(f"on_failure recorded bounces for users {bounced}, expected "
                        f"{out.invalid_ids}")
    problems += [f"on_failure run {run.id[:12]} is {run.status}" for run in out.handler_runs
                 if run.status != "completed"]
    return problems


def demo(timeout: float, stack: ExitStack) -> int:
    started = time.monotonic()
    deadline = started + timeout
    print("fanout_celery example: weekly activity emails")
    try:
        url, server = redis_url_or_embedded()
    except RuntimeError as exc:
        raise DemoError(f"no Redis: {exc}") from None
    if server is not None:
        stack.callback(server.stop)
    # Read by example_project.app on import, below.
    os.environ["FANOUT_REDIS_URL"] = url
    print(f"  redis:     {url}" + (" (embedded redis-server)" if server else ""))

    db = users.seed()
    os.environ[users.ENV_VAR] = str(db)
    print(f"  database:  {db} ({len(users.list_users())} users)")

    from .app import app, fanout
    from .functions import load_cron

    worker = WorkerProcess(url, db, db.with_name(db.name + ".worker.log"))
    stack.callback(worker.stop)  # runs before server.stop: callbacks unwind in reverse
    worker.start()
    assert worker.proc is not None
    ready = worker.wait_ready(app, timeout=max(deadline - time.monotonic(), 1.0))
    print(f"  worker:    pid {worker.proc.pid}, threads pool x8, ready in {ready:.1f}s")

    run_id = fanout.invoke(load_cron)
    print(f"\nStarted weekly-activity-load-users now (its cron, '0 12 * * 5', would start it "
          f"on Friday at noon): run {run_id[:12]}")
    try:
        tree = wait_for_tree(fanout, run_id, deadline)
    except Exception as exc:
        node = fanout.run_tree(run_id)
        partial = f"\nRun tree so far:\n{node.format()}" if node else ""
        raise DemoError(f"{exc}{partial}\nworker log ({worker.log_path}):\n"
                        f"{log_tail(worker.log_path)}") from None
    print(f"Every run is final after {time.monotonic() - started:.1f}s")

    outcome = collect(fanout, tree, deadline)
    print_report(tree, outcome)
    problems = check(outcome)
    worker.stop()
    print(f"\nThe outbox is in {db} (table outbox).")
    if problems:
        print("\nFAILED: the outcome is not the expected one:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        print(f"worker log: {worker.log_path}", file=sys.stderr)
        return 1
    print(f"\nOK: every user but the one with an invalid address was emailed exactly once; "
          f"that user's run failed alone and on_failure marked the address as bouncing "
          f"({time.monotonic() - started:.1f}s).")
    return 0


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like ``KeyboardInterrupt`` is for Ctrl-C."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m example_project",
        description="Run the weekly-activity example end to end against a real worker.")
    parser.add_argument("--timeout", type=float, default=25.0,
                        help="seconds the whole demo may take (default: %(default)s)")
    args = parser.parse_args(argv)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, _on_sigterm)
    stack = ExitStack()
    try:
        return demo(args.timeout, stack)
    except DemoError as exc:
        print(f"\nFAILED: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Terminated) as exc:
        how = "interrupted" if isinstance(exc, KeyboardInterrupt) else "terminated"
        print(f"\n{how}; stopping the worker", file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else 143
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave the worker or
        # Redis behind; the clean-up itself is bounded (SIGKILL after a timeout).
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        stack.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
