"""Server-side request forgery: private, loopback and metadata addresses are refused."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from comfy.media.downloads import download_to_file
from comfy.media.settings import MediaSettings
from comfy.media.url_safety import UnsafeURL, check_url
from tests.conftest import run_handler
from tests.comfy.media.test_inputs import invert_graph


def run_with_url(worker, url: str) -> dict:
    return run_handler(worker, {"workflow": invert_graph(), "inputs": [{"node": "1", "field": "image", "url": url}]})


@pytest.mark.parametrize("host, reason", [
    ("127.0.0.1", "loopback"),
    ("10.0.0.1", "private"),
    ("169.254.169.254", "cloud metadata"),
    ("[::1]", "loopback"),
    ("localhost", "loopback"),  # a host name that resolves to loopback
    ("metadata.google.internal", "cloud metadata"),
    ("100.64.0.7", "carrier-grade NAT"),
])
def test_private_hosts_are_refused_by_default(worker, media_server, host, reason):
    port = media_server.url.rsplit(":", 1)[1]
    url = f"http://{host}:{port}/secret.png"
    media_server.add("/secret.png", body=b"must not be fetched")

    started = time.monotonic()
    result = run_with_url(worker, url)

    assert result["error_type"] == "input_url_refused"
    assert host.strip("[]") in result["error"] and reason in result["error"]
    assert "ALLOW_PRIVATE_URLS" in result["error"]
    assert media_server.requests == []  # refused before any connection
    assert time.monotonic() - started < 5


def test_non_http_schemes_are_refused(worker):
    result = run_handler(worker, {"workflow": invert_graph(), "inputs": [{"node": "1", "field": "image", "url": "file:///etc/passwd"}]})
    assert result["error_type"] == "invalid_input" and "http or https" in result["error"]
    with pytest.raises(UnsafeURL, match="scheme 'ftp'"):
        check_url("ftp://example.com/a.png")


class RouteEverythingTo(httpx.HTTPTransport):
    """Network stand-in: whatever address a request names, the socket goes to one local server.

    Lets a URL with a public address (which passes the check) be answered by the test's server.
    """

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.target = httpx.URL(base_url)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(host=self.target.host, port=self.target.port)
        return super().handle_request(request)


def test_public_url_redirecting_to_a_private_address_is_refused(media_server, tmp_path):
    media_server.add("/start", status=302, location="http://10.0.0.1/internal.png")
    client = httpx.Client(transport=RouteEverythingTo(media_server.url), follow_redirects=False)

    with pytest.raises(UnsafeURL) as caught:
        download_to_file("http://93.184.215.14/start", tmp_path / "x", MediaSettings(retry_backoff_s=0), client)

    assert "10.0.0.1" in caught.value.message and "private" in caught.value.message
    assert media_server.hits("/start") == 1  # the first hop was fetched, the redirect was not
    assert not (tmp_path / "x").exists()


def test_redirect_to_metadata_by_name_is_refused(media_server, tmp_path):
    media_server.add("/start", status=307, location="http://metadata.google.internal/computeMetadata/v1/")
    client = httpx.Client(transport=RouteEverythingTo(media_server.url))

    with pytest.raises(UnsafeURL, match="metadata"):
        download_to_file("http://93.184.215.14/start", tmp_path / "x", MediaSettings(), client)


def test_connection_goes_to_the_checked_address_with_the_original_host_header(media_server, tmp_path, monkeypatch):
    # The resolver is asked once, at the check; the socket then goes to that checked address
    # (a later, different DNS answer could not redirect it), and Host still names the site.
    port = int(media_server.url.rsplit(":", 1)[1])
    real_getaddrinfo = socket.getaddrinfo
    lookups = []

    def fake_dns(host, *args, **kwargs):
        if host == "files.example.test":
            lookups.append(host)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake_dns)
    media_server.add("/named.bin", body=b"pinned")

    got = download_to_file(f"http://files.example.test:{port}/named.bin", tmp_path / "named.bin",
                           MediaSettings(allow_private_urls=True))

    assert got.path.read_bytes() == b"pinned"
    assert lookups == ["files.example.test"]
    assert media_server.requests == [("/named.bin", f"files.example.test:{port}")]


def test_too_many_redirects(media_server, tmp_path):
    loop = media_server.add("/loop", status=302, location="/loop")
    with pytest.raises(Exception, match="more than 2 redirects"):
        download_to_file(loop, tmp_path / "x", MediaSettings(allow_private_urls=True, download_max_redirects=2))
    assert media_server.hits("/loop") == 3
