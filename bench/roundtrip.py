"""``python -m bench.roundtrip [N]``: what one call to Redis costs on this machine.

The floor under a durable step: N calls of each kind, one after the other in this
process, on an embedded Redis (``FANOUT_REDIS_URL`` for another), printing wall and CPU
time per call:

- a bare ``PING`` written to a socket and its reply read (no client library);
- ``EVALSHA`` of a one-line script through redis-py (``client.evalsha``);
- the same through the store's script call (``store/redis/lua.py``: a pooled connection,
  ``send_command`` and ``read_response``), the path every checkpoint takes;
- the same written to that pooled connection's socket and read with its hiredis reader by
  hand (redis-py's private attributes: a measure of what going around it would save, not
  something the package does).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import hiredis
import redis
from redis._parsers.hiredis import NOT_ENOUGH_DATA

from fanout_celery.devtools.embedded import EmbeddedRedis


def _timed(label: str, call: Callable[[], Any], n: int) -> None:
    for _ in range(min(n, 1000)):  # warm-up
        call()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        call()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"  {label:58} {wall / n * 1e6:6.1f} µs wall {cpu / n * 1e6:6.1f} µs CPU")


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else 20_000
    with ExitStack() as stack:
        url = os.environ.get("FANOUT_REDIS_URL", "").strip() or \
            stack.enter_context(EmbeddedRedis()).url
        client = redis.Redis.from_url(url)
        kwargs = client.connection_pool.connection_kwargs
        sock = socket.create_connection((kwargs.get("host", "localhost"),
                                         int(kwargs.get("port", 6379))))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if kwargs.get("password"):
            sock.sendall(f"AUTH {kwargs['password']}\r\n".encode())
            sock.recv(64)
        print(f"{n:,} calls each, one at a time, to {url.split('@')[-1]}")

        def ping() -> None:
            sock.sendall(b"PING\r\n")
            sock.recv(64)

        sha = client.script_load("return 1")
        pool = client.connection_pool

        def store_path() -> Any:
            conn = pool.get_connection()
            try:
                conn.send_command("EVALSHA", sha, 0)
                return conn.read_response()
            finally:
                pool.release(conn)

        def by_hand() -> Any:
            conn = pool.get_connection()
            try:
                conn._sock.sendall(hiredis.pack_command(("EVALSHA", sha, 0)))
                reader = conn._parser._reader
                reply = reader.gets()
                while reply is NOT_ENOUGH_DATA:
                    reader.feed(conn._sock.recv(65536))
                    reply = reader.gets()
                return reply
            finally:
                pool.release(conn)

        assert store_path() == 1 and by_hand() == 1
        _timed("PING on a bare socket", ping, n)
        _timed("EVALSHA through redis-py (client.evalsha)", lambda: client.evalsha(sha, 0), n)
        _timed("EVALSHA on the store's script call (every checkpoint)", store_path, n)
        _timed("EVALSHA on that connection's socket, read by hand", by_hand, n)
        sock.close()
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
