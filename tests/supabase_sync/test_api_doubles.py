"""The PostgREST and Storage doubles are as strict as the real servers (checked against
PostgREST 12's source and a real Storage server, shared/notes/supabase.md), seen through the
real clients: void is 204, an overloaded name is 300 PGRST203, set-returning answers stop at
Max rows after the function ran, the key is read from Authorization only, only `public` is
exposed, a database that is down is 503; Storage errors are HTTP 400 with the real code in
the body."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from postgrest.exceptions import APIError
from supabase import acreate_client

from tests.doubles.postgrest import PostgrestDouble
from tests.doubles.storage_api import StorageApiDouble


def _rpc(db, fn: str, args: dict, key: str | None = None):
    async def call():
        client = await acreate_client(db.url, key or db.service_key)
        return (await client.rpc(fn, args).execute()).data

    return asyncio.run(call())


def _raw(db, fn: str, args: dict, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{db.url}/rest/v1/rpc/{fn}", json=args, headers=headers, timeout=10)


def test_a_void_function_answers_204_with_no_body(db):
    args = {"p_endpoint_id": "ep", "p_decision": {"outcome": "unchanged"}}
    answer = _raw(db, "record_scaler_decision", args, {"Authorization": f"Bearer {db.service_key}"})
    assert answer.status_code == 204 and answer.content == b""
    assert _rpc(db, "record_scaler_decision", args) == []  # what the client makes of it


def test_an_overloaded_function_is_refused_with_300_pgrst203(db):
    # what `create or replace` with a new parameter does: a second function of that name
    db.sql("""
        create function public.claim_tasks(p_dispatcher text, p_endpoint_id text, p_task_types text[], p_limit integer,
                                           p_max_in_flight integer default null, p_lease_s double precision default 60,
                                           p_priority integer default 0)
        returns setof uuid language sql as $$ select null::uuid where false $$;
        grant execute on function public.claim_tasks(text, text, text[], integer, integer, double precision, integer)
            to service_role;
    """)
    db.postgrest.reload_schema()
    args = {"p_dispatcher": "d", "p_endpoint_id": "ep", "p_task_types": ["comfy"], "p_limit": 1}
    with pytest.raises(APIError) as info:
        _rpc(db, "claim_tasks", args)
    assert info.value.code == "PGRST203"
    assert info.value.message.startswith("Could not choose the best candidate function between: public.claim_tasks(")
    answer = _raw(db, "claim_tasks", args, {"Authorization": f"Bearer {db.service_key}"})
    assert answer.status_code == 300
    # naming the new parameter picks one: the other overload no longer fits
    assert _rpc(db, "claim_tasks", {**args, "p_priority": 1}) == []


def test_set_returning_answers_stop_at_max_rows_after_the_function_ran(db):
    db.sql("insert into tasks (task_type) select 'comfy' from generate_series(1, 1200)")
    rows = _rpc(db, "claim_tasks", {"p_dispatcher": "d", "p_endpoint_id": "ep", "p_task_types": ["comfy"],
                                    "p_limit": 1200})
    assert len(rows) == 1000  # Supabase's default Max rows...
    # ...while the function claimed all of them: 200 in_progress that nobody was told about
    assert db.sql("select count(*) n from tasks where status = 'in_progress'")[0]["n"] == 1200


def test_the_key_is_read_from_authorization_only(db):
    args = {"p_limit": 1}
    answer = _raw(db, "take_pending_cancels", args, {"apikey": db.service_key})  # no Authorization: anon
    assert answer.status_code == 401 and answer.json()["code"] == "42501"
    answer = _raw(db, "take_pending_cancels", args, {"apikey": db.anon_key, "Authorization": f"Bearer {db.service_key}"})
    assert answer.status_code == 200 and answer.json() == []
    answer = _raw(db, "take_pending_cancels", args, {"Authorization": "Bearer not-a-jwt"})
    assert answer.status_code == 401 and answer.json()["code"] == "PGRST301"


def test_only_the_public_schema_is_exposed(db):
    answer = _raw(db, "take_pending_cancels", {"p_limit": 1},
                  {"Authorization": f"Bearer {db.service_key}", "Content-Profile": "net"})
    assert answer.status_code == 406 and answer.json()["code"] == "PGRST106"


def test_a_stable_function_runs_in_a_read_only_transaction(db):
    # declared stable, yet it calls something that writes: PostgREST's read-only transaction stops it
    db.sql("""create function public.write_worker() returns integer language sql as
              $$ insert into workers (id) values ('sneaky') returning 1 $$;
              create function public.sneaky() returns integer language sql stable as $$ select write_worker() $$;
              grant execute on function public.sneaky(), public.write_worker() to service_role;""")
    with pytest.raises(APIError) as info:
        _rpc(db, "sneaky", {})
    assert info.value.code == "25006"
    assert db.sql("select count(*) n from workers")[0]["n"] == 0


def test_a_database_that_is_down_answers_503_not_a_dropped_connection(db, pg_cluster):
    down = PostgrestDouble(f"host=127.0.0.1 port=9 user=authenticator dbname={db.name}").start()
    try:
        answer = httpx.post(f"{down.url}/rest/v1/rpc/take_pending_cancels", json={"p_limit": 1},
                            headers={"Authorization": f"Bearer {db.service_key}"}, timeout=10)
        assert answer.status_code == 503 and answer.json()["code"] == "PGRST000"
        down.dsn = db.postgrest.dsn  # the database is back: the next call works
        answer = httpx.post(f"{down.url}/rest/v1/rpc/take_pending_cancels", json={"p_limit": 1},
                            headers={"Authorization": f"Bearer {db.service_key}"}, timeout=10)
        assert answer.status_code == 200
    finally:
        down.stop()
    db.postgrest.outage(30)
    answer = _raw(db, "take_pending_cancels", {"p_limit": 1}, {"Authorization": f"Bearer {db.service_key}"})
    assert answer.status_code == 503


def test_storage_errors_are_http_400_with_the_real_code_in_the_body():
    key = "service-key"
    with StorageApiDouble(key, buckets={"outputs"}) as storage:
        headers = {"apikey": key, "Authorization": f"Bearer {key}"}
        missing = httpx.post(f"{storage.url}/storage/v1/object/sign/outputs/none.png", json={"expiresIn": 60},
                             headers=headers)
        assert missing.status_code == 400
        assert missing.json() == {"statusCode": "404", "error": "not_found", "message": "Object not found"}
        files = {"file": ("a.png", b"png", "image/png")}
        no_bucket = httpx.post(f"{storage.url}/storage/v1/object/nope/a.png", files=files, headers=headers)
        assert no_bucket.status_code == 400 and no_bucket.json()["statusCode"] == "404"
        assert httpx.post(f"{storage.url}/storage/v1/object/outputs/a.png", files=files, headers=headers).status_code == 200
        again = httpx.post(f"{storage.url}/storage/v1/object/outputs/a.png", files=files, headers=headers)
        assert again.status_code == 400 and json.loads(again.content)["statusCode"] == "409"
        bad_key = httpx.post(f"{storage.url}/storage/v1/object/outputs/b.png", files=files, headers={"apikey": "x"})
        assert bad_key.status_code == 400 and bad_key.json()["statusCode"] == "403"
        storage.state.fail_upload_calls = {storage.state.upload_calls + 1}
        broken = httpx.post(f"{storage.url}/storage/v1/object/outputs/c.png", files=files, headers=headers)
        assert broken.status_code == 500 and broken.json()["statusCode"] == "500"  # the one kept as it is
