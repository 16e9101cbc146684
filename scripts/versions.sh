# shellcheck shell=bash
# Versions shared by the production image (Dockerfile build args) and the CPU test copy.
# tests/builder/test_versions.py checks that the Dockerfile agrees with these.
COMFYUI_VERSION="0.3.75"
# CPU tests only: the CUDA build of torch runs on the CPU; PyPI's CPU torchvision does not
# match the torch file on these machines (see docs/architecture.md).
TEST_TORCH_VERSION="2.14.1"
TEST_TORCHVISION_VERSION="0.29.1"
export COMFYUI_VERSION TEST_TORCH_VERSION TEST_TORCHVISION_VERSION
