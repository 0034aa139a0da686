"""Measuring instruments: Redis round trips, Redis INFO, processes, the machine."""

from __future__ import annotations

import os
import platform
import re
import resource
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from typing import Any

import redis
from redis.connection import AbstractConnection

# The start of one command in a packed request: *<argc>\r\n$<len>\r\n<NAME>\r\n
_COMMAND_RE = re.compile(rb"\*\d+\r\n\$\d+\r\n([A-Za-z]+)\r\n(?:\$\d+\r\n([^\r\n]{1,40})\r\n)?")


class RoundTrips:
    """Counts the requests one thread of this process sends to one Redis server (a
    pipeline is one request, a command or script call another): every
    ``send_packed_command`` of a connection to ``host:port/db``. Each request is labelled with its commands, and an
    ``EVALSHA`` with the name of its script."""

    def __init__(self, client: redis.Redis[Any], scripts: dict[str, str]) -> None:
        kwargs = client.connection_pool.connection_kwargs
        self._target = (kwargs.get("host"), kwargs.get("port"), kwargs.get("db", 0),
                        kwargs.get("path"))
        self._scripts = scripts  # sha -> name
        self.requests: list[str] = []
        self._lock = threading.Lock()

    def _label(self, packed: Any) -> str:
        data = packed if isinstance(packed, bytes) else b"".join(
            p if isinstance(p, bytes) else bytes(p) for p in packed)
        names = []
        for match in _COMMAND_RE.finditer(data):
            name = match.group(1).decode().upper()
            arg = (match.group(2) or b"").decode(errors="replace")
            if name == "EVALSHA":
                name = self._scripts.get(arg, "EVALSHA ?")
            elif name in ("SCRIPT", "CLIENT", "CONFIG"):
                name = f"{name} {arg.upper()}"
            elif arg and "{" not in arg:  # a shared key (an index), not one run's
                name = f"{name} {arg}"
            names.append(name)
        if len(names) == 1:
            return names[0]
        return "pipeline[" + ", ".join(names) + "]"

    @contextmanager
    def counting(self) -> Iterator[RoundTrips]:
        original = AbstractConnection.send_packed_command
        probe = self
        # Only this thread's requests: not the lease keeper's renewals, for one.
        thread = threading.get_ident()

        def send_packed_command(conn: Any, command: Any, check_health: bool = True) -> None:
            key = (getattr(conn, "host", None), getattr(conn, "port", None),
                   getattr(conn, "db", 0), getattr(conn, "path", None))
            if key == probe._target and threading.get_ident() == thread:
                with probe._lock:
                    probe.requests.append(probe._label(command))
            original(conn, command, check_health)

        AbstractConnection.send_packed_command = send_packed_command  # type: ignore[method-assign]
        try:
            yield self
        finally:
            AbstractConnection.send_packed_command = original  # type: ignore[method-assign]

    def summary(self) -> str:
        counts = Counter(self.requests)
        return ", ".join(f"{n}x {label}" if n > 1 else label for label, n in counts.items())


def script_names(store: Any) -> dict[str, str]:
    """sha -> name of the Redis store's Lua scripts."""
    from fanout_celery.store.redis.lua import SCRIPTS, Lua

    return {Lua(p.stem).sha: "EVALSHA " + p.stem.upper() for p in SCRIPTS.glob("*.lua")
            if p.stem not in ("prelude", "wake")}


class RedisInfo:
    """Snapshots of one Redis server's INFO: memory, CPU, command counts."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, decode_responses=True)

    def snapshot(self) -> dict[str, float]:
        info = self.client.info("all")
        stats = {name: float(v["calls"]) for name, v in info.items()
                 if name.startswith("cmdstat_") and isinstance(v, dict)}
        stats["used_memory"] = float(info["used_memory"])
        stats["cpu"] = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        stats["commands"] = float(info["total_commands_processed"])
        return stats

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    def version(self) -> str:
        info = self.client.info("server")
        if "valkey_version" in info:  # Valkey also reports the Redis version it matches
            return f"valkey {info['valkey_version']}"
        return str(info.get("redis_version", "?"))


def masters_of(url: str) -> list[RedisInfo]:
    """One ``RedisInfo`` per master (one for a plain URL)."""
    if not url.startswith("redis+cluster://"):
        return [RedisInfo(url)]
    first = url.removeprefix("redis+cluster://").split(",")[0]
    client = redis.RedisCluster.from_url(f"redis://{first}")
    try:
        return [RedisInfo(f"redis://{node.host}:{node.port}/0")
                for node in client.get_primaries()]
    finally:
        client.close()


def proc_status(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM); 0 where unavailable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process, from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            found.append(int(entry))
    return found


def peak_rss_kb() -> int:
    """Peak resident set size of this process (kB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine(redis_version: str) -> list[tuple[str, str]]:
    """What the figures were measured on, as (label, value) lines."""
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) // 1024} MiB"
    except OSError:
        mem = "?"
    return [
        ("cpu", f"{os.cpu_count()} x {_cpu_model()}"),
        ("memory", mem),
        ("load average", f"{load} (1, 5, 15 min, at start)"),
        ("os", f"{platform.system()} {platform.release()}"),
        ("python", f"{platform.python_implementation()} {sys.version.split()[0]}"),
        ("packages", ", ".join(f"{d} {_version(d)}" for d in
                               ("fanout_celery", "celery", "kombu", "redis", "billiard"))),
        ("redis-server", redis_version),
    ]
