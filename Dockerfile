# syntax=docker/dockerfile:1.7
# The production image: ComfyUI at a pinned version, pinned custom nodes, optional baked-in
# models, and the RunPod worker. docs/deploy.md explains building, pushing and deploying.
#
#   docker build --platform linux/amd64 -t <registry>/comfy-worker:<tag> .
#   docker build --secret id=hf_token,env=HF_TOKEN ...   # only if builder/models.txt lists gated files
#
# Layout in the image (ComfyUI and the worker both have a top-level `comfy` package, so they
# never share a Python): /comfyui + /opt/comfy-venv (ComfyUI, torch, custom nodes) and
# /worker + /opt/worker-venv (handler.py, comfy/, supabase_sync/, their requirements only).

# The CUDA of the base must match the torch wheel: PyPI's torch 2.14.1 is built for CUDA 13.0
# (hosts need an NVIDIA driver >= 580). tests/builder/test_versions.py checks both agree.
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-base-ubuntu24.04

# --- what every stage shares: Python 3.12 (Ubuntu 24.04), ffmpeg, OpenCV's system libraries, git ---
FROM ${CUDA_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Unpinned Debian packages on purpose: the Ubuntu release in the base tag fixes their versions
# closely enough, and pinning them breaks the build at every Ubuntu security update.
# git: the image build fetches custom nodes, and so does the worker at boot (CUSTOM_NODES).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 python3-venv ca-certificates ffmpeg libgl1 libglib2.0-0 git \
 && rm -rf /var/lib/apt/lists/*

# --- ComfyUI, torch and the custom nodes, in their own virtualenv ---
FROM base AS comfyui
ARG COMFYUI_VERSION=0.3.75
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
# The newest torchaudio release: it declares no torch pin, and its compiled ops use torch's stable
# ABI (abi3), so they load and run with torch 2.14.1 (checked; tests/builder/test_versions.py).
ARG TORCHAUDIO_VERSION=2.11.0
# torch first, in its own layer (about 4 GB): it changes least. The same pins become pip
# constraints for everything after, so neither ComfyUI's requirements.txt (unpinned torch,
# torchvision, torchaudio) nor a custom node's requirements can move torch.
RUN python3 -m venv /opt/comfy-venv \
 && printf 'torch==%s\ntorchvision==%s\ntorchaudio==%s\n' \
      "$TORCH_VERSION" "$TORCHVISION_VERSION" "$TORCHAUDIO_VERSION" > /opt/torch-constraints.txt \
 && /opt/comfy-venv/bin/pip install -c /opt/torch-constraints.txt torch torchvision torchaudio
ENV PIP_CONSTRAINT=/opt/torch-constraints.txt
COPY builder/install_comfyui.sh builder/comfyui-cpu-requirements.txt /builder/
# ComfyUI's requirements.txt pins only its frontend packages; the rest are held at the versions
# the CPU test copy runs (comfyui-cpu-requirements.txt), so the image runs what was tested.
# pip reads several constraint files from PIP_CONSTRAINT, separated by spaces.
RUN PIP_CONSTRAINT="/opt/torch-constraints.txt /builder/comfyui-cpu-requirements.txt" \
    /builder/install_comfyui.sh --source git --version "$COMFYUI_VERSION" --dest /comfyui \
      --python /opt/comfy-venv/bin/python \
 && rm -rf /comfyui/.git
COPY builder/install_custom_nodes.py builder/custom_nodes.txt /builder/
# The list format and install steps it shares with the worker's boot-time install (comfy/nodes/).
COPY comfy/__init__.py /comfy/
COPY comfy/nodes /comfy/nodes
RUN python3 /builder/install_custom_nodes.py --list /builder/custom_nodes.txt \
      --dest /comfyui/custom_nodes --python /opt/comfy-venv/bin/python
COPY builder/extra_model_paths.yaml /comfyui/extra_model_paths.yaml

# --- models from builder/models.txt (none by default), sha256-verified ---
FROM base AS models
COPY builder/fetch_models.py builder/models.txt /builder/
COPY comfy/__init__.py /comfy/
COPY comfy/models/__init__.py comfy/models/files.py /comfy/models/
# The token is a build secret: mounted for this RUN only, never written to a layer.
RUN --mount=type=secret,id=hf_token,required=false \
    mkdir -p /models \
 && python3 /builder/fetch_models.py --manifest /builder/models.txt --models-dir /models \
      --token-file /run/secrets/hf_token

# --- the worker's requirements, in a second virtualenv, at the versions its tests ran with ---
FROM base AS worker-deps
COPY pyproject.toml builder/image_requirements.py builder/worker-constraints.txt /builder/
RUN python3 -m venv /opt/worker-venv \
 && python3 /builder/image_requirements.py --image worker /builder/pyproject.toml > /builder/worker-requirements.txt \
 && /opt/worker-venv/bin/pip install -r /builder/worker-requirements.txt -c /builder/worker-constraints.txt

# --- the image RunPod runs ---
FROM base
COPY --from=comfyui /opt/comfy-venv /opt/comfy-venv
COPY --from=comfyui /comfyui /comfyui
COPY --from=worker-deps /opt/worker-venv /opt/worker-venv
COPY --from=models /models /comfyui/models
COPY handler.py test_input.json /worker/
COPY comfy /worker/comfy
COPY supabase_sync /worker/supabase_sync
# example workflow templates, for a dispatcher run from this image (WORKFLOW_TEMPLATE_DIRS=/worker/templates)
COPY templates /worker/templates
# Runs as root: RunPod mounts the network volume (/runpod-volume) root-owned with no way to
# set a group, and ComfyUI writes to its input/, output/ and temp/ folders.
ENV COMFY_PATH=/comfyui \
    COMFY_PYTHON=/opt/comfy-venv/bin/python
WORKDIR /worker
CMD ["/opt/worker-venv/bin/python", "-u", "/worker/handler.py"]
