"""The dispatcher end to end against the real database and the RunPod emulator, with a
scripted worker standing in for handler.py (the real one: test_e2e_handler.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from supabase_sync.config import Route, RoutingTable
from supabase_sync.webhooks import sign, webhook_url
from tests.supabase_sync.harness import ENDPOINT, TRIGGER_SECRET, WEBHOOK_SECRET, make_settings, running, wait_for
from tests.doubles.runpod_emulator import ScriptedWorker

SEED_PARAMS = {
    "workflow": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
                 "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}},
}


def ok_worker(job_input: Any, progress: Any) -> dict[str, Any]:
    progress({"percent": 50})
    task = job_input["task_id"]
    return {"outputs": [{"node_id": "2", "kind": "image", "filename": f"{task}.png", "url": f"https://cdn.test/{task}.png"}],
            "timings": {"total_s": 0.01}}


def status_of(db: Any, task_id: str) -> str:
    return db.task(task_id)["status"]


def test_a_queued_task_completes_with_output_url_through_the_webhook(db, emulator):
    task_id = db.insert_task("comfy", SEED_PARAMS)
    worker = ScriptedWorker(emulator, ENDPOINT, ok_worker).start()
    settings = make_settings(db, emulator, STATUS_CHECK_INTERVAL="60")  # no polling: the webhook must do it

    async def scenario() -> None:
        async with running(settings):
            await wait_for(lambda: status_of(db, task_id) == "complete", what="complete")

    try:
        asyncio.run(scenario())
    finally:
        worker.stop()
    row = db.task(task_id)
    assert row["output_url"] == f"https://cdn.test/{task_id}.png"
    assert row["result"]["output"]["timings"] == {"total_s": 0.01}
    assert row["completed_at"] is not None and row["started_at"] is not None
    assert row["attempts"] == 1
    [job] = emulator.submissions_for(task_id)
    assert row["runpod_job_id"] == job.id
    assert job.input["workflow"] == SEED_PARAMS["workflow"]
    assert job.policy == {"executionTimeout": 900_000}
    assert job.webhook and job.webhook.startswith(f"http://127.0.0.1:{settings.listen_port}/hooks/runpod?")
    assert any(d.job_id == job.id and d.status_code == 200 for d in emulator.webhook_deliveries)


def test_without_webhooks_the_status_poll_finishes_the_task(db, emulator):
    task_id = db.insert_task("comfy", SEED_PARAMS)
    worker = ScriptedWorker(emulator, ENDPOINT, ok_worker).start()
    settings = make_settings(db, emulator, DISPATCHER_PUBLIC_URL="", WEBHOOK_SECRET="")

    async def scenario() -> None:
        async with running(settings):
            await wait_for(lambda: status_of(db, task_id) == "complete", what="complete")

    try:
        asyncio.run(scenario())
    finally:
        worker.stop()
    [job] = emulator.submissions_for(task_id)
    assert job.webhook is None
    assert db.task(task_id)["output_url"] == f"https://cdn.test/{task_id}.png"


def test_progress_is_mirrored_into_the_task_while_the_job_runs(db, emulator):
    task_id = db.insert_task("comfy", SEED_PARAMS)
    settings = make_settings(db, emulator, STATUS_CHECK_INTERVAL="0.2")

    async def scenario() -> None:
        async with running(settings):
            await wait_for(lambda: db.task(task_id)["runpod_job_id"], what="submitted")
            job = emulator.take_job(ENDPOINT)
            emulator.progress(job.id, {"step": 3, "of": 10})
            await wait_for(lambda: db.task(task_id)["progress"] == {"step": 3, "of": 10}, what="progress")
            emulator.finish_job(job.id, output={"outputs": []})
            await wait_for(lambda: status_of(db, task_id) == "complete", what="complete")

    asyncio.run(scenario())
    assert db.task(task_id)["output_url"] is None  # no file output: nothing to point at


def test_params_without_a_workflow_or_with_broken_json_fail_at_once_and_are_not_retried(db, emulator):
    no_workflow = db.insert_task("comfy", {"video_url": "https://x.test/a.mp4"})
    broken = db.insert_task("comfy", {"workflow": '{"1": {"class_type": '})
    not_object = db.insert_task("comfy", ["workflow"])
    settings = make_settings(db, emulator)

    async def scenario() -> None:
        async with running(settings):
            await wait_for(lambda: all(status_of(db, t) == "failed" for t in (no_workflow, broken, not_object)),
                           what="failed")
            await asyncio.sleep(0.5)  # several more rounds: nothing is retried

    asyncio.run(scenario())
    assert "params has no 'workflow'" in db.task(no_workflow)["error_message"]
    assert "params.workflow is a string that is not valid JSON" in db.task(broken)["error_message"]
    assert "params must be a JSON object, not list" in db.task(not_object)["error_message"]
    for task_id in (no_workflow, broken, not_object):
        row = db.task(task_id)
        assert row["status"] == "failed" and row["attempts"] == 1
    assert emulator.requests.get("run", 0) == 0


def test_a_worker_validation_error_fails_the_task_for_good_with_the_workers_text(db, emulator):
    task_id = db.insert_task("comfy", SEED_PARAMS)

    def rejecting(job_input: Any, progress: Any) -> dict[str, Any]:
        return {"error": "invalid job input: workflow.1: class_type is missing", "error_type": "invalid_input",
                "details": [{"field": "workflow.1", "message": "class_type is missing"}]}

    worker = ScriptedWorker(emulator, ENDPOINT, rejecting).start()
    settings = make_settings(db, emulator)

    async def scenario() -> None:
        async with running(settings):
            await wait_for(lambda: status_of(db, task_id) == "failed", what="failed")
            await asyncio.sleep(0.5)

    try:
        asyncio.run(scenario())
    finally:
        worker.stop()
    row = db.task(task_id)
    assert row["attempts"] == 1 and len(emulator.submissions_for(task_id)) == 1
    assert row["error_message"].startswith("invalid_input: invalid job input: workflow.1: class_type is missing")


def test_a_transient_worker_failure_is_retried_then_completes(db, emulator):
    task_id = db.insert_task("comfy", SEED_PARAMS)
    calls = []

    def flaky(job_input: Any, progress: Any) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            return {"error": "ComfyUI died", "error_type": "comfy_unavailable"}
        return ok_worker(job_input, progress)

    worker = ScriptedWorker(emulator, ENDPOINT, flaky).start()
    settings = make_settings(db, emulator)

    async def scenario() -> None:
        async with running(settings):
            await wait_for(lambda: status_of(db, task_id) == "complete", what="complete")

    try:
        asyncio.run(scenario())
    finally:
        worker.stop()
    row = db.task(task_id)
    assert row["attempts"] == 2 and len(emulator.submissions_for(task_id)) == 2
    assert row["error_message"] is None


def test_retries_stop_at_max_attempts_with_the_last_error(db, emulator):
    task_id = db.insert_task("comfy", SEED_PARAMS, max_attempts=2)
    worker = ScriptedWorker(emulator, ENDPOINT, lambda i, p: {"error": "out of memory", "error_type": "execution_error"}).start()
    settings = make_settings(db, emulator)

    async def scenario() -> None:
        async with running(settings):
            await wait_for(lambda: status_of(db, task_id) == "failed", what="failed")

    try:
        asyncio.run(scenario())
    finally:
        worker.stop()
    row = db.task(task_id)
    assert row["attempts"] == 2 and len(emulator.submissions_for(task_id)) == 2
    assert row["error_message"] == "execution_error: out of memory (gave up after 2 attempts)"


def test_an_expired_runpod_result_is_run_again(db, emulator):
    task_id = db.insert_task("comfy", SEED_PARAMS)
    settings = make_settings(db, emulator, DISPATCHER_PUBLIC_URL="", WEBHOOK_SECRET="", STATUS_CHECK_INTERVAL="0.3")

    async def scenario() -> None:
        async with running(settings):
            first = await wait_for(lambda: db.task(task_id)["runpod_job_id"], what="submitted")
            emulator.expire(first)  # RunPod forgot it (30 min after the end, or its ttl)
            await wait_for(lambda: len(emulator.submissions_for(task_id)) == 2, what="resubmitted")
            second = emulator.submissions_for(task_id)[1]
            assert emulator.take_job(ENDPOINT).id == second.id
            emulator.finish_job(second.id, output={"outputs": [{"url": "https://cdn.test/x.png"}]})
            await wait_for(lambda: status_of(db, task_id) == "complete", what="complete")

    asyncio.run(scenario())
    row = db.task(task_id)
    assert row["attempts"] == 2 and row["output_url"] == "https://cdn.test/x.png"


def test_a_timed_out_job_is_retried(db, emulator):
    task_id = db.insert_task("comfy", SEED_PARAMS, max_attempts=1)
    routing = RoutingTable(routes=[Route(endpoint_id=ENDPOINT, task_types=["comfy"], execution_timeout_s=0.2)])
    settings = make_settings(db, emulator, routing=routing, STATUS_CHECK_INTERVAL="0.3")

    async def scenario() -> None:
        async with running(settings):
            await wait_for(lambda: db.task(task_id)["runpod_job_id"], what="submitted")
            emulator.take_job(ENDPOINT)  # starts, never finishes
            await wait_for(lambda: status_of(db, task_id) == "failed", what="failed")

    asyncio.run(scenario())
    assert "timed out" in db.task(task_id)["error_message"]
    [job] = emulator.submissions_for(task_id)
    assert job.policy["executionTimeout"] == 200


def test_a_429_storm_delays_but_submits_every_task_exactly_once(db, emulator):
    task_ids = [db.insert_task("comfy", SEED_PARAMS) for _ in range(30)]
    emulator.throttle_runs(120)  # more 429s than one call's retries: tasks get released and claimed again
    worker = ScriptedWorker(emulator, ENDPOINT, ok_worker).start()
    settings = make_settings(db, emulator, POLL_INTERVAL="0.1")

    async def scenario() -> None:
        async with running(settings):
            await wait_for(lambda: db.sql("select count(*) n from tasks where status = 'complete'")[0]["n"] == 30,
                           timeout_s=60, what="all complete")

    try:
        asyncio.run(scenario())
    finally:
        worker.stop()
    assert emulator.requests["run"] >= 150  # the storm really happened
    for task_id in task_ids:
        assert len(emulator.submissions_for(task_id)) == 1
        assert db.task(task_id)["attempts"] == 1  # released claims do not count as attempts


def test_a_webhook_with_a_bad_signature_is_refused_and_changes_nothing(db, emulator):
    task_id = db.insert_task("comfy", SEED_PARAMS)
    settings = make_settings(db, emulator, STATUS_CHECK_INTERVAL="60")

    async def scenario() -> None:
        async with running(settings) as base:
            await wait_for(lambda: db.task(task_id)["runpod_job_id"], what="submitted")
            row = db.task(task_id)
            good = webhook_url(base, WEBHOOK_SECRET, row["task_id"], row["lease_token"])
            forged = webhook_url(base, "not-the-secret", row["task_id"], row["lease_token"])
            body = {"id": row["runpod_job_id"], "status": "COMPLETED", "output": {"outputs": [{"url": "https://evil.test"}]}}
            async with httpx.AsyncClient() as http:
                assert (await http.post(forged, json=body)).status_code == 401
                unsigned = f"{base}/hooks/runpod?task_id={task_id}&lease={row['lease_token']}"
                assert (await http.post(unsigned, json=body)).status_code == 401
                assert db.task(task_id)["status"] == "in_progress"
                assert db.task(task_id)["output_url"] is None
                # the properly signed one is accepted
                answer = await http.post(good, json={**body, "output": {"outputs": [{"url": "https://ok.test"}]}})
                assert answer.status_code == 200 and answer.json()["outcome"] == "applied"

    asyncio.run(scenario())
    assert db.task(task_id)["output_url"] == "https://ok.test"


def test_a_webhook_for_an_unknown_task_is_404(db, emulator):
    settings = make_settings(db, emulator)
    task_id, lease = "00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002"

    async def scenario() -> None:
        async with running(settings) as base:
            async with httpx.AsyncClient() as http:
                url = f"{base}/hooks/runpod?task_id={task_id}&lease={lease}&sig={sign(WEBHOOK_SECRET, task_id, lease)}"
                answer = await http.post(url, json={"id": "job-x", "status": "COMPLETED", "output": {}})
                assert answer.status_code == 404
                assert task_id in answer.json()["error"]

    asyncio.run(scenario())


def test_a_late_webhook_from_an_earlier_attempt_does_not_overwrite_the_newer_state(db, emulator):
    task_id = db.insert_task("comfy", SEED_PARAMS)
    settings = make_settings(db, emulator, STATUS_CHECK_INTERVAL="60")

    async def scenario() -> None:
        async with running(settings) as base:
            await wait_for(lambda: db.task(task_id)["runpod_job_id"], what="submitted")
            old = db.task(task_id)
            # the first attempt fails (retryable) and the task is claimed again
            job = emulator.take_job(ENDPOINT)
            emulator.finish_job(job.id, error="CUDA error", output={"error_type": "execution_error"})
            await wait_for(lambda: len(emulator.submissions_for(task_id)) == 2, what="second attempt")
            await wait_for(lambda: db.task(task_id)["runpod_job_id"] == emulator.submissions_for(task_id)[1].id,
                           what="second job attached")
            stale = webhook_url(base, WEBHOOK_SECRET, old["task_id"], old["lease_token"])
            async with httpx.AsyncClient() as http:
                answer = await http.post(stale, json={"id": old["runpod_job_id"], "status": "COMPLETED",
                                                      "output": {"outputs": [{"url": "https://late.test"}]}})
            assert answer.status_code == 200 and answer.json()["outcome"] == "stale"
            row = db.task(task_id)
            assert row["status"] == "in_progress" and row["output_url"] is None and row["attempts"] == 2

    asyncio.run(scenario())


def test_the_trigger_hook_checks_its_secret_and_wakes_the_dispatcher(db, emulator):
    settings = make_settings(db, emulator, POLL_INTERVAL="30")  # only a wake-up can be quick

    async def scenario() -> None:
        async with running(settings) as base:
            await asyncio.sleep(0.3)  # the first round has run and found nothing
            task_id = db.insert_task("comfy", SEED_PARAMS)
            async with httpx.AsyncClient() as http:
                bad = await http.post(f"{base}/hooks/supabase", json={}, headers={"X-Dispatcher-Secret": "wrong"})
                assert bad.status_code == 401
                await asyncio.sleep(0.3)
                assert db.task(task_id)["status"] == "queued"
                good = await http.post(f"{base}/hooks/supabase", json={"type": "INSERT", "task_id": task_id},
                                       headers={"X-Dispatcher-Secret": TRIGGER_SECRET})
                assert good.status_code == 200
            await wait_for(lambda: db.task(task_id)["runpod_job_id"], timeout_s=3, what="submitted after wake-up")

    asyncio.run(scenario())


def test_cancelling_a_task_cancels_its_runpod_job(db, emulator):
    task_id = db.insert_task("comfy", SEED_PARAMS)
    settings = make_settings(db, emulator)

    async def scenario() -> None:
        async with running(settings):
            job_id = await wait_for(lambda: db.task(task_id)["runpod_job_id"], what="submitted")
            emulator.take_job(ENDPOINT)
            db.sql("select cancel_task(%s, 'user cancelled')", (task_id,))
            await wait_for(lambda: emulator.jobs[job_id].status == "CANCELLED", what="RunPod job cancelled")
            await wait_for(lambda: db.task(task_id)["runpod_cancelled_at"] is not None, what="marked")
            emulator.finish_job(job_id, output={"outputs": [{"url": "https://late.test"}]})  # no effect now

    asyncio.run(scenario())
    row = db.task(task_id)
    assert row["status"] == "cancelled" and row["output_url"] is None
    assert emulator.requests["cancel"] == 1


def test_concurrency_limit_per_endpoint_holds(db, emulator):
    for _ in range(10):
        db.insert_task("comfy", SEED_PARAMS)
    routing = RoutingTable(routes=[Route(endpoint_id=ENDPOINT, task_types=["comfy"], max_in_flight=3)])
    settings = make_settings(db, emulator, routing=routing)

    async def scenario() -> None:
        async with running(settings):
            await wait_for(lambda: len(emulator.submissions) == 3, what="3 submitted")
            await asyncio.sleep(0.6)
            assert len(emulator.submissions) == 3  # no more while 3 are in flight
            emulator.finish_job(emulator.take_job(ENDPOINT).id, output={})
            await wait_for(lambda: len(emulator.submissions) == 4, what="a fourth after one finished")

    asyncio.run(scenario())


def test_routes_send_each_task_type_to_its_endpoint_and_unknown_types_fail_when_configured(db, emulator):
    comfy = db.insert_task("comfy", SEED_PARAMS)
    vace = db.insert_task("vace", {"prompt": "a cat", "frames": 16})
    mystery = db.insert_task("mystery", {})
    settings = make_settings(db, emulator, routes="comfy=ep-comfy;vace,flux,t2v,i2v=ep-wan", UNKNOWN_TASK_TYPES="fail")

    async def scenario() -> None:
        async with running(settings):
            await wait_for(lambda: emulator.submissions_for(comfy) and emulator.submissions_for(vace), what="both submitted")
            await wait_for(lambda: status_of(db, mystery) == "failed", what="unknown type failed")

    asyncio.run(scenario())
    assert emulator.submissions_for(comfy)[0].endpoint_id == "ep-comfy"
    [wan] = emulator.submissions_for(vace)
    assert wan.endpoint_id == "ep-wan"
    lease = str(db.task(vace)["lease_token"])
    assert wan.input == {"prompt": "a cat", "frames": 16, "task_type": "vace", "task_id": vace, "lease_token": lease}
    assert "no RunPod endpoint is configured for task_type 'mystery'" in db.task(mystery)["error_message"]


def test_unknown_types_stay_queued_by_default(db, emulator):
    mystery = db.insert_task("mystery", {})
    settings = make_settings(db, emulator)

    async def scenario() -> None:
        async with running(settings):
            await asyncio.sleep(0.8)

    asyncio.run(scenario())
    assert status_of(db, mystery) == "queued"


def test_health_metrics_and_the_dispatchers_own_heartbeat(db, emulator):
    db.insert_task("comfy", SEED_PARAMS)
    db.insert_task("vace", {})
    settings = make_settings(db, emulator)

    async def scenario() -> str:
        async with running(settings) as base:
            await wait_for(lambda: emulator.submissions, what="submitted")
            async with httpx.AsyncClient() as http:
                health = await http.get(f"{base}/health")
                assert health.status_code == 200 and health.json()["dispatcher_id"] == settings.dispatcher_id
                for _ in range(100):  # counted once the job id is recorded, a moment after /run answered
                    text = (await http.get(f"{base}/metrics")).text
                    if 'outcome="submitted"' in text:
                        break
                    await asyncio.sleep(0.05)
                return text

    text = asyncio.run(scenario())
    assert 'supabase_sync_queue_depth{status="queued",task_type="vace"} 1' in text
    assert 'supabase_sync_in_flight{task_type="comfy"} 1' in text
    assert 'supabase_sync_outcomes_total{outcome="submitted"} 1' in text
    assert "supabase_sync_dispatch_latency_seconds_count 1" in text
    [me] = db.sql("select * from workers where id = %s", (settings.dispatcher_id,))
    assert me["status"] == "stopped"  # said goodbye on shutdown
    assert me["metadata"]["kind"] == "dispatcher"


def test_the_pg_net_trigger_wakes_the_dispatcher_on_insert(db, emulator):
    from supabase_sync.migrations import migration
    from tests.doubles.pg_net import PgNetBridge
    from tests.fixtures.pgcluster import PG_NET_STUB_SQL

    db.sql(PG_NET_STUB_SQL)
    applied = db.cluster.psql_file(migration("0003").path, dbname=db.name)
    assert applied.returncode == 0, applied.stderr
    settings = make_settings(db, emulator, POLL_INTERVAL="30")  # the poll cannot be what finds it
    db.sql("insert into dispatcher_wakeup (url, secret) values (%s, %s)",
           (f"http://127.0.0.1:{settings.listen_port}/hooks/supabase", TRIGGER_SECRET))
    bridge = PgNetBridge(db.dsn).start()

    async def scenario() -> None:
        async with running(settings):
            await asyncio.sleep(0.3)
            task_id = db.insert_task("comfy", SEED_PARAMS)
            await wait_for(lambda: emulator.submissions_for(task_id), timeout_s=3, what="submitted after the trigger")

    try:
        asyncio.run(scenario())
    finally:
        bridge.stop()
    assert bridge.sent >= 1 and bridge.failed == 0


def test_job_ids_are_recorded_even_when_supabase_fails_for_a_while_after_run(db, emulator):
    task_id = db.insert_task("comfy", SEED_PARAMS)
    db.postgrest.fail_next("attach_runpod_jobs", 3)  # /run succeeded; recording its job id does not, 3 times
    settings = make_settings(db, emulator, CLAIM_LEASE_S="10", STATUS_CHECK_INTERVAL="60")

    async def scenario() -> None:
        async with running(settings):
            job_id = await wait_for(lambda: db.task(task_id)["runpod_job_id"], what="job id recorded")
            emulator.take_job(ENDPOINT)
            emulator.finish_job(job_id, output={"outputs": [{"url": "https://cdn.test/r.png"}]})
            await wait_for(lambda: status_of(db, task_id) == "complete", what="complete")

    asyncio.run(scenario())
    assert len(emulator.submissions_for(task_id)) == 1
    assert db.task(task_id)["attempts"] == 1
