"""Shared fixtures: the real CPU ComfyUI behind the real handler, once per test session."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import importlib
import io
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.comfy_env import free_port, make_comfy_copy, worker_env

pytest_plugins = ["tests.fixtures.postgres"]  # the real PostgreSQL: `db`, `pg_cluster`


@pytest.fixture(scope="session")
def worker(tmp_path_factory: pytest.TempPathFactory):
    """handler.py imported as RunPod would, with its ComfyUI started from a private copy.

    Yields the handler module: handler.handler is the RunPod handler, handler.RUNTIME its
    runtime, handler.PROCESS the ComfyUI process it started.
    """
    comfy_path = make_comfy_copy(tmp_path_factory.mktemp("comfy") / "ComfyUI")
    env = worker_env(comfy_path, free_port(), PROGRESS_INTERVAL_S="0")
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        handler = importlib.import_module("handler")
        handler.RUNTIME.ensure_ready()
        yield handler
    finally:
        os.environ.clear()
        os.environ.update(saved)
    handler.RUNTIME.shutdown()


def run_handler(worker, job_input: Any, job_id: str | None = None) -> dict[str, Any]:
    """Call the RunPod handler the way the SDK does (an awaited coroutine)."""
    return asyncio.run(worker.handler({"id": job_id or f"test-{uuid.uuid4().hex[:8]}", "input": job_input}))


def file_bytes(result: dict[str, Any], entry: dict[str, Any]) -> bytes:
    """An inline output file's bytes: `outputs` refers to its `images` entry by `images_index`."""
    image = result["images"][entry["images_index"]]
    assert entry["delivery"] == "inline" and image["type"] == "base64" and image["filename"] == entry["filename"]
    return base64.b64decode(image["data"])


def png_bytes(width: int = 16, height: int = 16, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def empty_image_graph(save_prefix: str = "test/out", width: int = 8, height: int = 8, color: int = 0) -> dict[str, Any]:
    """EmptyImage -> ImageInvert -> SaveImage: needs no inputs and no weights."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": 1, "color": color}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": save_prefix}},
    }


def unique_color() -> int:
    """A colour no earlier prompt used, so ComfyUI's cache does not answer for it."""
    return uuid.uuid4().int % 0xFFFFFF


@pytest.fixture()
def comfy_output_dir(worker) -> Path:
    return Path(worker.SETTINGS.comfy_path) / "output"


@contextlib.contextmanager
def proxied_runtime(worker):
    """A runtime attached to the session's ComfyUI through a TcpProxy that can cut its websocket."""
    from comfy.server.runtime import WorkerRuntime
    from tests.doubles.tcp_proxy import TcpProxy

    proxy = TcpProxy(worker.SETTINGS.comfy_port)
    runtime = WorkerRuntime(dataclasses.replace(worker.SETTINGS, comfy_url=f"http://127.0.0.1:{proxy.port}"))
    try:
        yield runtime, proxy
    finally:
        runtime.shutdown()
        proxy.close()
