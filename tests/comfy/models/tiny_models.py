"""Tiny safetensors files for model tests, written by hand (the format is a JSON header and raw bytes)."""

from __future__ import annotations

import hashlib
import json
import struct


def tiny_safetensors(tensors: dict[str, list[float]], pad_to: int = 0) -> bytes:
    """A valid .safetensors file of float32 vectors; pad_to grows it (header padding) to about that size."""
    header: dict[str, object] = {}
    body = b""
    for name, values in sorted(tensors.items()):
        data = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": [len(values)], "data_offsets": [len(body), len(body) + len(data)]}
        body += data
    if pad_to:
        header["__metadata__"] = {"padding": "x" * max(0, pad_to - len(body) - 100)}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def described(tensors: dict[str, list[float]]) -> list[str]:
    """What the TestLoadLora node reports for these tensors."""
    return [f"{name}:[{len(values)}]:{sum(values):.4f}" for name, values in sorted(tensors.items())]


def load_lora_graph(name: str) -> dict:
    """One node: TestLoadLora reads loras/<name> through folder_paths and comfy.utils.load_torch_file."""
    return {"1": {"class_type": "TestLoadLora", "inputs": {"lora_name": name}}}


def loaded_text(result: dict) -> list[str]:
    return [o["text"] for o in result["outputs"] if o.get("kind") == "text"]
