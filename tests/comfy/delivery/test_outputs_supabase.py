"""Outputs to Supabase Storage: the real supabase client against the Storage API double,
and Storage's S3-compatible route against moto."""

from __future__ import annotations

import hashlib

from tests.conftest import empty_image_graph, run_handler, unique_color
from tests.comfy.conftest import S3_KEY_ID, S3_SECRET, SERVICE_KEY, fetch, s3_client
from tests.comfy.delivery.test_outputs_s3 import output_files, two_image_graph


def use_supabase(monkeypatch, storage_api, bucket: str = "outputs") -> None:
    monkeypatch.setenv("SUPABASE_URL", storage_api.url)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", SERVICE_KEY)
    monkeypatch.setenv("SUPABASE_STORAGE_BUCKET", bucket)
    monkeypatch.setenv("RETRY_BACKOFF_S", "0.05")


def test_standard_upload_with_signed_urls(worker, storage_api, monkeypatch):
    use_supabase(monkeypatch, storage_api)

    result = run_handler(worker, {"workflow": two_image_graph(unique_color()), "task_id": "t-501"})

    assert "error" not in result, result
    assert len(result["outputs"]) == 2
    for entry in result["outputs"]:
        assert entry["bucket"] == "outputs" and entry["storage_path"] == f"t-501/media/{entry['filename']}"
        stored = storage_api.state.objects[("outputs", entry["storage_path"])]
        assert stored.content_type == "image/png"
        assert hashlib.sha256(stored.data).hexdigest() == entry["sha256"] and len(stored.data) == entry["size_bytes"]
        assert "/storage/v1/object/sign/outputs/" in entry["url"] and "token=" in entry["url"]
        assert fetch(entry["url"]) == stored.data
    assert [i["type"] for i in result["images"]] == ["supabase_url", "supabase_url"]
    assert output_files(worker) == []


def test_public_bucket_gives_public_urls_without_signing(worker, storage_api, monkeypatch):
    use_supabase(monkeypatch, storage_api)

    result = run_handler(worker, {
        "workflow": empty_image_graph("media/pub", 8, 8, unique_color()),
        "output": {"mode": "supabase", "bucket": "public-outputs", "public": True, "prefix": "gallery"},
    })

    assert "error" not in result, result
    [entry] = result["outputs"]
    assert entry["url"] == f"{storage_api.url}/storage/v1/object/public/public-outputs/{entry['storage_path']}"
    assert entry["storage_path"].startswith("gallery/media/pub_")
    assert hashlib.sha256(fetch(entry["url"])).hexdigest() == entry["sha256"]
    assert storage_api.state.sign_calls == 0


def test_a_transient_upload_failure_is_retried(worker, storage_api, monkeypatch):
    use_supabase(monkeypatch, storage_api)
    storage_api.state.fail_upload_calls = {1}

    result = run_handler(worker, {"workflow": empty_image_graph("media/retry", 8, 8, unique_color())})

    assert "error" not in result, result
    assert storage_api.state.upload_calls == 2


def test_a_final_failure_fails_the_job_and_takes_back_earlier_uploads(worker, storage_api, monkeypatch):
    use_supabase(monkeypatch, storage_api)
    monkeypatch.setenv("UPLOAD_RETRIES", "1")
    # The two files go up together: whichever gets the first call is stored, the other fails twice.
    storage_api.state.fail_upload_calls = {2, 3}

    result = run_handler(worker, {"workflow": two_image_graph(unique_color())}, job_id="job-partial")

    assert result["error_type"] == "upload_failed"
    failed = result["details"]["file"]
    assert failed in ("s3_00001_.png", "s3raw_00001_.png")
    assert "Supabase Storage bucket 'outputs'" in result["error"] and repr(failed) in result["error"]
    assert "2 attempts" in result["error"]
    assert storage_api.state.upload_calls == 3
    assert storage_api.state.objects == {}  # never a partial success
    assert output_files(worker) == []


def test_wrong_service_key_is_not_retried(worker, storage_api, monkeypatch):
    use_supabase(monkeypatch, storage_api)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "wrong")

    result = run_handler(worker, {"workflow": empty_image_graph("media/key", 8, 8, unique_color())})

    assert result["error_type"] == "upload_failed"
    assert "1 attempt" in result["error"] and "403" in result["error"]


def test_s3_route_multipart_then_signed_url(worker, storage_api, s3_server, monkeypatch):
    use_supabase(monkeypatch, storage_api)
    monkeypatch.setenv("SUPABASE_S3_ENDPOINT_URL", s3_server)  # stands in for <SUPABASE_URL>/storage/v1/s3
    monkeypatch.setenv("SUPABASE_S3_ACCESS_KEY_ID", S3_KEY_ID)
    monkeypatch.setenv("SUPABASE_S3_SECRET_ACCESS_KEY", S3_SECRET)
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1, "color": unique_color()}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "media/s3route"}},
    }

    result = run_handler(worker, {"workflow": workflow}, job_id="job-s3-route")

    assert "error" not in result, result
    [entry] = result["outputs"]
    assert entry["storage_path"] == f"job-s3-route/media/{entry['filename']}"
    stored = s3_client(s3_server).get_object(Bucket="outputs", Key=entry["storage_path"])
    body = stored["Body"].read()
    assert stored["ContentType"] == "image/png"
    assert hashlib.sha256(body).hexdigest() == entry["sha256"]
    assert storage_api.state.upload_calls == 0  # nothing went through the standard upload
    assert fetch(entry["url"]) == body  # signed by the Storage API, served from the shared store
