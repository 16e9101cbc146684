"""A job's own S3 endpoint is checked once, and its uploads go to the address that was checked,
even when DNS answers differently a moment later (DNS rebinding)."""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config

from tests.conftest import empty_image_graph, run_handler, unique_color
from tests.comfy.conftest import S3_KEY_ID, S3_SECRET, s3_client

HOST = "s3-rebind"  # no dots: moto reads the bucket from the path


class Trap:
    """A listener on 127.0.0.2 at the S3 server's port: where the rebound name points."""

    def __init__(self, port: int) -> None:
        self.server = socket.create_server(("127.0.0.2", port))
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(), which holds the socket open
        self.server.close()


@pytest.fixture()
def rebinding_dns(s3_server, monkeypatch):
    """HOST resolves to the S3 server (127.0.0.1) once, then to the trap (127.0.0.2).

    Stubbed at socket.getaddrinfo: that is the network, below the worker and botocore alike.
    """
    port = urlsplit(s3_server).port
    real = socket.getaddrinfo
    answers: list[str] = []

    def getaddrinfo(host, *args, **kwargs):
        if host != HOST:
            return real(host, *args, **kwargs)
        address = "127.0.0.1" if not answers else "127.0.0.2"
        answers.append(address)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setenv("ALLOW_PRIVATE_URLS", "true")  # both addresses are loopback
    trap = Trap(port)
    yield answers, trap
    trap.close()


def test_uploads_to_a_job_endpoint_go_to_the_checked_address(worker, s3_server, s3_bucket, rebinding_dns):
    answers, trap = rebinding_dns
    port = urlsplit(s3_server).port
    workflow = empty_image_graph("pinned/a", color=unique_color())
    workflow["4"] = {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "pinned/b"}}
    output = {"mode": "s3", "endpoint_url": f"http://{HOST}:{port}", "bucket": s3_bucket, "region": "us-east-1",
              "access_key_id": S3_KEY_ID, "secret_access_key": S3_SECRET, "prefix": "pinned-job"}

    result = run_handler(worker, {"workflow": workflow, "output": output})

    assert "error" not in result, result
    assert answers[0] == "127.0.0.1"  # the check saw the real server...
    stored = sorted(o["Key"] for o in s3_client(s3_server).list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert [key.rsplit("/", 1)[1].split("_")[0] for key in stored] == ["a", "b"]  # ...and every upload went there
    assert trap.connections == 0
    assert all(entry["url"].startswith(f"http://{HOST}:{port}/") for entry in result["outputs"])

    # The attack is real: boto3 on its own resolves the name again and connects to the trap.
    plain = boto3.client("s3", endpoint_url=f"http://{HOST}:{port}", aws_access_key_id=S3_KEY_ID,
                         aws_secret_access_key=S3_SECRET, region_name="us-east-1",
                         config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=2))
    with pytest.raises(Exception):
        plain.put_object(Bucket=s3_bucket, Key="unpinned", Body=b"secret")
    assert trap.connections >= 1


def test_a_redirect_to_another_host_is_not_followed(worker, s3_server, s3_bucket, rebinding_dns):
    # The pinned sender only talks to the checked host: a virtual-hosted bucket name would
    # make botocore address <bucket>.<host>, a name nobody checked.
    from comfy.delivery.storage.s3 import PinnedSender
    from comfy.errors import JobError
    from comfy.media.url_safety import check_url

    port = urlsplit(s3_server).port
    sender = PinnedSender(check_url(f"http://{HOST}:{port}", allow_private=True), 5.0, 2)

    class Request:
        url = f"http://{s3_bucket}.{HOST}:{port}/key"
        method, headers, body = "PUT", {}, b"x"

    with pytest.raises(JobError, match="only the checked endpoint"):
        sender.send(Request(), None)


def test_a_multipart_upload_to_a_pinned_endpoint_arrives_whole(s3_server, s3_bucket, rebinding_dns, tmp_path):
    import hashlib
    import os

    from comfy.delivery.storage import S3Target, S3Uploader
    from comfy.media.url_safety import check_url

    answers, trap = rebinding_dns
    port = urlsplit(s3_server).port
    endpoint = f"http://{HOST}:{port}"
    target = S3Target(bucket=s3_bucket, endpoint_url=endpoint, access_key_id=S3_KEY_ID, secret_access_key=S3_SECRET)
    uploader = S3Uploader(target, url_expiry_s=60, chunk_bytes=5 * 1024 * 1024, concurrency=2, retries=0,
                          backoff_s=0, pinned=check_url(endpoint, allow_private=True))
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 * 1024 * 1024))  # three parts

    stored = uploader.upload(big, "pinned/big.bin", "application/octet-stream")

    body = s3_client(s3_server).get_object(Bucket=s3_bucket, Key="pinned/big.bin")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == stored.sha256 == hashlib.sha256(big.read_bytes()).hexdigest()
    assert trap.connections == 0 and answers == ["127.0.0.1"]
