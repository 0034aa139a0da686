"""A TCP proxy on loopback whose target can be switched, standing for the stable address
(a virtual IP, a managed endpoint) clients keep while a failover moves the primary.

Connections made before ``switch`` stay with the old target, as TCP connections to the
old host would; new ones reach the new target. ``stall()`` holds every byte (both ways)
until ``resume()``: a Redis that stops answering without closing its connections.
Test modules import this as ``proxy``.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class SwitchableProxy:
    """Forward ``127.0.0.1:<port>`` to ``target`` (a port on 127.0.0.1)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()
        self.held = 0  # chunks that arrived while stalled
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def switch(self, target: int) -> None:
        """New connections go to ``target`` from now on."""
        self.target = target

    def stall(self) -> None:
        """Hold all traffic from now on (connections stay open)."""
        self._flowing.clear()

    def resume(self) -> None:
        """Forward what was held, and all traffic again."""
        self._flowing.set()

    def close(self) -> None:
        self._flowing.set()
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if not self._flowing.is_set():
                    self.held += 1
                    self._flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
