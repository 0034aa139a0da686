"""A real Redis Sentinel set-up for the Sentinel tests: a primary and a replica
(``EmbeddedRedis`` processes of the session's ``redis-server``) watched by three
Sentinels (the same binary, ``--sentinel``), all on loopback, in a temporary directory.
Test modules import this file as ``sentinel``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from fanout_celery.devtools.embedded import EmbeddedRedis, find_redis_server

SERVICE = "fanout-test"
DOWN_AFTER_MS = 1000


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SentinelSetup:
    primary: EmbeddedRedis
    replica: EmbeddedRedis
    sentinel_ports: list[int]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """kombu's form: every Sentinel, ``;``-separated."""
        return ";".join(f"sentinel://127.0.0.1:{p}" for p in self.sentinel_ports)

    def master_port(self) -> int:
        """Where the Sentinels say the primary is now."""
        client = redis.Redis(port=self.sentinel_ports[0], decode_responses=True)
        try:
            host, port = client.sentinel_get_master_addr_by_name(SERVICE)
        finally:
            client.close()
        return int(port)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the replica is in sync and every Sentinel knows the primary, its replica
        and the other Sentinels."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.replica_in_sync() and \
                        all(self._sees_all(port) for port in self.sentinel_ports):
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Sentinels did not find each other in time")
            time.sleep(0.1)

    def replica_in_sync(self) -> bool:
        """Whether the server that is not the primary replicates from it now."""
        port = self.master_port()
        other = self.replica if self.primary.port == port else self.primary
        client = redis.Redis(port=other.port, decode_responses=True)
        try:
            return bool(client.info("replication").get("master_link_status") == "up")
        finally:
            client.close()

    def _sees_all(self, port: int) -> bool:
        client = redis.Redis(port=port, decode_responses=True)
        try:
            master = client.sentinel_master(SERVICE)
        finally:
            client.close()
        return int(master.get("num-other-sentinels", 0)) == len(self.sentinel_ports) - 1 \
            and int(master.get("num-slaves", 0)) >= 1

    def kill_primary(self) -> EmbeddedRedis:
        """SIGKILL the process that is the primary now; returns it (not restarted)."""
        port = self.master_port()
        victim = self.primary if self.primary.port == port else self.replica
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        return victim


@contextlib.contextmanager
def sentinel_setup() -> Iterator[SentinelSetup]:
    binary = find_redis_server()
    base = Path(tempfile.mkdtemp(prefix="sentinel-"))
    # No delay before a full sync (Redis waits 5 s by default, for more replicas to join).
    fast_sync = ["--repl-diskless-sync-delay", "0"]
    primary = EmbeddedRedis(executable=binary, extra_args=fast_sync).start()
    replica = EmbeddedRedis(executable=binary, extra_args=[
        *fast_sync, "--replicaof", "127.0.0.1", str(primary.port)]).start()
    setup = SentinelSetup(primary, replica, [free_port() for _ in range(3)])
    try:
        for port in setup.sentinel_ports:
            conf = base / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {base}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n")
            log = open(base / f"sentinel-{port}.log", "wb")  # noqa: SIM115
            setup.procs.append(subprocess.Popen(
                [binary, str(conf), "--sentinel"], cwd=base, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True))
        setup.wait_ready()
        yield setup
    finally:
        for proc in setup.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=10)
        for server in (replica, primary):
            with contextlib.suppress(Exception):
                server.stop()
        shutil.rmtree(base, ignore_errors=True)
