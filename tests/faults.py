"""Faults for the shared gate's tests: a TCP proxy in front of redis-server.

``RedisProxy`` forwards 127.0.0.1 connections to a Redis port, one thread
per direction, and can hold, lose or cut the reply to a chosen command (the
command itself reaches Redis and runs), or cut every connection. Together
with ``RedisServer.cli`` (``DEBUG SLEEP``, ``FLUSHALL``, garbage in a key)
and ``RedisServer.stop``/``start`` it makes the faults an operator meets.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class RedisProxy:
    """127.0.0.1:``port`` -> 127.0.0.1:``target``, with faults on demand."""

    def __init__(self, target: int) -> None:
        self.target = target
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._fault: tuple[bytes, str, float] | None = None  # (command, "delay"|"cut", seconds)
        self._refuse_until = 0.0
        self.faults_applied = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    # -- faults ------------------------------------------------------------

    def delay_reply_to(self, command: bytes, seconds: float) -> None:
        """Hold the reply to the next request containing ``command`` for ``seconds``."""
        self._fault = (command, "delay", seconds)

    def cut_reply_to(self, command: bytes, refuse_seconds: float = 0.0) -> None:
        """Close the connection instead of passing on the reply to the next
        ``command``; with ``refuse_seconds``, then close every connection and
        refuse new ones for that long (Redis unreachable right after)."""
        self._fault = (command, "cut", refuse_seconds)

    def cut_all(self) -> None:
        """Close every connection now (clients reconnect through the proxy)."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _close(sock)

    def close(self) -> None:
        self._closed = True
        _close(self._listener)
        self.cut_all()

    # -- plumbing ----------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if time.monotonic() < self._refuse_until:
                _close(client)
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target), timeout=2)
                server.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._sockets += [client, server]
            marked: list[tuple[str, float]] = []  # faults due on this connection's next reply
            threading.Thread(
                target=self._requests, args=(client, server, marked), daemon=True
            ).start()
            threading.Thread(
                target=self._replies, args=(server, client, marked), daemon=True
            ).start()

    def _requests(
        self, source: socket.socket, sink: socket.socket, marked: list[tuple[str, float]]
    ) -> None:
        try:
            while data := source.recv(65536):
                fault = self._fault
                if fault is not None and fault[0] in data.upper():
                    self._fault = None
                    marked.append((fault[1], fault[2]))
                sink.sendall(data)
        except OSError:
            pass
        _close(source)
        _close(sink)

    def _replies(
        self, source: socket.socket, sink: socket.socket, marked: list[tuple[str, float]]
    ) -> None:
        try:
            while data := source.recv(65536):
                if marked:
                    kind, seconds = marked.pop(0)
                    self.faults_applied += 1
                    if kind == "cut":
                        if seconds:
                            self._refuse_until = time.monotonic() + seconds
                            self.cut_all()
                        break
                    time.sleep(seconds)
                sink.sendall(data)
        except OSError:
            pass
        _close(source)
        _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
