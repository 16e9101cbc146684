"""Several inputs of one job are fetched at the same time; one failure stops the rest."""

from __future__ import annotations

import time

from tests.conftest import png_bytes, run_handler
from tests.comfy.media.test_inputs import decoded_image, staged_input_files


def two_images_graph() -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "b.png"}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "4": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "media/par-a"}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "media/par-b"}},
    }


def test_inputs_of_one_job_are_fetched_together(worker, media_server, private_urls_allowed):
    # Each server answer waits 1 s after its headers: one after the other, the second request
    # could only arrive a second after the first.
    url_a = media_server.add("/a.png", body=png_bytes(10, 10, (10, 20, 30)), content_type="image/png",
                             stall_after_headers_s=1.0)
    url_b = media_server.add("/b.png", body=png_bytes(12, 6, (200, 100, 50)), content_type="image/png",
                             stall_after_headers_s=1.0)

    result = run_handler(worker, {"workflow": two_images_graph(), "inputs": [
        {"node": "1", "field": "image", "url": url_a}, {"node": "2", "field": "image", "url": url_b}]})

    assert "error" not in result, result
    [a], [b] = media_server.arrivals["/a.png"], media_server.arrivals["/b.png"]
    assert abs(a - b) < 0.5
    by_prefix = {o["filename"].split("_")[0]: decoded_image(result, o) for o in result["outputs"]}
    assert by_prefix["par-a"].size == (10, 10) and by_prefix["par-b"].size == (12, 6)  # each to its own node
    assert staged_input_files(worker) == []


def test_one_failing_input_stops_the_others_and_is_the_error(worker, media_server, private_urls_allowed, monkeypatch):
    monkeypatch.setenv("DOWNLOAD_TOTAL_TIMEOUT_S", "20")  # the endless one would otherwise run 20 s
    endless = media_server.add("/endless.png", endless_chunk=b"\0" * 4096, endless_pause_s=0.01)
    missing = media_server.add("/missing.png", status=404, body=b"gone", delay_s=0.5)

    started = time.monotonic()
    result = run_handler(worker, {"workflow": two_images_graph(), "inputs": [
        {"node": "1", "field": "image", "url": endless}, {"node": "2", "field": "image", "url": missing}]})

    assert result["error_type"] == "input_download", result
    assert "HTTP 404" in result["error"] and "127.0.0.1" in result["error"]
    assert time.monotonic() - started < 5
    assert staged_input_files(worker) == []  # the endless one's partial file is gone too


def test_inputs_not_yet_started_when_one_fails_are_never_fetched(worker, media_server, private_urls_allowed):
    # Six inputs, four at a time: the 404 ends the job while two have not started.
    graph = {str(n): {"class_type": "LoadImage", "inputs": {"image": "x.png"}} for n in range(1, 7)}
    graph["7"] = {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "media/six"}}
    missing = media_server.add("/missing.png", status=404, body=b"gone")
    slow = [media_server.add(f"/slow{n}.png", body=png_bytes(), content_type="image/png", delay_s=1.0)
            for n in range(2, 7)]

    result = run_handler(worker, {"workflow": graph, "inputs": [
        {"node": "1", "field": "image", "url": missing},
        *({"node": str(n), "field": "image", "url": url} for n, url in zip(range(2, 7), slow))]})

    assert result["error_type"] == "input_download" and "HTTP 404" in result["error"], result
    assert sum(media_server.hits(f"/slow{n}.png") for n in range(2, 7)) == 3  # the fifth and sixth never went out
    assert staged_input_files(worker) == []
