"""What a transaction-mode pooler does to a LISTENing client, stood in for on loopback.

PgBouncer in transaction mode and Supabase's Supavisor on port 6543 hand each transaction
to whichever server connection is free: a LISTEN stays behind on a server connection, and
its notifications reach whichever client holds that connection later, not the one that
listened. Seen from the listening client, queries work and notifications never arrive.

This proxy forwards PostgreSQL's wire protocol both ways (frontend/backend protocol 3.0:
after the start-up, every backend message is a type byte and an int32 length that counts
itself) and drops the backend's NotificationResponse messages (type 'A'). Clients must
connect with sslmode=disable and gssencmode=disable, so the stream is plain messages
from the first byte.
"""

from __future__ import annotations

import socket
import struct
import threading

from tests.doubles.tcp_proxy import TcpProxy, shutdown


class NotificationDroppingProxy(TcpProxy):
    """127.0.0.1:<port> -> upstream PostgreSQL, without NotificationResponse messages."""

    def __init__(self, upstream_port: int) -> None:
        self.dropped = 0
        super().__init__(upstream_port)

    def dsn(self, user: str = "postgres", dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={user} dbname={dbname} sslmode=disable gssencmode=disable"

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        threading.Thread(target=self._filter, args=(upstream, client), daemon=True).start()
        self._pipe(client, upstream)

    def _filter(self, source: socket.socket, sink: socket.socket) -> None:
        buffer = b""
        try:
            while chunk := source.recv(65536):
                buffer += chunk
                out = []
                while len(buffer) >= 5:
                    kind = buffer[:1]
                    length = struct.unpack("!I", buffer[1:5])[0]
                    if len(buffer) < 1 + length:
                        break
                    message, buffer = buffer[:1 + length], buffer[1 + length:]
                    if kind == b"A":
                        self.dropped += 1
                    else:
                        out.append(message)
                if out:
                    sink.sendall(b"".join(out))
        except OSError:
            pass
        finally:
            shutdown(source, sink)

