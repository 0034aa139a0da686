"""A minimal RESP client on a plain socket, for probing servers the dev tools start
(the package's Redis client is the store's; these tools must not need it)."""

from __future__ import annotations

import socket
from typing import Any


class RespError(Exception):
    """The server answered with an error reply."""


def _read_line(f: Any) -> bytes:
    line: bytes = f.readline()
    if not line:
        raise ConnectionError("connection closed")
    return line[:-2]


def _read(f: Any) -> Any:
    line = _read_line(f)
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RespError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data: bytes = f.read(n + 2)
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read(f) for _ in range(n)]
    raise ConnectionError(f"unexpected reply {line[:40]!r}")


def command(host: str, port: int, *args: Any, timeout: float = 0.5) -> Any:
    """Send one command and return its reply (strings decoded); ``ConnectionError`` or
    ``OSError`` when nothing listens, ``RespError`` for an error reply."""
    payload = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a), a) for a in (str(x).encode() for x in args))
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(payload)
        with sock.makefile("rb") as f:
            return _read(f)


def info(host: str, port: int, section: str = "server", timeout: float = 0.5) -> dict[str, str]:
    """``INFO <section>`` as a dict."""
    text = command(host, port, "INFO", section, timeout=timeout) or ""
    out = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            out[key] = value
    return out
