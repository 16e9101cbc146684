"""The worker's calls to Supabase SQL functions (RPCs), through the supabase client.

One client per caller, made on first use (importing supabase costs about half a second,
and a worker without Supabase credentials never pays it). Each caller keeps its own:
the heartbeat calls from its thread, the start fence from the job's.
"""

from __future__ import annotations

import threading
from typing import Any

CALL_TIMEOUT_S = 5.0


class SupabaseRpc:
    """POST /rest/v1/rpc/<fn> with the service-role key; raises what the client raises."""

    def __init__(self, supabase_url: str | None, service_role_key: str | None, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.enabled = bool(supabase_url and service_role_key)
        self._url, self._key, self._timeout_s = supabase_url, service_role_key, timeout_s
        self._client: Any = None
        self._lock = threading.Lock()

    def call(self, function: str, params: dict[str, Any]) -> Any:
        """The function's answer (rows for a set-returning function)."""
        return self._connected().rpc(function, params).execute().data

    def _connected(self) -> Any:
        with self._lock:
            if self._client is None:
                import httpx
                from supabase import ClientOptions, create_client

                http = httpx.Client(timeout=self._timeout_s)
                self._client = create_client(self._url, self._key, options=ClientOptions(httpx_client=http))
            return self._client
