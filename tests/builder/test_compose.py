"""docker-compose.yml runs the image's own handler with RunPod's local API server on loopback."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_serves_the_api_with_the_images_handler_and_a_gpu():
    worker = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["worker"]
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), flags=re.M).group(1))
    assert worker["command"][:3] == cmd
    assert worker["command"][3:] == ["--rp_serve_api", "--rp_api_host", "0.0.0.0", "--rp_api_port", "8000"]
    assert worker["ports"] == ["127.0.0.1:8000:8000"]
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "./runpod-volume:/runpod-volume" in worker["volumes"]
