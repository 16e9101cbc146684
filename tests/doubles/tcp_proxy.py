"""A loopback TCP proxy that can cut connections on demand (to drop a websocket mid-job), or hold
new ones until a test lets them through (`gate`: to keep an upload waiting)."""

from __future__ import annotations

import socket
import threading


class TcpProxy:
    """Forwards 127.0.0.1:<port> to an upstream port; remembers each connection's first bytes."""

    def __init__(self, upstream_port: int, gate: threading.Event | None = None) -> None:
        self.upstream_port = upstream_port
        self.gate = gate  # while set is pending, new connections wait (up to 120 s) before reaching upstream
        self.held = 0  # connections that waited at the gate
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._lock = threading.Lock()
        self._connections: list[tuple[bytes, socket.socket, socket.socket]] = []
        self.dropped = 0
        self.websocket_connects = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if self.gate is not None and not self.gate.is_set():
            with self._lock:
                self.held += 1
            self.gate.wait(120)
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        first = client.recv(65536)
        if not first:
            client.close()
            upstream.close()
            return
        with self._lock:
            self._connections.append((first, client, upstream))
            if first.startswith(b"GET /ws"):
                self.websocket_connects += 1
        upstream.sendall(first)
        threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
        self._pipe(client, upstream)

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            shutdown(source, sink)

    def drop_websockets(self) -> int:
        """Cut every proxied websocket connection; returns how many were cut."""
        with self._lock:
            victims = [c for c in self._connections if c[0].startswith(b"GET /ws")]
            self._connections = [c for c in self._connections if not c[0].startswith(b"GET /ws")]
        for _, client, upstream in victims:
            for sock in (client, upstream):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
                except OSError:
                    pass
        self.dropped += len(victims)
        return len(victims)

    def close(self) -> None:
        self._server.close()


def shutdown(*sockets: socket.socket) -> None:
    """Shut both directions of each socket down, ignoring ones already closed."""
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
