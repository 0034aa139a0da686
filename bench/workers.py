"""Celery worker subprocesses for the benchmark (``celery -A bench.app worker``)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from .probes import children_of, cpu_seconds, proc_status

ROOT = Path(__file__).resolve().parent.parent


def run_child(module: str, *args: object, timeout: float,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``python -m <module> <args>`` (a sender in a process of its own, so its RSS
    and CPU are its own) and return the JSON object its last line prints."""
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT,
                          env={**(env or os.environ), "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(map(str, args))} failed:\n"
                           f"{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


class WorkerError(RuntimeError):
    """A worker did not start."""


class Worker:
    """One ``celery worker`` process (and its pool children), leader of its own process
    group; consumes the default queue only."""

    def __init__(self, env: dict[str, str], pool: str, concurrency: int) -> None:
        self.token = f"bench{uuid.uuid4().hex[:10]}"
        self.pool = pool
        self.concurrency = concurrency
        self.env = {**env, "BENCH_WORKER_TOKEN": self.token, "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": os.pathsep.join(
                        p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)}
        fd, name = tempfile.mkstemp(prefix=f"{self.token}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, broker: Any, timeout: float = 90.0) -> float:
        """Start the worker; returns once it announced readiness (seconds taken)."""
        from .app import ready_key

        cmd = [sys.executable, "-m", "celery", "-A", "bench.app", "worker",
               f"--pool={self.pool}", f"--concurrency={self.concurrency}", "-Q", "celery",
               "-l", "warning", "-n", f"{self.token}@%h",
               "--without-mingle", "--without-gossip", "--without-heartbeat"]
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        while broker.get(ready_key(self.token)) != str(self.proc.pid):
            if self.proc.poll() is not None:
                raise WorkerError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() - started > timeout:
                raise WorkerError(f"worker not ready after {timeout:g}s:\n{self.tail()}")
            time.sleep(0.05)
        return time.monotonic() - started

    def pids(self) -> list[int]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        return [self.proc.pid, *children_of(self.proc.pid)]

    def cpu(self) -> float:
        """CPU seconds used so far by the worker and its pool children."""
        return sum(cpu_seconds(pid) for pid in self.pids())

    def rss_kb(self) -> tuple[int, int]:
        """(current, peak) resident set size summed over the worker's processes (kB)."""
        pids = self.pids()
        return (sum(proc_status(p, "VmRSS") for p in pids),
                sum(proc_status(p, "VmHWM") for p in pids))

    def tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # pool children that outlived it too
        proc.wait(timeout=10)
        self.proc = None
        self.log_path.unlink(missing_ok=True)
