"""Real Celery workers in subprocesses, for tests that kill workers.

``worker_process(redis_url)`` starts ``python -m celery -A tests.apps.crash_app worker``
in its own process group (so the worker and its pool children can be killed together),
waits until it announces readiness in Redis, and always tears the whole group down at
the end. Test modules import this file as ``procs`` (pytest puts ``tests/`` on sys.path).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import redis

REPO_ROOT = Path(__file__).resolve().parent.parent
CRASH_APP = "tests.apps.crash_app"
CRON_APP = "tests.apps.cron_app"

# The Redis keys tests/apps/crash_app.py writes (keep the two files in step).
IN_S3 = "crash:in-s3"
RELEASE = "crash:release"
STEPS = ("s1", "s2", "s3", "s4", "s5")


def count_key(step: str) -> str:
    return f"crash:count:{step}"


def ready_key(token: str) -> str:
    return f"crash:ready:{token}"


T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float, what: str,
             interval: float = 0.02) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class WorkerProcess:
    """A Celery worker subprocess, leader of its own process group."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, token: str) -> None:
        self.proc = proc
        self.log_path = log_path
        self.token = token

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the worker and every process of its group (pool children too)."""
        self._signal_group(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        """Warm shutdown; SIGKILL the group if it does not exit within ``timeout``."""
        if self.alive():
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        # Also reaps pool children that outlived their parent.
        self._signal_group(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)  # start_new_session: pgid == pid


def worker_command(app: str, pool: str, concurrency: int, token: str,
                   events: bool = False, queues: str | None = None,
                   extra: tuple[str, ...] = (), python: str | None = None) -> list[str]:
    return [
        python or sys.executable, "-m", "celery", "-A", app, "worker",
        f"--pool={pool}", f"--concurrency={concurrency}", "-l", "warning",
        "-n", f"{token}@%h",
        # Mingle alone waits a second for replies at start; none of these are needed.
        "--without-mingle", "--without-gossip", "--without-heartbeat",
        # -E: send task events (for monitors such as Flower).
        *(["-E"] if events else []),
        *([f"--queues={queues}"] if queues else []),
        *extra,
    ]


@contextlib.contextmanager
def worker_process(redis_url: str, *, pool: str = "threads", concurrency: int = 4,
                   app: str = CRASH_APP, ready_timeout: float = 30.0,
                   events: bool = False, queues: str | None = None,
                   extra: tuple[str, ...] = (),
                   broker_url: str | None = None,
                   env: dict[str, str] | None = None,
                   python: str | None = None) -> Iterator[WorkerProcess]:
    """Run a worker of ``app`` against ``redis_url`` until the block ends (with task
    events when ``events``, like ``celery worker -E``; consuming ``queues``, a
    comma-separated list, instead of the default queue when given; ``extra``: more
    command-line options; ``broker_url``: a broker other than that Redis; ``env``: more
    environment variables for the app).

    Ready means the app's ``worker_ready`` handler wrote this worker's pid under
    ``crash:ready:<token>`` (after publishing its subscriptions). The worker's output
    goes to a log file whose tail is printed when the block raises.
    """
    token = f"w{uuid.uuid4().hex[:12]}"
    environment = dict(os.environ, **(env or {}))
    environment.update({
        "FANOUT_TEST_REDIS_URL": redis_url,
        "FANOUT_TEST_WORKER_TOKEN": token,
        "FANOUT_TEST_BROKER_URL": broker_url or "",
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
        "PYTHONUNBUFFERED": "1",
    })
    fd, name = tempfile.mkstemp(prefix=f"celery-{token}-", suffix=".log")
    log_path = Path(name)
    with os.fdopen(fd, "wb") as log:
        proc = subprocess.Popen(
            worker_command(app, pool, concurrency, token, events, queues, extra, python),
            cwd=REPO_ROOT,
            env=environment,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = WorkerProcess(proc, log_path, token)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        def ready() -> bool:
            if not worker.alive():
                raise AssertionError(
                    f"worker exited with {proc.returncode} before it was ready:\n"
                    f"{worker.log_tail()}")
            return bool(client.get(ready_key(token)) == str(proc.pid))

        try:
            wait_for(ready, ready_timeout, f"worker {token} to be ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- worker log ---\n{worker.log_tail()}") from None
        yield worker
    except BaseException:
        print(f"--- log of worker {token} (pid {proc.pid}) ---\n{worker.log_tail()}",
              file=sys.stderr)
        raise
    finally:
        worker.stop()
        client.close()
        log_path.unlink(missing_ok=True)


@contextlib.contextmanager
def beat_process(redis_url: str, scheduler: str | None = None, app: str = CRON_APP,
                 loglevel: str = "info",
                 broker_url: str | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """``celery beat`` for ``app`` (of ``tests/apps``, on ``redis_url`` and ``broker_url``),
    with its own schedule file; always stopped. The process carries ``log_path``, the
    file its output goes to."""
    workdir = Path(tempfile.mkdtemp(prefix="beat-"))
    cmd = [sys.executable, "-m", "celery", "-A", app, "beat", "-l", loglevel,
           "-s", str(workdir / "schedule"), "--pidfile", str(workdir / "beat.pid")]
    if scheduler:
        cmd += ["-S", scheduler]
    env = dict(os.environ, FANOUT_TEST_REDIS_URL=redis_url, PYTHONUNBUFFERED="1",
               FANOUT_TEST_BROKER_URL=broker_url or "",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT),
                                                      os.environ.get("PYTHONPATH", "")) if p))
    log = open(workdir / "beat.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    proc.log_path = workdir / "beat.log"  # type: ignore[attr-defined]
    try:
        yield proc
    except BaseException:
        print((workdir / "beat.log").read_text(errors="replace")[-4000:], file=sys.stderr)
        raise
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
