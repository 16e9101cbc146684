"""The claim's and queue_stats()' work does not grow with the backlog. Counted in buffers
(pages PostgreSQL touched, from EXPLAIN (ANALYZE, BUFFERS)), not in milliseconds, so the test
does not depend on the machine; the timings at 1 M rows are in bench/bench_queue_sql.py."""

from __future__ import annotations

import json

import psycopg

from tests.fixtures.previous_sql import previous_function_sql

TYPES = ["comfy", "vace", "flux"]


def _buffers(conn: psycopg.Connection, query: str, params: tuple = ()) -> int:
    """Pages touched by one run of `query`, in a transaction rolled back afterwards."""
    with conn.transaction(force_rollback=True):
        conn.execute(query, params)  # warm: plans cached, catalog read
    with conn.transaction(force_rollback=True):
        plan = conn.execute(f"explain (analyze, buffers, format json) {query}", params).fetchone()[0][0]["Plan"]
    return plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)


def _fill(db, queued_per_type: int, finished: int = 0) -> None:
    db.sql("truncate tasks")
    db.sql("insert into tasks (task_type, created_at, run_after) "
           "select t, now() - make_interval(secs => i), now() - make_interval(secs => i) "
           "from unnest(%s::text[]) t, generate_series(1, %s) i", (TYPES, queued_per_type))
    if finished:
        db.sql("insert into tasks (task_type, status, completed_at) "
               "select 'comfy', 'complete', now() from generate_series(1, %s)", (finished,))
    db.sql("vacuum analyze tasks")


def test_the_claims_work_does_not_grow_with_the_backlog_for_one_type_or_several(db):
    db.sql(previous_function_sql("claim_tasks"))
    # one row per claim: the work left is finding it (claiming 50 adds the same 50 updates to both)
    claim = "select * from {fn}('d', 'ep', %s, 1, null, 60)"
    cost = {}
    with psycopg.connect(db.dsn) as conn:
        for size in (100, 20_000):
            _fill(db, size)
            for types in (TYPES[:1], TYPES):
                for fn in ("claim_tasks", "claim_tasks_0002"):
                    cost[(fn, len(types), size)] = _buffers(conn, claim.format(fn=fn), (types,))
    for types in (1, 3):
        small, big = cost[("claim_tasks", types, 100)], cost[("claim_tasks", types, 20_000)]
        assert big < small * 1.5, cost  # 200 times the backlog, about the same work (measured: 25 -> 32 pages)
        old_small, old_big = cost[("claim_tasks_0002", types, 100)], cost[("claim_tasks_0002", types, 20_000)]
        assert old_big > old_small * 3, cost  # the previous claim read every eligible row (25 -> 391, 880)
        assert big < old_big / 2, cost


def test_the_claim_is_oldest_first_across_types_and_skips_rows_in_backoff(db):
    rows = db.sql("insert into tasks (task_type, created_at, run_after) values "
                  "('vace', now() - interval '5 min', now() - interval '5 min'),"
                  "('comfy', now() - interval '4 min', now() - interval '4 min'),"
                  "('flux', now() - interval '3 min', now() - interval '3 min'),"
                  "('comfy', now() - interval '9 min', now() + interval '1 hour'),"  # waiting out a backoff
                  "('vace', now() - interval '2 min', now() - interval '2 min') returning task_id")
    ids = [str(r["task_id"]) for r in rows]
    claimed = db.sql("select task_id from claim_tasks('d', 'ep', %s, 3)", (TYPES,))
    assert [str(r["task_id"]) for r in claimed] == [ids[0], ids[1], ids[2]]
    assert [str(r["task_id"]) for r in db.sql("select task_id from claim_tasks('d', 'ep', %s, 5)", (TYPES,))] == [ids[4]]


def test_queue_stats_reads_the_partial_indexes_not_the_finished_rows(db):
    _fill(db, 20, finished=30_000)
    with psycopg.connect(db.dsn) as conn:
        body = conn.execute("select prosrc from pg_proc where proname = 'queue_stats'").fetchone()[0]
        plan = json.dumps(conn.execute(f"explain (format json) {body}").fetchone()[0])
        assert "Seq Scan" not in plan, plan
        stats = _buffers(conn, "select * from queue_stats()")
        table_pages = conn.execute("select relpages from pg_class where relname = 'tasks'").fetchone()[0]
    assert stats < table_pages / 10, (stats, table_pages)
    counts = {(r["task_type"], r["status"]): r["tasks"] for r in db.sql("select * from queue_stats()")}
    assert counts == {(t, "queued"): 20 for t in TYPES}
