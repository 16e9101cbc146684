"""Which download failures are retried, and what the file looks like afterwards."""

from __future__ import annotations

import gzip
import os

import pytest

from comfy.downloads import DownloadFailed, InputTooLarge, download_to_file
from comfy.media_settings import MediaSettings

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
