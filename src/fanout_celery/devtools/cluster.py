"""A throw-away local Redis Cluster: cluster-enabled ``redis-server`` processes on
loopback, joined with ``CLUSTER MEET``, slots split evenly between the masters, each
master with its replicas. For tests, benchmarks and demos, not for production.

Example::

    from fanout_celery.devtools.cluster import LocalCluster

    with LocalCluster(masters=3, replicas=1) as cluster:
        print(cluster.url)  # redis+cluster://127.0.0.1:30001,127.0.0.1:30002,...
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from types import TracebackType
from typing import Any, Self

from .embedded import EmbeddedRedis
from .resp import command, info

HOST = "127.0.0.1"

SLOTS = 16384
# A node's bus port is its port + 10000, which must be a valid port too.
BUS_OFFSET = 10000


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def cluster_port(taken: set[int]) -> int:
    """A free port whose bus port (+10000) is free too."""
    import random

    for _ in range(1000):
        port = random.randrange(20000, 65535 - BUS_OFFSET)
        if port not in taken and _free(port) and _free(port + BUS_OFFSET):
            return port
    raise RuntimeError("local cluster: no free port pair found")


class LocalCluster:
    """``masters`` masters with ``replicas`` replicas each, every one an ``EmbeddedRedis``
    with ``--cluster-enabled yes``."""

    def __init__(self, masters: int = 3, replicas: int = 1, executable: str | None = None,
                 node_timeout_ms: int = 2000, startup_timeout: float = 30.0) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one master")
        self.masters_count = masters
        self.replicas_count = replicas
        self.executable = executable
        self.node_timeout_ms = node_timeout_ms
        self.startup_timeout = startup_timeout
        self.nodes: list[EmbeddedRedis] = []

    @property
    def url(self) -> str:
        """``redis+cluster://host:port,host:port,...``: every node, as start-up nodes."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> Self:
        args = ["--cluster-enabled", "yes", "--cluster-node-timeout",
                str(self.node_timeout_ms), "--cluster-require-full-coverage", "no",
                "--repl-diskless-sync-delay", "0"]
        try:
            taken: set[int] = set()
            for _ in range(self.masters_count * (1 + self.replicas_count)):
                port = cluster_port(taken)
                taken.add(port)
                node = EmbeddedRedis(port, executable=self.executable, extra_args=[
                    *args, "--cluster-config-file", "nodes.conf"])
                self.nodes.append(node.start())
            self._join()
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _cmd(node: EmbeddedRedis, *args: object) -> Any:
        return command(HOST, node.port, *args, timeout=5.0)

    def _join(self) -> None:
        masters = self.nodes[:self.masters_count]
        per = SLOTS // len(masters)
        for i, node in enumerate(masters):
            low, high = i * per, (SLOTS - 1 if i == len(masters) - 1 else (i + 1) * per - 1)
            # ADDSLOTS, not ADDSLOTSRANGE: the latter is Redis 7.0+.
            self._cmd(node, "CLUSTER", "ADDSLOTS", *range(low, high + 1))
        for node in self.nodes[1:]:
            self._cmd(masters[0], "CLUSTER", "MEET", HOST, node.port)
        self._wait(lambda: all(self._known(n) == len(self.nodes) for n in self.nodes),
                   "every node to know every other")
        ids = [self._cmd(m, "CLUSTER", "MYID") for m in masters]
        for i, node in enumerate(self.nodes[self.masters_count:]):
            self._cmd(node, "CLUSTER", "REPLICATE", ids[i % len(masters)])
        self._wait(self.healthy, "the cluster to be ok with its replicas in sync")

    def _known(self, node: EmbeddedRedis) -> int:
        return len([ln for ln in str(self._cmd(node, "CLUSTER", "NODES")).splitlines()
                    if ln.strip()])

    def healthy(self) -> bool:
        """Every slot served, every node seeing ``cluster_state:ok``, replicas in sync."""
        for node in self.nodes:
            if not node.running:
                continue
            try:
                if "cluster_state:ok" not in str(self._cmd(node, "CLUSTER", "INFO")):
                    return False
                role = info(HOST, node.port, "replication")
            except Exception:
                return False
            if role.get("role") == "slave" and role.get("master_link_status") != "up":
                return False
        return True

    def _wait(self, condition, what: str) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + self.startup_timeout
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError(f"local cluster: timed out waiting for {what}")
            time.sleep(0.05)

    def masters(self) -> list[EmbeddedRedis]:
        """The nodes that are masters now (with at least one slot)."""
        out = []
        for node in self.nodes:
            if not node.running:
                continue
            with contextlib.suppress(Exception):
                if info(HOST, node.port, "replication").get("role") == "master":
                    out.append(node)
        return out

    def kill(self, node: EmbeddedRedis) -> None:
        """SIGKILL one node's process (its replica takes over after the node timeout)."""
        if node.pid is not None:
            os.kill(node.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                node._proc.wait(timeout=10)  # type: ignore[union-attr]

    def owner(self, slot: int) -> EmbeddedRedis:
        """The master serving ``slot`` now."""
        for node in self.masters():
            for entry in self._cmd(node, "CLUSTER", "SLOTS"):
                if int(entry[0]) <= slot <= int(entry[1]) and int(entry[2][1]) == node.port:
                    return node
        raise RuntimeError(f"local cluster: no master serves slot {slot}")

    def migrate_slot(self, slot: int, target: EmbeddedRedis, batch: int = 10,
                     pause: float = 0.0) -> int:
        """Reshard ``slot`` to ``target`` as ``redis-cli --cluster reshard`` does: mark it
        importing on the target and migrating on its owner, ``MIGRATE`` its keys
        ``batch`` at a time (``pause`` seconds apart, so that clients meet the slot
        half-moved: ``ASK`` redirections, ``TRYAGAIN`` for scripts whose keys are split),
        then assign it to the target on every master. Returns the keys moved."""
        source = self.owner(slot)
        if source.port == target.port:
            return 0
        source_id = self._cmd(source, "CLUSTER", "MYID")
        target_id = self._cmd(target, "CLUSTER", "MYID")
        self._cmd(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        self._cmd(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        moved = 0
        while True:
            keys = self._cmd(source, "CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            self._cmd(source, "MIGRATE", HOST, target.port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
            if pause:
                time.sleep(pause)
        for node in [target, source, *self.masters()]:
            self._cmd(node, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        return moved

    def wait_healthy(self, timeout: float | None = None) -> None:
        saved = self.startup_timeout
        self.startup_timeout = timeout or saved
        try:
            self._wait(self.healthy, "the cluster to be ok again")
        finally:
            self.startup_timeout = saved

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
