"""Pipelines in SQL (0080_pipelines.sql): depends_on, the 'waiting' status, release and
failure of dependants, what is refused at insert, and dependency_outputs."""

from __future__ import annotations

import json
import threading
import uuid

import psycopg
import pytest

from tests.supabase_sync.test_schema import SEED_TASKS_QUERY, claim


def complete(db, task_id, output_url=None, result=None):
    """Claim-free completion, as an operator (or any writer) would set it."""
    db.sql("update tasks set status = 'complete', output_url = %s, result = %s, completed_at = now() where task_id = %s",
           (output_url, json.dumps(result) if result is not None else None, task_id))


def fail(db, task_id, reason):
    db.sql("update tasks set status = 'failed', error_message = %s where task_id = %s", (reason, task_id))


def status(db, task_id):
    return db.task(task_id)["status"]


def test_a_task_with_unfinished_dependencies_waits_even_when_inserted_as_queued(db):
    first = db.insert_task()
    # the seed's INSERT names status 'queued'; a dependency makes it wait anyway
    dependant = str(db.sql("insert into tasks (task_type, params, status, depends_on) "
                           "values ('comfy', '{}', 'queued', array[%s]::uuid[]) returning task_id", (first,))[0]["task_id"])
    assert status(db, dependant) == "waiting"
    assert [str(r["task_id"]) for r in claim(db)] == [first]  # the claim never sees waiting tasks


def test_without_dependencies_a_task_is_queued_even_when_inserted_as_waiting(db):
    assert status(db, db.insert_task(status="waiting")) == "queued"
    assert db.task(db.insert_task())["depends_on"] == []


def test_a_dependant_is_queued_once_every_dependency_is_complete(db):
    a, b = db.insert_task(), db.insert_task()
    d = db.insert_task(depends_on=[a, b])
    complete(db, a)
    assert status(db, d) == "waiting"
    complete(db, b)
    row = db.task(d)
    assert row["status"] == "queued" and row["run_after"] <= db.sql("select now() n")[0]["n"]
    assert [str(r["task_id"]) for r in claim(db)] == [d]


def test_a_task_whose_dependencies_are_already_complete_is_queued_at_once(db):
    a = db.insert_task()
    complete(db, a)
    assert status(db, db.insert_task(depends_on=[a])) == "queued"


def test_a_retried_dependency_neither_releases_nor_fails_its_dependants(db):
    a = db.insert_task(max_attempts=2)
    d = db.insert_task(depends_on=[a])
    [c] = claim(db)
    assert db.sql("select fail_task(%s, %s, null, 'flaky', true, 0, 0) o", (a, c["lease_token"]))[0]["o"] == "queued"
    assert status(db, d) == "waiting"


def test_a_failure_fails_every_task_downstream_with_the_reason(db):
    step1 = db.insert_task()
    step2 = db.insert_task(depends_on=[step1])
    step3 = db.insert_task(depends_on=[step2])
    sibling = db.insert_task(depends_on=[step1])
    unrelated = db.insert_task()
    [c] = [r for r in claim(db) if str(r["task_id"]) == step1]
    assert db.sql("select fail_task(%s, %s, null, 'CUDA out of memory', false) o", (step1, c["lease_token"]))[0]["o"] == "failed"
    assert db.task(step2)["error_message"] == f"dependency {step1} failed: CUDA out of memory"
    assert db.task(step3)["error_message"] == f"dependency {step2} failed: dependency {step1} failed: CUDA out of memory"
    assert db.task(sibling)["status"] == "failed" and db.task(step3)["completed_at"] is not None
    assert status(db, unrelated) in ("queued", "in_progress")


def test_a_cancelled_dependency_fails_its_dependants_and_waiting_tasks_can_be_cancelled(db):
    a = db.insert_task()
    d = db.insert_task(depends_on=[a])
    e = db.insert_task(depends_on=[d])
    assert db.sql("select cancel_task(%s, 'not needed') o", (a,))[0]["o"] == "cancelled"
    assert db.task(d)["error_message"] == f"dependency {a} was cancelled: not needed"
    assert db.task(e)["status"] == "failed"
    b = db.insert_task()
    w = db.insert_task(depends_on=[b])
    assert db.sql("select cancel_task(%s, 'changed my mind') o", (w,))[0]["o"] == "cancelled"
    assert status(db, w) == "cancelled" and status(db, b) == "queued"


def test_a_dependant_of_an_already_failed_task_is_inserted_failed(db):
    a = db.insert_task()
    fail(db, a, "bad input")
    row = db.task(db.insert_task(depends_on=[a]))
    assert row["status"] == "failed" and row["error_message"] == f"dependency {a} failed: bad input"
    assert row["completed_at"] is not None


def test_deleting_a_dependency_fails_what_waits_for_it(db):
    a = db.insert_task()
    d = db.insert_task(depends_on=[a])
    db.sql("delete from tasks where task_id = %s", (a,))
    assert db.task(d)["error_message"] == f"dependency {a} was deleted: it was queued when it was deleted"


def test_dependencies_on_unknown_tasks_are_refused(db):
    known = db.insert_task()
    ghost = str(uuid.uuid4())
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match=f"depends on tasks that do not exist: {ghost}"):
        db.insert_task(depends_on=[known, ghost])
    assert db.sql("select count(*) n from tasks")[0]["n"] == 1


def test_a_task_cannot_depend_on_itself(db):
    own = str(uuid.uuid4())
    with pytest.raises(psycopg.errors.CheckViolation, match="cannot depend on itself"):
        db.insert_task(task_id=own, depends_on=[own])


def test_a_cycle_made_inside_one_deferred_transaction_is_refused_at_commit(db):
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    with psycopg.connect(db.dsn) as conn:
        conn.execute("set constraints tasks_dependencies_check deferred")
        conn.execute("insert into tasks (task_id, task_type, depends_on) values (%s, 'comfy', array[%s]::uuid[])", (a, c))
        conn.execute("insert into tasks (task_id, task_type, depends_on) values (%s, 'comfy', array[%s]::uuid[])", (b, a))
        conn.execute("insert into tasks (task_id, task_type, depends_on) values (%s, 'comfy', array[%s]::uuid[])", (c, b))
        with pytest.raises(psycopg.errors.CheckViolation, match="would depend on itself through its dependencies"):
            conn.commit()
    assert db.sql("select count(*) n from tasks")[0]["n"] == 0


def test_a_pipeline_may_be_inserted_in_any_order_in_one_statement_or_deferred_transaction(db):
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    # one statement, the dependant first: checked at the end of the statement
    db.sql("insert into tasks (task_id, task_type, depends_on) values (%s, 'comfy', array[%s]::uuid[]), (%s, 'comfy', '{}')",
           (b, a, a))
    assert (status(db, a), status(db, b)) == ("queued", "waiting")
    x, y = str(uuid.uuid4()), str(uuid.uuid4())
    with psycopg.connect(db.dsn) as conn:
        conn.execute("set constraints tasks_dependencies_check deferred")
        conn.execute("insert into tasks (task_id, task_type, depends_on) values (%s, 'comfy', array[%s]::uuid[])", (y, x))
        # the dependency arrives later in the transaction, already complete (an import): y must not wait for ever
        conn.execute("insert into tasks (task_id, task_type, status) values (%s, 'comfy', 'complete')", (x,))
    assert status(db, y) == "queued"


def test_depends_on_cannot_change_after_insert(db):
    a, b = db.insert_task(), db.insert_task()
    d = db.insert_task(depends_on=[a])
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="cannot change after insert"):
        db.sql("update tasks set depends_on = array[%s]::uuid[] where task_id = %s", (b, d))
    db.sql("update tasks set depends_on = depends_on, params = '{\"x\": 1}' where task_id = %s", (d,))  # unchanged: fine


def test_from_task_references_in_params_are_dependencies_and_duplicates_count_once(db):
    a, b = db.insert_task(), db.insert_task()
    params = {"template": "invert_image", "args": {"image_url": {"from_task": a, "output": 0}},
              "inputs": [{"node": "9", "field": "image", "url": {"from_task": b}}, {"from_task": "not-a-uuid"}]}
    d = db.insert_task(params=params, depends_on=[b, b])
    row = db.task(d)
    assert [str(x) for x in row["depends_on"]] == [b, a] and row["status"] == "waiting"
    # params double-encoded as a JSON string are read too
    e = db.sql("insert into tasks (task_type, params) values ('comfy', to_jsonb(%s::text)) returning task_id",
               (json.dumps({"video_url": {"from_task": a}}),))[0]["task_id"]
    assert [str(x) for x in db.task(e)["depends_on"]] == [a]


def test_a_from_task_reference_to_an_unknown_task_is_refused(db):
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        db.insert_task(params={"video_url": {"from_task": str(uuid.uuid4())}})


def test_too_many_dependencies_or_a_null_one_are_refused_with_a_clear_error(db):
    many = [db.insert_task() for _ in range(101)]
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="depends_on lists 101 tasks; at most 100"):
        db.insert_task(depends_on=many)
    with pytest.raises(psycopg.errors.NullValueNotAllowed, match="must not contain null"):
        db.sql("insert into tasks (task_type, depends_on) values ('comfy', array[null]::uuid[])")


def test_queue_stats_counts_waiting_tasks_apart_and_the_scaler_does_not_count_them(db):
    a = db.insert_task()
    for _ in range(3):
        db.insert_task(depends_on=[a])
    stats = {(r["task_type"], r["status"]): r["tasks"] for r in db.sql("select * from queue_stats()")}
    assert stats == {("comfy", "queued"): 1, ("comfy", "waiting"): 3}
    [counts] = db.sql("select * from scaler_queue_counts('ep', array['comfy'])")
    assert counts["queued_ready"] == 1 and counts["queued_waiting"] == 0


def test_the_seeds_monitoring_query_still_runs_and_shows_waiting_tasks(db):
    a = db.insert_task()
    d = db.insert_task(depends_on=[a])
    rows = {str(r["task_id"]): r["status"] for r in db.sql(SEED_TASKS_QUERY)}
    assert rows == {a: "queued", d: "waiting"}


def test_a_long_chain_fails_downstream_in_one_call_without_exhausting_the_stack(db):
    ids = [db.insert_task()]
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        for _ in range(400):
            ids.append(str(conn.execute("insert into tasks (task_type, depends_on) values ('comfy', array[%s]::uuid[]) "
                                        "returning task_id", (ids[-1],)).fetchone()[0]))
    fail(db, ids[0], "root cause")
    last = db.task(ids[-1])
    assert last["status"] == "failed" and last["error_message"].endswith("root cause")
    assert len(last["error_message"]) <= 4000 and f"dependency {ids[-2]} failed" in last["error_message"]
    assert db.sql("select count(*) n from tasks where status = 'failed'")[0]["n"] == 401


def test_two_dependencies_completing_in_concurrent_transactions_release_the_dependant(db):
    a, b = db.insert_task(), db.insert_task()
    d = db.insert_task(depends_on=[a, b])
    with psycopg.connect(db.dsn) as first:
        first.execute("update tasks set status = 'complete' where task_id = %s", (a,))  # not committed yet
        errors: list[BaseException] = []

        def second() -> None:
            try:
                with psycopg.connect(db.dsn, autocommit=True) as conn:
                    conn.execute("update tasks set status = 'complete' where task_id = %s", (b,))
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(0.5)  # it waits for the first transaction's lock on the dependant
        first.commit()
    thread.join(10)
    assert not errors and not thread.is_alive()
    assert status(db, d) == "queued"


@pytest.mark.parametrize("insert_first", [False, True], ids=["completion-first", "insert-first"])
def test_a_dependant_inserted_while_its_dependency_completes_is_never_left_waiting(db, insert_first):
    a = db.insert_task()
    d_id = str(uuid.uuid4())
    with psycopg.connect(db.dsn) as open_txn:
        if insert_first:
            open_txn.execute("insert into tasks (task_id, task_type, depends_on) values (%s, 'comfy', array[%s]::uuid[])", (d_id, a))
            other_sql, other_args = "update tasks set status = 'complete' where task_id = %s", (a,)
        else:
            open_txn.execute("update tasks set status = 'complete' where task_id = %s", (a,))
            other_sql, other_args = ("insert into tasks (task_id, task_type, depends_on) values (%s, 'comfy', array[%s]::uuid[])",
                                     (d_id, a))
        errors: list[BaseException] = []

        def other() -> None:
            try:
                with psycopg.connect(db.dsn, autocommit=True) as conn:
                    conn.execute(other_sql, other_args)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(0.5)
        open_txn.commit()
    thread.join(10)
    assert not errors and not thread.is_alive()
    assert status(db, d_id) == "queued"


def test_dependency_outputs_gives_each_outputs_urls_and_whether_it_is_declared(db):
    a = db.insert_task()
    result = {"output": {"outputs": [
        {"node_id": "9", "key": "images", "kind": "image", "filename": "a.png", "url": "https://cdn/a.png", "data": "AAAA"},
        {"node_id": "12", "key": "text", "kind": "text", "text": "hello"},
    ]}}
    complete(db, a, "https://cdn/a.png", result)
    other = db.insert_task()
    d = db.insert_task(depends_on=[a])
    rows = db.sql("select * from dependency_outputs(%s)",
                  (json.dumps([{"task_id": d, "from_task": a}, {"task_id": d, "from_task": other},
                               {"task_id": d, "from_task": str(uuid.uuid4())}]),))
    by = {str(r["from_task"]): r for r in rows}
    assert by[a]["declared"] is True and by[a]["status"] == "complete" and by[a]["output_url"] == "https://cdn/a.png"
    assert by[a]["outputs"] == [{"node_id": "9", "key": "images", "kind": "image", "filename": "a.png", "url": "https://cdn/a.png"},
                                {"node_id": "12", "key": "text", "kind": "text"}]
    assert by[other]["declared"] is False and by[other]["status"] == "queued" and by[other]["outputs"] == []
    assert [r["status"] for r in rows if str(r["from_task"]) not in (a, other)] == [None]


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_api_roles_cannot_read_dependency_outputs(db, role):
    with psycopg.connect(db.dsn) as conn:
        conn.execute(f"set role {role}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select * from dependency_outputs('[]')")


def test_a_writer_with_only_insert_rights_still_gets_dependencies_checked(db):
    """The triggers run as the table owner (like a foreign key check), so a role that may
    insert tasks but not read them still gets its dependencies resolved and checked."""
    a = db.insert_task()
    db.sql("create role task_writer nologin; grant insert on tasks to task_writer; "
           "create policy task_writer_inserts on tasks for insert to task_writer with check (true)")
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        conn.execute("set role task_writer")
        conn.execute("insert into tasks (task_type, depends_on) values ('comfy', array[%s]::uuid[])", (a,))
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("insert into tasks (task_type, depends_on) values ('comfy', array[%s]::uuid[])", (str(uuid.uuid4()),))
    assert db.sql("select status from tasks where %s = any(depends_on)", (a,)) == [{"status": "waiting"}]


def test_the_headless_wan2gp_view_shows_a_waiting_task_as_queued_with_its_dependant_on(db):
    from supabase_sync.migrations import MIGRATIONS_DIR

    applied = db.cluster.psql_file(MIGRATIONS_DIR.parent / "compat" / "headless_wan2gp_view.sql", dbname=db.name)
    assert applied.returncode == 0, applied.stderr
    a = db.insert_task()
    d = db.insert_task(depends_on=[a])
    [row] = db.sql("select status, dependant_on from tasks_wan2gp where id = %s", (d,))
    assert row["status"] == "Queued" and [str(x) for x in row["dependant_on"]] == [a]


def _sql_blocks(path, marker):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / path).read_text()
    return [block for block in re.findall(r"```sql\n(.*?)```", text, re.S) if marker in block]


def test_the_pipeline_examples_in_the_docs_run_and_make_a_three_step_pipeline(db):
    examples = _sql_blocks("README.md", "with generate as") + _sql_blocks("docs/dispatcher.md", "with generate as")
    assert len(examples) == 2
    for example in examples:
        db.sql("delete from tasks")
        [last] = db.sql(example)
        upscale = db.task(last["task_id"])
        [invert] = upscale["depends_on"]
        [generate] = db.task(invert)["depends_on"]
        assert (status(db, generate), status(db, invert), upscale["status"]) == ("queued", "waiting", "waiting")
        assert upscale["params"]["args"]["image_url"] == {"from_task": str(invert)}


def test_the_readme_template_example_is_the_shipped_file_and_its_insert_runs(db):
    import re
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    [block] = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "# templates/invert_image@1.yaml" in b]
    assert yaml.safe_load(block) == yaml.safe_load((root / "templates" / "invert_image@1.yaml").read_text())
    [insert] = _sql_blocks("README.md", '"template": "invert_image@1"')
    db.sql(insert)
    assert db.sql("select status, params->>'template' t from tasks") == [{"status": "queued", "t": "invert_image@1"}]
