"""pg_net's background worker, stood in for: LISTEN for the stub net.http_post's
notifications (tests/fixtures/pgcluster.py PG_NET_STUB_SQL) and send each request.

Like pg_net it sends only for committed transactions, asynchronously, once, and drops
failures (pg_net keeps them in net._http_response and never retries)."""

from __future__ import annotations

import json
import threading

import httpx
import psycopg


class PgNetBridge:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.sent = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-net-bridge", daemon=True)
        self._ready = threading.Event()

    def start(self) -> "PgNetBridge":
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn, httpx.Client(timeout=2.0) as http:
            conn.execute("listen pg_net_http_post")
            self._ready.set()
            while not self._stop.is_set():
                for note in conn.notifies(timeout=0.2):
                    request = json.loads(note.payload)
                    try:
                        http.post(request["url"], json=request["body"], headers=request["headers"],
                                  timeout=request["timeout_milliseconds"] / 1000)
                        self.sent += 1
                    except httpx.HTTPError:
                        self.failed += 1
