"""A RunPod cancellation during an input download stops it, and the worker is free at once."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from comfy.media.downloads import DownloadCancelled, download_to_file
from comfy.media.settings import MediaSettings
from tests.conftest import empty_image_graph, run_handler, unique_color
from tests.comfy.media.test_inputs import staged_input_files, video_frames_graph


def test_cancelling_the_job_stops_a_download_in_progress(worker, media_server, private_urls_allowed, monkeypatch):
    # Without cancellation the download would go on until DOWNLOAD_TOTAL_TIMEOUT_S (20 s here).
    monkeypatch.setenv("DOWNLOAD_TOTAL_TIMEOUT_S", "20")
    url = media_server.add("/never-ends.mp4", endless_chunk=b"\0" * 4096, endless_pause_s=0.01)

    async def cancel_after_one_second() -> str:
        task = asyncio.create_task(worker.handler({"id": "cancel-download", "input": {
            "workflow": video_frames_graph(), "inputs": [{"node": "1", "field": "file", "url": url}]}}))
        await asyncio.sleep(1.0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "finished"

    started = time.monotonic()
    outcome = asyncio.run(cancel_after_one_second())  # returns once the job's thread has ended
    elapsed = time.monotonic() - started

    assert outcome == "cancelled"
    assert elapsed < 4, f"the job thread ran {elapsed:.1f} s after a cancel at 1 s"
    assert media_server.hits("/never-ends.mp4") == 1
    assert staged_input_files(worker) == []  # the partial file is gone
    result = run_handler(worker, {"workflow": empty_image_graph("media/after-cancel", 8, 8, unique_color())})
    assert "error" not in result, result


def test_cancel_during_a_backoff_wait_ends_it(media_server, tmp_path):
    url = media_server.add("/busy.bin", fail_first=10, body=b"late")
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    settings = MediaSettings(allow_private_urls=True, download_retries=3, retry_backoff_s=30)

    started = time.monotonic()
    with pytest.raises(DownloadCancelled, match="cancelled while downloading from host 127.0.0.1"):
        download_to_file(url, tmp_path / "x.bin", settings, cancel=cancel)

    assert time.monotonic() - started < 3  # not the 30 s backoff
    assert media_server.hits("/busy.bin") == 1
    assert list(tmp_path.iterdir()) == []
