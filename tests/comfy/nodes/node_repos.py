"""Custom node repositories for tests: local git repositories, and a tiny wheel as a requirement.

pip never needs the network: a node's requirement is a wheel file written here.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import zipfile
from pathlib import Path

# pip without the network, and without this machine's own mirrors and find-links either
OFFLINE_PIP = {"PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": "/dev/null", "PIP_FIND_LINKS": ""}


def git(cwd: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def node_repo(path: Path, files: dict[str, str]) -> str:
    """A git repository at path holding files; returns its commit."""
    path.mkdir(parents=True)
    git(path, "init", "--quiet")
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "add", ".")
    git(path, "commit", "--quiet", "-m", "node")
    return git(path, "rev-parse", "HEAD")


def tiny_wheel(folder: Path, name: str, code: str, version: str = "1.0") -> Path:
    """A pure-Python wheel with one module; pip installs it offline from this path."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": code,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def good_node_files(wheel: Path) -> dict[str, str]:
    """A node whose class needs its requirement (the wheel) at import time."""
    return {
        "__init__.py": (
            "import tinydep\n\n"
            "class TestVolumeNode:\n"
            "    @classmethod\n"
            "    def INPUT_TYPES(cls):\n"
            "        return {'required': {'text': ('STRING', {'default': 'hi'})}}\n"
            "    RETURN_TYPES = ()\n"
            "    OUTPUT_NODE = True\n"
            "    FUNCTION = 'run'\n"
            "    CATEGORY = 'testing'\n"
            "    def run(self, text):\n"
            "        return {'ui': {'text': [tinydep.shout(text)]}}\n\n"
            "NODE_CLASS_MAPPINGS = {'TestVolumeNode': TestVolumeNode}\n"
        ),
        "requirements.txt": f"tinydep @ {wheel.as_uri()}\n",
    }


BROKEN_NODE_FILES = {
    "__init__.py": (
        "import a_module_nobody_installed\n\n"
        "NODE_CLASS_MAPPINGS = {'TestBrokenNode': object}\n"
    ),
}

TORCH_MOVER_FILES = {
    "__init__.py": "NODE_CLASS_MAPPINGS = {'TestTorchMover': object}\n",
    "requirements.txt": "torch==1.0.0\n",
}
