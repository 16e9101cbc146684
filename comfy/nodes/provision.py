"""Custom nodes from a CUSTOM_NODES manifest, installed at boot onto the network volume.

The manifest has builder/custom_nodes.txt's format (comfy/nodes/manifest.py). Its install
lives under CUSTOM_NODES_DIR in a folder keyed by a hash of the manifest and of the Python
it is for (version, path, torch pins), so a second boot with the same manifest and image
only reads a state file:

    <CUSTOM_NODES_DIR>/<key>/
        nodes/<name>/        the checkouts ComfyUI loads (added as a custom_nodes folder)
        failed/<name>/       checkouts whose requirements failed: not loaded, kept to name their classes
        venv/                the nodes' requirements: a virtualenv layered over ComfyUI's Python
        constraints.txt      torch, torchvision, torchaudio at the versions ComfyUI's Python has
        state.json           each node installed or failed, and why
    <CUSTOM_NODES_DIR>/<key>.lock   one installer at a time across workers (comfy/volume_lock.py)

The requirements go into a virtualenv on the volume whose `.pth` file adds ComfyUI's own
site-packages after its own: pip sees what is installed (torch is never downloaded again),
an upgrade lands in the layer and never touches the image, and ComfyUI is started with the
layer's Python. The torch pins are pip constraints, so a node's requirements cannot move
torch: such a node fails, named, and the others still load. A failed node is retried on
the next boot; an install that succeeded is reused as it is.

Standard library only: handler.py runs this before ComfyUI starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from comfy.nodes.install import InstallError, checkout, install_requirements
from comfy.nodes.manifest import CustomNode, parse_list
from comfy.volume_lock import VolumeLock

log = logging.getLogger("comfy.nodes")

RECIPE = 1  # part of the key: a change of layout installs afresh
PINNED = ("torch", "torchvision", "torchaudio")
SCAN_MAX_FILES = 2000

_PROBE = r"""
import json, site, sys, importlib.metadata as metadata
def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
print(json.dumps({"version": sys.version.split()[0], "site": site.getsitepackages(),
                  "pins": {n: v for n in %r if (v := version(n))}}))
""" % (PINNED,)


class ProvisionError(RuntimeError):
    """The manifest could not be installed at all (no usable Python, volume not writable)."""


@dataclass(frozen=True)
class Interpreter:
    """ComfyUI's Python, as the install needs to know it."""

    python: str
    version: str
    site_packages: tuple[str, ...]
    pins: dict[str, str]

    @classmethod
    def probe(cls, python: str) -> "Interpreter":
        try:
            done = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise ProvisionError(f"cannot run ComfyUI's Python {python}: {done.stderr.strip()[-500:]}")
            data = json.loads(done.stdout.strip().splitlines()[-1])
            return cls(python, data["version"], tuple(data["site"]), dict(data["pins"]))
        except (OSError, subprocess.TimeoutExpired, ValueError, IndexError, KeyError) as exc:
            raise ProvisionError(f"cannot ask ComfyUI's Python {python} for its versions: {exc}") from None


def manifest_key(nodes: list[CustomNode], interpreter: Interpreter) -> str:
    """The install folder's name: the nodes in order, and the Python they were installed for."""
    identity = {
        "recipe": RECIPE,
        "nodes": [[n.url, n.commit, n.name] for n in nodes],
        "python": [interpreter.python, interpreter.version],
        "pins": interpreter.pins,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class NodeFailure:
    """A manifest node that is not usable, and why."""

    name: str
    url: str
    stage: str  # "checkout", "requirements" or "import"
    reason: str
    source: Path | None  # its code, if it was checked out

    @property
    def what(self) -> str:
        return {"checkout": "could not be fetched", "requirements": "could not install its requirements",
                "import": "failed to import"}[self.stage]

    def describe(self) -> str:
        return f"custom node {self.name!r} (CUSTOM_NODES) {self.what}: {self.reason}"


@dataclass
class CustomNodeSet:
    """The installed manifest: what ComfyUI is started with, and what failed."""

    root: Path
    nodes: list[CustomNode]
    python: str | None  # the layered virtualenv's Python, when any node had requirements
    failures: dict[str, NodeFailure] = field(default_factory=dict)
    installed_now: list[str] = field(default_factory=list)  # nodes (re)installed by this boot; the rest were reused
    seconds: float = 0.0
    _scanned: dict[tuple[str, str], bool] = field(default_factory=dict, repr=False)

    @property
    def nodes_dir(self) -> Path:
        return self.root / "nodes"

    def import_failures(self, errors: dict[str, str]) -> list[NodeFailure]:
        """ComfyUI's 'Cannot import <path>' errors (module path -> message) for this manifest's nodes."""
        found = []
        nodes_dir = os.path.normpath(str(self.nodes_dir))
        by_name = {n.name: n for n in self.nodes}
        for path, message in errors.items():
            parent, name = os.path.split(os.path.normpath(path))
            node = by_name.get(name)
            if node is not None and os.path.realpath(parent) == os.path.realpath(nodes_dir):
                found.append(NodeFailure(name, node.url, "import", message, self.nodes_dir / name))
        return found

    def explain(self, class_type: str, import_errors: dict[str, str] | None = None) -> str | None:
        """Why a workflow's unknown class may be missing: the failed node that defines it, if any."""
        failures = list(self.failures.values()) + self.import_failures(import_errors or {})
        if not failures:
            return None
        providers = [f for f in failures if f.source is not None and self._mentions(f.source, class_type)]
        if providers:
            return "; ".join(f"it comes from custom node {f.name!r} (CUSTOM_NODES), which {f.what}: {f.reason}"
                             for f in providers)
        return "it may come from a custom node that failed: " + "; ".join(f.describe() for f in failures)

    def _mentions(self, source: Path, class_type: str) -> bool:
        remembered = self._scanned.get((str(source), class_type))
        if remembered is not None:
            return remembered
        quoted = re.compile(r"""["']%s["']""" % re.escape(class_type))
        found = False
        for count, path in enumerate(source.rglob("*.py")):
            if count >= SCAN_MAX_FILES:
                break
            try:
                if quoted.search(path.read_text(encoding="utf-8", errors="replace")):
                    found = True
                    break
            except OSError:
                continue
        self._scanned[(str(source), class_type)] = found
        return found


def _read_state(root: Path) -> dict | None:
    try:
        return json.loads((root / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_state(root: Path, state: dict) -> None:
    scratch = root / f".state.{os.getpid()}.json"
    scratch.write_text(json.dumps(state, indent=1), encoding="utf-8")
    os.replace(scratch, root / "state.json")


def _all_installed(state: dict | None, nodes: list[CustomNode]) -> bool:
    return bool(state) and all(state["nodes"].get(n.name, {}).get("status") == "installed" for n in nodes)


def _node_set(root: Path, nodes: list[CustomNode], state: dict, installed_now: list[str],
              started: float) -> CustomNodeSet:
    failures = {}
    for node in nodes:
        record = state["nodes"].get(node.name, {})
        if record.get("status") != "installed":
            source = root / "failed" / node.name
            failures[node.name] = NodeFailure(node.name, node.url, record.get("stage", "checkout"),
                                              record.get("reason", "not installed"),
                                              source if source.is_dir() else None)
    return CustomNodeSet(root, nodes, state.get("python"), failures, installed_now, time.monotonic() - started)


def provision_custom_nodes(manifest: str, cache_root: Path, comfy_python: str,
                           source: str = "CUSTOM_NODES") -> CustomNodeSet:
    """Install (or find installed) the manifest's nodes; raise ListError for a bad manifest."""
    started = time.monotonic()
    nodes = parse_list(manifest, source)
    interpreter = Interpreter.probe(comfy_python)
    key = manifest_key(nodes, interpreter)
    root = cache_root / key
    state = _read_state(root)
    if _all_installed(state, nodes):
        return _node_set(root, nodes, state, [], started)
    cache_root.mkdir(parents=True, exist_ok=True)
    lock = VolumeLock(cache_root / f"{key}.lock")
    lock.acquire(on_wait=lambda holder: log.info(
        "custom nodes: %s is installing this manifest; waiting", holder.describe() if holder else "another worker"))
    try:
        state = _read_state(root)
        if _all_installed(state, nodes):
            return _node_set(root, nodes, state, [], started)
        root.mkdir(parents=True, exist_ok=True)
        state = state or {"recipe": RECIPE, "nodes": {}, "python": None,
                          "manifest": [[n.url, n.commit, n.name] for n in nodes]}
        installer = _Installer(root, interpreter, state)
        installed_now = []
        for node in nodes:
            if state["nodes"].get(node.name, {}).get("status") != "installed":  # new, or failed last time: (re)try
                installer.install(node)
                installed_now.append(node.name)
                _write_state(root, state)
        return _node_set(root, nodes, state, installed_now, started)
    finally:
        lock.release()


class _Installer:
    """Installs nodes one by one into root, recording each outcome in state."""

    def __init__(self, root: Path, interpreter: Interpreter, state: dict) -> None:
        self.root = root
        self.interpreter = interpreter
        self.state = state

    def install(self, node: CustomNode) -> None:
        # In place (nodes/<name>), so a requirement given as a path (`-e .`, `./wheels/x.whl`) stays valid.
        # Nobody loads it meanwhile: a worker booting with this manifest waits for the lock.
        nodes = self.root / "nodes"
        nodes.mkdir(exist_ok=True)
        shutil.rmtree(nodes / node.name, ignore_errors=True)  # what a killed install left
        shutil.rmtree(self.root / "failed" / node.name, ignore_errors=True)
        node_started = time.monotonic()
        try:
            checkout(node, nodes)
        except InstallError as exc:
            self._failed(node, "checkout", str(exc))
            return
        try:
            if (nodes / node.name / "requirements.txt").is_file():
                python = self._layer_python()
                install_requirements(node, nodes, python, constraints=self._constraints(), capture=True,
                                     env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
        except InstallError as exc:
            failed = self.root / "failed"
            failed.mkdir(exist_ok=True)
            os.replace(nodes / node.name, failed / node.name)  # not loaded; kept to name its classes
            if exc.output:
                log.error("custom nodes: %s: pip said:\n%s", node.name, exc.output)
            self._failed(node, "requirements", str(exc))
            return
        self.state["nodes"][node.name] = {"status": "installed", "commit": node.commit}
        log.info("custom nodes: %s at %s installed in %.1f s", node.name, node.commit[:12],
                 time.monotonic() - node_started)

    def _failed(self, node: CustomNode, stage: str, reason: str) -> None:
        self.state["nodes"][node.name] = {"status": "failed", "stage": stage, "reason": reason}
        log.error("custom nodes: %s", NodeFailure(node.name, node.url, stage, reason, None).describe())

    def _constraints(self) -> Path:
        path = self.root / "constraints.txt"
        path.write_text("".join(f"{name}=={version}\n" for name, version in sorted(self.interpreter.pins.items())))
        return path

    def _layer_python(self) -> str:
        """The virtualenv on the volume, layered over ComfyUI's Python (made once, whole or not at all).

        Without its .pth file pip would not see torch and would download it again, so the
        virtualenv is made under another name and renamed into place only when complete.
        """
        venv = self.root / "venv"
        python = venv / "bin" / "python"
        if not python.exists():
            partial = self.root / f".venv.{os.getpid()}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            done = subprocess.run([self.interpreter.python, "-m", "venv", "--without-pip", str(partial)],
                                  capture_output=True, text=True)
            purelib = subprocess.run(
                [str(partial / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                capture_output=True, text=True) if done.returncode == 0 else done
            if done.returncode != 0 or purelib.returncode != 0:
                shutil.rmtree(partial, ignore_errors=True)
                raise InstallError(f"could not create the virtualenv {venv}: {(done.stderr or purelib.stderr).strip()[-500:]}")
            # addsitedir, not a plain path: ComfyUI's own .pth files are processed too
            lines = "".join(f"import site; site.addsitedir({path!r})\n" for path in self.interpreter.site_packages)
            relative = Path(purelib.stdout.strip()).relative_to(partial)
            (partial / relative / "_comfy_worker_base.pth").write_text(lines)
            os.replace(partial, venv)
        self.state["python"] = str(python)
        return str(python)
