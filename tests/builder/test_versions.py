"""The versions the image pins agree with the ones the CPU test ComfyUI was built from.

Where they cannot be the same, the reason is stated here:
* Python: the image runs Ubuntu 24.04's Python 3.12 (the CUDA base's own); tests run on the
  machine's Python 3.11. ComfyUI 0.3.75 and the worker support both.
* ComfyUI's Python requirements: the image installs the release tag's own requirements.txt
  with builder/comfyui-cpu-requirements.txt as pip constraints; the test copy installs that
  file. So both run the same versions (checked: they resolve for the image's Python 3.12 with
  the CUDA torch); the pins the release itself makes must be the same in the file.
* torch: the SAME versions. PyPI's torch 2.14.1 wheel is the CUDA 13.0 build, which also runs
  on a CPU, so tests and image use one wheel; what must agree on the image's side is the CUDA
  of the base image (13.0), checked against the CUDA runtime the test venv's torch pulled in.
  torchaudio is only in the image (audio nodes; optional in tests). torchaudio 2.11.0 declares
  no torch pin and its extensions use torch's stable ABI (abi3): checked by loading it beside
  torch 2.14.1 and running its compiled ops (lfilter, forced_align) on 2026-11-28.
* What the test copy leaves out of ComfyUI's requirements.txt: only torch, torchvision (the
  caller installs them at the test pins), torchaudio, and packages ComfyUI itself lists under
  "non essential dependencies" (kornia, spandrel: the Canny and upscale-model nodes, which no
  test uses, log an import warning). The image installs the whole file.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.comfy_env import comfy_cache

ROOT = Path(__file__).resolve().parents[2]


def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG ([A-Z_]+)=(\S+)$", (ROOT / "Dockerfile").read_text(), flags=re.M))


def versions_sh() -> dict[str, str]:
    script = f'. "{ROOT / "scripts" / "versions.sh"}"; env'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, env={}).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def pins(text: str) -> dict[str, str]:
    return {name.lower(): version for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, flags=re.M)}


def test_comfyui_version_agrees_with_scripts_versions_sh():
    assert dockerfile_args()["COMFYUI_VERSION"] == versions_sh()["COMFYUI_VERSION"]


def test_cached_test_comfyui_is_that_version():
    version_file = (comfy_cache() / "ComfyUI" / "comfyui_version.py").read_text()
    assert f'__version__ = "{versions_sh()["COMFYUI_VERSION"]}"' in version_file


def test_torch_and_torchvision_are_the_test_pins():
    args, shared = dockerfile_args(), versions_sh()
    assert (args["TORCH_VERSION"], args["TORCHVISION_VERSION"]) == (
        shared["TEST_TORCH_VERSION"], shared["TEST_TORCHVISION_VERSION"])


def test_cuda_base_matches_the_cuda_of_the_pinned_torch_wheel():
    base = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(base|runtime|cudnn-runtime)-ubuntu\d+\.\d+",
                        dockerfile_args()["CUDA_IMAGE"])
    assert base, dockerfile_args()["CUDA_IMAGE"]
    runtimes = list((comfy_cache() / "venv").glob("lib/python3*/site-packages/nvidia_cuda_runtime*.dist-info"))
    assert len(runtimes) == 1, "the test venv's torch should have pulled in nvidia-cuda-runtime"
    torch_cuda = re.search(r"-(\d+)\.(\d+)\.", runtimes[0].name).groups()
    assert base.groups()[:2] == torch_cuda


def test_pins_made_by_the_comfyui_release_are_the_same_in_the_cpu_requirements():
    release = pins((comfy_cache() / "ComfyUI" / "requirements.txt").read_text())
    cpu = pins((ROOT / "builder" / "comfyui-cpu-requirements.txt").read_text())
    assert release, "ComfyUI's requirements.txt pins its frontend packages"
    assert {name: cpu.get(name) for name in release} == release


def test_image_installs_comfyui_and_nodes_through_the_builder_scripts():
    dockerfile = (ROOT / "Dockerfile").read_text()
    step = re.search(r"^RUN (?:[^\n]*\\\n)*?[^\n]*install_comfyui\.sh[^\n]*$", dockerfile, flags=re.M)
    assert step, "no RUN step calls install_comfyui.sh"
    assert re.search(r'install_comfyui\.sh --source git --version "\$COMFYUI_VERSION"', step.group(0))
    # ComfyUI's own requirements are held at the tested pins, torch at its pins.
    assert 'PIP_CONSTRAINT="/opt/torch-constraints.txt /builder/comfyui-cpu-requirements.txt"' in step.group(0)
    assert "install_custom_nodes.py --list /builder/custom_nodes.txt" in dockerfile
    assert "ENV PIP_CONSTRAINT=/opt/torch-constraints.txt" in dockerfile


def requirement_names(text: str) -> list[str]:
    names = [re.match(r"[A-Za-z0-9_.-]+", line.strip()) for line in text.splitlines()]
    return [name.group(0).lower() for name in names if name]


def test_the_cpu_copy_leaves_out_only_torch_and_what_comfyui_calls_non_essential():
    release = (comfy_cache() / "ComfyUI" / "requirements.txt").read_text()
    essential, marker, optional = release.partition("#non essential dependencies:")
    assert marker, "ComfyUI's requirements.txt no longer marks its non-essential dependencies: recheck this test"
    cpu = set(pins((ROOT / "builder" / "comfyui-cpu-requirements.txt").read_text()))
    left_out = [name for name in requirement_names(essential) if name not in cpu]
    assert sorted(left_out) == ["torch", "torchaudio", "torchvision"]
    assert set(requirement_names(optional)) - cpu <= {"kornia", "spandrel"}
