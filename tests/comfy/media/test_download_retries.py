"""Which download failures are retried, and what the file looks like afterwards."""

from __future__ import annotations

import gzip
import os

import pytest

from comfy.media.downloads import DownloadFailed, InputTooLarge, download_to_file
from comfy.media.settings import MediaSettings

SETTINGS = MediaSettings(allow_private_urls=True, retry_backoff_s=0.01, download_retries=2)


def test_a_connection_cut_mid_body_is_retried_and_the_file_is_whole(media_server, tmp_path):
    body = os.urandom(256 * 1024)
    url = media_server.add("/cut.bin", body=body, cut_first=1)

    got = download_to_file(url, tmp_path / "cut.bin", SETTINGS)

    assert got.attempts == 2 and media_server.hits("/cut.bin") == 2
    assert (tmp_path / "cut.bin").read_bytes() == body
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.bin"]  # no .part left


def test_429_is_retried(media_server, tmp_path):
    url = media_server.add("/limited.bin", body=b"ok", fail_first=2, fail_status=429)

    got = download_to_file(url, tmp_path / "limited.bin", SETTINGS)

    assert got.attempts == 3 and (tmp_path / "limited.bin").read_bytes() == b"ok"


def test_403_is_not_retried_and_names_host_and_status(media_server, tmp_path):
    url = media_server.add("/private.bin", status=403, body=b"no")

    with pytest.raises(DownloadFailed) as caught:
        download_to_file(url, tmp_path / "private.bin", SETTINGS)

    assert "host 127.0.0.1" in caught.value.message and "HTTP 403" in caught.value.message
    assert caught.value.details == {"host": "127.0.0.1", "status": 403}
    assert media_server.hits("/private.bin") == 1
    assert list(tmp_path.iterdir()) == []


def test_retries_that_all_fail_say_how_many_attempts(media_server, tmp_path):
    url = media_server.add("/down.bin", body=b"never", fail_first=10, fail_status=502)

    with pytest.raises(DownloadFailed, match=r"HTTP 502 .*gave up after 3 attempts"):
        download_to_file(url, tmp_path / "down.bin", SETTINGS)
    assert media_server.hits("/down.bin") == 3


def test_the_size_cap_counts_decoded_bytes_of_a_compressed_response(media_server, tmp_path):
    # 8 MiB of zeros gzip to about 8 KB: a cap on the wire size alone would let it through.
    compressed = gzip.compress(b"\0" * (8 * 1024 * 1024))
    url = media_server.add("/bomb.bin", body=compressed, headers={"Content-Encoding": "gzip"})
    settings = MediaSettings(allow_private_urls=True, max_input_bytes=1024 * 1024)

    with pytest.raises(InputTooLarge, match="MAX_INPUT_BYTES"):
        download_to_file(url, tmp_path / "bomb.bin", settings)
    assert len(compressed) < 1024 * 1024 and list(tmp_path.iterdir()) == []


def test_a_cut_download_continues_where_it_stopped_when_the_server_offers_ranges(media_server, tmp_path):
    body = os.urandom(3 * 1024 * 1024)
    url = media_server.add("/resumable.bin", body=body, cut_first=1, ranges=True)

    got = download_to_file(url, tmp_path / "resumable.bin", SETTINGS)

    assert got.attempts == 2 and got.size_bytes == len(body)
    assert (tmp_path / "resumable.bin").read_bytes() == body
    first, second = media_server.range_requests["/resumable.bin"]
    assert first is None and second == f"bytes={len(body) // 2}-"  # only the missing half was asked for
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resumable.bin"]


def test_a_file_that_changed_after_the_cut_is_fetched_whole_again(media_server, tmp_path):
    old, new = os.urandom(1024 * 1024), os.urandom(1024 * 1024 + 10)
    url = media_server.add("/changing.bin", body=old, cut_first=1, ranges=True, etag='"old"',
                           replace_after_cut=(new, '"new"'))

    download_to_file(url, tmp_path / "changing.bin", SETTINGS)

    assert (tmp_path / "changing.bin").read_bytes() == new  # not half of the old glued to the new
    assert media_server.range_requests["/changing.bin"][1] == f"bytes={len(old) // 2}-"  # asked, If-Range said no


def test_without_ranges_a_retry_starts_over(media_server, tmp_path):
    body = os.urandom(512 * 1024)
    url = media_server.add("/plain.bin", body=body, cut_first=1)

    download_to_file(url, tmp_path / "plain.bin", SETTINGS)

    assert media_server.range_requests["/plain.bin"] == [None, None]
    assert (tmp_path / "plain.bin").read_bytes() == body


def test_retry_after_is_waited_for(media_server, tmp_path):
    url = media_server.add("/later.bin", body=b"ready", fail_first=1, fail_status=503, fail_headers={"Retry-After": "1"})

    got = download_to_file(url, tmp_path / "later.bin", SETTINGS)  # backoff alone would be 0.01 s

    first, second = media_server.arrivals["/later.bin"]
    assert got.attempts == 2 and second - first >= 0.95


def test_retry_after_past_the_deadline_gives_up_at_once(media_server, tmp_path):
    url = media_server.add("/much-later.bin", body=b"x", fail_first=5, fail_status=429,
                           fail_headers={"Retry-After": "3600"})
    settings = MediaSettings(allow_private_urls=True, retry_backoff_s=0.01, download_total_timeout_s=60)

    with pytest.raises(DownloadFailed, match=r"HTTP 429 .*asked to retry after 3600 s"):
        download_to_file(url, tmp_path / "much-later.bin", settings)
    assert media_server.hits("/much-later.bin") == 1
