#!/usr/bin/env bash
# Make sure a CPU ComfyUI for tests and local runs exists in the cache, and print its folder.
# The cache lives outside the checkout (5.5 GB) and is keyed by a hash of everything that
# decides what gets installed, so a change of pins builds a new one and old ones are reused.
#
# Output: one line, the cache folder; it holds ComfyUI/ (the tree) and venv/ (its Python).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/versions.sh
. "$root/scripts/versions.sh"
home="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
cache_root="${COMFY_WORKER_CACHE:-$home/.cache/comfy-worker}"
key="$( { echo "$COMFYUI_VERSION $TEST_TORCH_VERSION $TEST_TORCHVISION_VERSION";
          cat "$root/builder/install_comfyui.sh" "$root/builder/comfyui-cpu-requirements.txt"; } \
        | sha256sum | cut -c1-16)"
target="$cache_root/comfyui-cpu-$key"

mkdir -p "$cache_root"
exec 9>"$cache_root/.lock-$key"
flock 9   # several test runs may start at once: one builds, the others wait and reuse
if [ ! -f "$target/.complete" ]; then
  echo "ensure_test_comfyui: building $target (once per machine; a few minutes)" >&2
  rm -rf "$target"
  mkdir -p "$target"
  python3.11 -m venv "$target/venv" 2>/dev/null || python3 -m venv "$target/venv"
  "$target/venv/bin/pip" install --quiet --upgrade pip >&2
  "$target/venv/bin/pip" install --quiet "torch==$TEST_TORCH_VERSION" "torchvision==$TEST_TORCHVISION_VERSION" >&2
  "$root/builder/install_comfyui.sh" --version "$COMFYUI_VERSION" --dest "$target/ComfyUI" \
      --source horde-wheel --python "$target/venv/bin/python" >&2
  touch "$target/.complete"
fi
echo "$target"
