"""A PostgREST test double for RPC calls only, over a real PostgreSQL.

PostgREST cannot be installed here; for an RPC it does something small and documented,
which this double does the same way (checked against PostgREST 12's source,
shared/notes/supabase.md):

    POST /rest/v1/rpc/<fn>   body {"arg": value, ...}
    -> one transaction:  set local role <role from the JWT>;
                         (read only for a stable or immutable function)
                         select * from fn(arg := value, ...)   (arguments typed by the
                         function's signature, through json_to_record, as PostgREST does)
    -> 200 with JSON: an array for a set-returning function (at most `max_rows` rows,
       cut AFTER the function ran: rows it changed beyond the cap are changed but not
       returned, Supabase's "Max rows"), else the scalar / object; 204 and no body for a
       function returning void.

Strict where PostgREST is: the role comes from `Authorization: Bearer <JWT>` only (HS256,
checked against the JWT secret; `apikey` is the gateway's business, and no Authorization
means the anon role); only the `public` schema is exposed (406 PGRST106 otherwise); a
function name whose signatures more than one candidate fits (two overloads, e.g. after a
`create or replace` that changed parameters) is refused with 300 PGRST203, an unknown
one with 404 PGRST202; while the database cannot be reached every call gets 503 PGRST000
instead of a dropped connection. Errors come back as PostgREST's JSON (`code`,
`message`, `details`, `hint`) with PostgREST's status codes, so the real `supabase` client
raises its real `APIError`. Table routes (`/rest/v1/<table>?...`) are not implemented on
purpose: the dispatcher only calls functions.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import psycopg
from psycopg import sql

DEFAULT_JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"
DEFAULT_MAX_ROWS = 1000  # Supabase's default "Max rows" (Settings > API)
EXPOSED_SCHEMAS = ("public",)


def make_key(role: str, secret: str = DEFAULT_JWT_SECRET) -> str:
    """An API key like Supabase's anon / service_role keys: an HS256 JWT with a role claim."""
    now = int(time.time())
    return jwt.encode({"role": role, "iss": "supabase-test", "iat": now, "exp": now + 10 * 365 * 86400}, secret, "HS256")


@dataclass(frozen=True)
class _Function:
    name: str
    in_args: dict[str, str]  # name -> SQL type, in declaration order
    required: frozenset[str]
    returns_set: bool
    returns_composite: bool
    returns_void: bool
    read_only: bool  # stable or immutable: PostgREST runs it in a read-only transaction
    signature: str  # for PGRST203's message: public.fn(a => integer, b => text)


# SQLSTATE class -> HTTP status, as PostgREST maps them.
def _http_status(sqlstate: str | None, role: str, anon_role: str) -> int:
    if not sqlstate:
        return 500
    if sqlstate == "42501":  # insufficient_privilege
        return 401 if role == anon_role else 403
    if sqlstate == "42883":  # undefined_function
        return 404
    if sqlstate in ("23503", "23505"):
        return 409
    if sqlstate == "57014":  # query_canceled (statement_timeout)
        return 500
    if sqlstate == "25006":  # read_only_sql_transaction
        return 405
    if sqlstate.startswith("08") or sqlstate.startswith("53") or sqlstate.startswith("57"):
        return 503
    if sqlstate == "40001":
        return 409
    return 400


class PostgrestDouble:
    """Serve PostgREST's RPC route on 127.0.0.1 over the database at `dsn`.

    `dsn` must log in as the authenticator role (a login role granted anon,
    authenticated and service_role), like PostgREST's db-uri.
    """

    def __init__(self, dsn: str, jwt_secret: str = DEFAULT_JWT_SECRET, anon_role: str = "anon",
                 host: str = "127.0.0.1", port: int = 0, max_rows: int | None = DEFAULT_MAX_ROWS) -> None:
        self.dsn = dsn
        self.jwt_secret = jwt_secret
        self.anon_role = anon_role
        self.max_rows = max_rows
        self._functions: dict[str, list[_Function]] = {}
        self._functions_lock = threading.Lock()
        self._local = threading.local()
        self._connections: list[psycopg.Connection] = []
        self.calls = 0
        self.calls_by_function: dict[str, int] = {}  # answered calls, per function (benchmarks)
        self._failures: dict[str, int] = {}  # function -> how many calls still to fail with 503
        self._outage_until = 0.0  # every call answers 503 until then (the database "down")
        double = self

        class Handler(_RpcHandler):
            owner = double

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The Supabase project URL to give the client (it appends /rest/v1)."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "PostgrestDouble":
        self._thread = threading.Thread(target=self._server.serve_forever, name="postgrest-double", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        for conn in list(self._connections):
            try:
                conn.close()
            except Exception:
                pass

    def fail_next(self, function: str, count: int) -> None:
        """Answer the next `count` calls of `function` with 503, as an overloaded PostgREST or
        a connection-pool timeout would (the database is not touched)."""
        with self._functions_lock:
            self._failures[function] = count

    def outage(self, seconds: float) -> None:
        """Answer every call 503 for `seconds`, as PostgREST does while its database is down."""
        with self._functions_lock:
            self._outage_until = time.monotonic() + seconds

    def _take_failure(self, function: str) -> bool:
        with self._functions_lock:
            if time.monotonic() < self._outage_until:
                return True
            if self._failures.get(function, 0) > 0:
                self._failures[function] -= 1
                return True
        return False

    def reload_schema(self) -> None:
        """Forget the function signatures (PostgREST's schema cache reload)."""
        with self._functions_lock:
            self._functions.clear()

    # --- database side ---------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        # One connection per server thread (one per keep-alive client connection).
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = psycopg.connect(self.dsn, connect_timeout=5)
            self._local.conn = conn
            self._connections.append(conn)
        return conn

    def _lookup(self, conn: psycopg.Connection, schema: str, name: str) -> list[_Function]:
        key = f"{schema}.{name}"
        with self._functions_lock:
            if key in self._functions:
                return self._functions[key]
        rows = conn.execute(
            """
            select p.proargnames, p.proargmodes,
                   array(select format_type(t, null) from unnest(coalesce(p.proallargtypes, p.proargtypes::oid[])) t),
                   p.pronargs, p.pronargdefaults, p.proretset,
                   (select typtype from pg_type where oid = p.prorettype) = 'c',
                   p.prorettype = 'void'::regtype, p.provolatile in ('s', 'i')
            from pg_proc p
            where p.pronamespace = %s::regnamespace and p.proname = %s
            """,
            (schema, name),
        ).fetchall()
        conn.rollback()
        found = []
        for names, modes, types, nargs, ndefaults, retset, composite, void, read_only in rows:
            names = names or []
            modes = modes or ["i"] * len(types)
            in_args = {n: t for n, m, t in zip(names, modes, types) if m in ("i", "b", "v")}
            ordered = list(in_args)
            required = frozenset(ordered[: nargs - ndefaults])
            signature = f"{schema}.{name}({', '.join(f'{n} => {t}' for n, t in in_args.items())})"
            # returns table (...) is a set of records: PostgREST answers with an array
            found.append(_Function(name, in_args, required, bool(retset), bool(composite), bool(void),
                                   bool(read_only), signature))
        with self._functions_lock:
            self._functions[key] = found
        return found

    def call(self, role: str, claims: dict[str, Any], schema: str, name: str, args: dict[str, Any]) -> tuple[int, Any]:
        try:
            conn = self._connection()
            candidates = self._lookup(conn, schema, name)
        except psycopg.OperationalError as exc:  # the database cannot be reached
            self._local.conn = None
            return 503, {"code": "PGRST000", "message": "Database connection error. Retrying the connection.",
                         "details": str(exc).strip()[:300], "hint": None}
        except psycopg.Error as exc:
            conn.rollback()
            return 400, _pg_error(exc)
        fitting = [f for f in candidates if set(args) <= set(f.in_args) and f.required <= set(args)]
        if len(fitting) > 1:
            return 300, {
                "code": "PGRST203",
                "message": "Could not choose the best candidate function between: "
                           + ", ".join(f.signature for f in fitting),
                "details": None,
                "hint": "Try renaming the parameters or the function itself in the database so function "
                        "overloading can be resolved",
            }
        function = fitting[0] if fitting else None
        if function is None:
            listed = ", ".join(sorted(args))
            return 404, {
                "code": "PGRST202",
                "message": f"Could not find the function {schema}.{name}({listed}) in the schema cache",
                "details": "Searched for the function with the given argument names, but no matches were found.",
                "hint": None,
            }
        record = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(arg), sql.SQL(function.in_args[arg])) for arg in args
        )
        call_args = sql.SQL(", ").join(sql.SQL("{0} := _.{0}").format(sql.Identifier(arg)) for arg in args)
        fn = sql.Identifier(schema, name)
        source = sql.SQL("json_to_record(%s::json) as _({})").format(record) if args else sql.SQL("(select 1) as _")
        if function.returns_set:
            # the cap applies to the answer, after the function ran to the end (a plpgsql
            # set-returning function is materialised before the first row is read)
            cap = f" limit {int(self.max_rows)}" if self.max_rows else ""
            query = sql.SQL("select coalesce(json_agg(c.r), '[]'::json) from "
                            "(select r from {source}, lateral {fn}({args}) r" + cap + ") c")
        elif function.returns_composite:
            query = sql.SQL("select to_json(r) from {source}, lateral {fn}({args}) r")
        else:
            query = sql.SQL("select to_json({fn}({args})) from {source}")
        query = query.format(source=source, fn=fn, args=call_args)
        params = (json.dumps(args),) if args else ()
        try:
            with conn.transaction():
                if function.read_only:
                    conn.execute("set transaction read only")
                conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
                conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
                row = conn.execute(query, params).fetchone()
        except psycopg.Error as exc:
            if conn.closed or conn.broken:  # the connection died under the call: the database went away
                self._local.conn = None
                return 503, {"code": "PGRST000", "message": "Database connection error. Retrying the connection.",
                             "details": str(exc).strip()[:300], "hint": None}
            status = _http_status(exc.sqlstate, role, self.anon_role)
            return status, _pg_error(exc)
        finally:
            if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                try:
                    conn.rollback()
                except psycopg.Error:
                    self._local.conn = None
        with self._functions_lock:
            self.calls += 1
            self.calls_by_function[name] = self.calls_by_function.get(name, 0) + 1
        if function.returns_void:
            return 204, None
        return 200, row[0] if row else None


def _pg_error(exc: psycopg.Error) -> dict[str, Any]:
    diag = exc.diag
    return {
        "code": exc.sqlstate,
        "message": diag.message_primary or str(exc),
        "details": diag.message_detail,
        "hint": diag.message_hint,
    }


class _RpcHandler(BaseHTTPRequestHandler):
    owner: PostgrestDouble
    protocol_version = "HTTP/1.1"
    # One buffered write per response and no Nagle: otherwise headers and body go out as
    # two small segments and a keep-alive client waits ~40 ms for the delayed ACK.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests print on failure
        pass

    def _reply(self, status: int, body: Any) -> None:
        if status == 204:
            self.send_response(204)
            self.end_headers()
            return
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _role(self) -> tuple[str, dict[str, Any]] | None:
        # PostgREST reads Authorization only; `apikey` is for Supabase's gateway in front of it
        auth = self.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not token:
            return self.owner.anon_role, {"role": self.owner.anon_role}
        try:
            claims = jwt.decode(token, self.owner.jwt_secret, algorithms=["HS256"], options={"verify_aud": False})
        except jwt.PyJWTError as exc:
            self._reply(401, {"code": "PGRST301", "message": f"JWT invalid: {exc}", "details": None, "hint": None})
            return None
        return str(claims.get("role") or self.owner.anon_role), claims

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        prefix = "/rest/v1/rpc/"
        path = self.path.split("?", 1)[0]
        if not path.startswith(prefix):
            self._reply(404, {"code": "PGRST125", "message": f"Invalid path specified in request URL: {path}",
                              "details": None, "hint": "this test double serves /rest/v1/rpc/<fn> only"})
            return
        who = self._role()
        if who is None:
            return
        role, claims = who
        try:
            args = json.loads(raw or b"{}")
        except ValueError as exc:
            self._reply(400, {"code": "PGRST102", "message": f"Empty or invalid json: {exc}", "details": None, "hint": None})
            return
        if not isinstance(args, dict):
            self._reply(400, {"code": "PGRST102", "message": "the RPC body must be a JSON object of named arguments",
                              "details": None, "hint": None})
            return
        schema = self.headers.get("Content-Profile") or EXPOSED_SCHEMAS[0]
        if schema not in EXPOSED_SCHEMAS:
            self._reply(406, {"code": "PGRST106", "message": f"The schema must be one of the following: "
                              f"{', '.join(EXPOSED_SCHEMAS)}", "details": None, "hint": None})
            return
        if self.owner._take_failure(path[len(prefix):]):
            self._reply(503, {"code": "PGRST000", "message": "Database client error. Retrying the connection.",
                              "details": "injected by the test", "hint": None})
            return
        status, body = self.owner.call(role, claims, schema, path[len(prefix):], args)
        self._reply(status, body)

    def do_GET(self) -> None:  # noqa: N802
        self._reply(405, {"code": "PGRST117", "message": "this test double serves POST /rest/v1/rpc/<fn> only",
                          "details": None, "hint": None})
