"""Resumable (TUS) uploads to Supabase Storage's standard endpoint, against the Storage double."""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest

from comfy.delivery.storage import SupabaseUploader, UploadFailed
from comfy.delivery.storage.tus import TUS_CHUNK_BYTES, TusUpload
from tests.comfy.conftest import SERVICE_KEY, fetch

MIB = 1024 * 1024


def uploader(storage_api, **kwargs) -> SupabaseUploader:
    return SupabaseUploader(storage_api.url, SERVICE_KEY, "outputs", False, 600, retries=kwargs.pop("retries", 3),
                            backoff_s=0.01, **kwargs)


@pytest.fixture()
def big_file(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(os.urandom(2 * TUS_CHUNK_BYTES + 12345))  # two full chunks and a short last one
    return path


def test_a_file_over_6_mb_goes_up_in_6_mb_chunks(storage_api, big_file):
    stored = uploader(storage_api).upload(big_file, "job/clip.mp4", "video/mp4")

    data = big_file.read_bytes()
    assert storage_api.state.patch_sizes == [TUS_CHUNK_BYTES, TUS_CHUNK_BYTES, 12345]
    assert storage_api.state.upload_calls == 0  # not through the standard upload
    saved = storage_api.state.objects[("outputs", "job/clip.mp4")]
    assert saved.data == data and saved.content_type == "video/mp4"
    assert stored.sha256 == hashlib.sha256(data).hexdigest() and stored.size_bytes == len(data)
    assert fetch(stored.url) == data  # signed like any other object


def test_a_chunk_cut_midway_resumes_from_the_servers_offset_and_gives_the_same_sha256(storage_api, big_file):
    storage_api.state.cut_patch_calls = {2}  # the second chunk: half arrives, then the connection drops

    stored = uploader(storage_api).upload(big_file, "job/clip.mp4", "video/mp4")

    data = big_file.read_bytes()
    assert storage_api.state.head_calls == 1  # asked where to go on
    # the cut chunk left half its bytes on the server; the upload went on from there (mid-chunk),
    # so only the other half and the short tail were sent again, as one last chunk
    assert storage_api.state.patch_sizes == [TUS_CHUNK_BYTES, TUS_CHUNK_BYTES // 2 + 12345]
    assert storage_api.state.objects[("outputs", "job/clip.mp4")].data == data
    assert stored.sha256 == hashlib.sha256(data).hexdigest()


def test_a_server_error_is_retried_and_a_lasting_one_names_the_file_and_the_bucket(storage_api, big_file):
    storage_api.state.fail_patch_calls = {1}
    assert uploader(storage_api).upload(big_file, "job/a.mp4", "video/mp4").size_bytes == big_file.stat().st_size

    storage_api.state.fail_patch_calls = set(range(1, 100))
    with pytest.raises(UploadFailed) as caught:
        uploader(storage_api, retries=2).upload(big_file, "job/b.mp4", "video/mp4")
    message = caught.value.message
    assert "'clip.mp4'" in message and "Supabase Storage bucket 'outputs'" in message and "3 attempts" in message
    assert ("outputs", "job/b.mp4") not in storage_api.state.objects


def test_a_refused_upload_is_not_retried(storage_api, big_file):
    with pytest.raises(UploadFailed) as caught:
        SupabaseUploader(storage_api.url, SERVICE_KEY, "no-such-bucket", False, 600, retries=3,
                         backoff_s=0.01).upload(big_file, "job/c.mp4", "video/mp4")
    assert "404" in caught.value.message and "1 attempt" in caught.value.message


def test_a_stalled_server_times_out_instead_of_hanging(storage_api, big_file, monkeypatch):
    import time

    real_patch = storage_api.server.RequestHandlerClass.do_PATCH
    stalls = {"left": 1}

    def stalling_patch(handler):
        if stalls["left"]:
            stalls["left"] -= 1
            handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
            time.sleep(1.5)  # past the client's read timeout; then answers nothing useful
            handler.close_connection = True
            return
        real_patch(handler)

    monkeypatch.setattr(storage_api.server.RequestHandlerClass, "do_PATCH", stalling_patch)
    started = time.monotonic()
    stored = uploader(storage_api, tus_timeout=httpx.Timeout(2.0, read=0.5)).upload(big_file, "job/d.mp4", "video/mp4")

    assert time.monotonic() - started < 30
    assert storage_api.state.head_calls == 1  # the timed-out chunk was resumed from the server's offset
    assert stored.sha256 == hashlib.sha256(big_file.read_bytes()).hexdigest()


def test_an_upload_url_on_another_host_is_refused(storage_api, big_file):
    class Redirecting(httpx.BaseTransport):
        def handle_request(self, request):
            return httpx.Response(201, headers={"Location": "https://elsewhere.example/upload/1", "Tus-Resumable": "1.0.0"})

    upload = TusUpload(httpx.Client(transport=Redirecting()), f"{storage_api.url}/storage/v1/upload/resumable",
                       {"Authorization": "Bearer k"}, big_file, "outputs", "x.mp4", "video/mp4", backoff_s=0)
    with pytest.raises(UploadFailed, match="another host"):
        upload.run()


def test_a_stalled_server_ends_the_upload_at_the_jobs_deadline(storage_api, big_file, monkeypatch):
    """With the job's deadline, a PATCH that never answers ends as `timeout` near the deadline,
    although the client's own read timeout (60 s) and retries would have waited much longer."""
    import threading
    import time

    from comfy.deadline import Deadline
    from comfy.errors import JobTimeout

    release = threading.Event()

    def silent_patch(handler):
        handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        release.wait(30)  # says nothing until the test ends
        handler.close_connection = True

    monkeypatch.setattr(storage_api.server.RequestHandlerClass, "do_PATCH", silent_patch)
    started = time.monotonic()
    try:
        with pytest.raises(JobTimeout) as caught:
            uploader(storage_api, deadline=Deadline(1.5)).upload(big_file, "job/e.mp4", "video/mp4")
    finally:
        release.set()
    assert time.monotonic() - started < 10
    assert caught.value.error_type == "timeout" and "clip.mp4" in caught.value.message
    assert ("outputs", "job/e.mp4") not in storage_api.state.objects
