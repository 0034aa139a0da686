"""A real RabbitMQ node for the broker tests: Debian's ``rabbitmq-server``, started as
a throw-away node (its own name, ports, database and logs in a temporary directory, no
plugins) and stopped at the end. Test modules import this file as ``rabbit``.

``FANOUT_TEST_AMQP_URL`` points the tests at a RabbitMQ of your own instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# Debian installs the scripts that run a node as the invoking user here; /usr/sbin's
# wrappers switch to the rabbitmq system user and its fixed directories.
SCRIPT_DIRS = ("/usr/lib/rabbitmq/bin", "/usr/lib/rabbitmq/lib/rabbitmq_server/sbin")
START_TIMEOUT = 90.0
EPMD_PORT = 4369


def find_rabbitmq_server() -> str:
    """The ``rabbitmq-server`` script that runs a node as this user."""
    for directory in SCRIPT_DIRS:
        path = Path(directory) / "rabbitmq-server"
        if path.exists():
            return str(path)
    found = shutil.which("rabbitmq-server")
    if found is None:
        raise RuntimeError("no rabbitmq-server (apt-get install rabbitmq-server)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accepting(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def rabbitmq_node() -> Iterator[str]:
    """Start a RabbitMQ node; yields its ``amqp://`` URL; stops it and removes its files."""
    script = find_rabbitmq_server()
    epmd_was_running = accepting(EPMD_PORT)  # the node starts Erlang's port mapper if not
    base = Path(tempfile.mkdtemp(prefix="rabbitmq-"))
    port, dist_port = free_port(), free_port()
    (base / "enabled_plugins").write_text("[].\n")
    (base / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = {port}\n"
        "loopback_users = none\n"
        # A test node on a shared machine: never refuse publishes for low disk or memory.
        "disk_free_limit.absolute = 1MB\n"
        "vm_memory_high_watermark.relative = 0.9\n")
    env = dict(os.environ)
    env.update({
        "HOME": str(base),  # the Erlang cookie goes here
        "RABBITMQ_NODENAME": f"fanout-test-{port}@localhost",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_LOGS": str(base / "log" / "node.log"),
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_PID_FILE": str(base / "node.pid"),
    })
    log = open(base / "server.out", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen([script], cwd=base, env=env, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not accepting(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (base / "server.out").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"rabbitmq-server did not start:\n{tail}")
            time.sleep(0.1)
        yield f"amqp://guest:guest@127.0.0.1:{port}//"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
        shutil.rmtree(base, ignore_errors=True)
        if not epmd_was_running and shutil.which("epmd"):
            subprocess.run(["epmd", "-kill"], capture_output=True, timeout=10, check=False)
