#!/usr/bin/env bash
# Run the worker once on test_input.json against a local CPU ComfyUI (installed when missing).
# Extra arguments go to handler.py, e.g. --test_input '{"input": {...}}' or --rp_serve_api.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/bootstrap.sh
. "$root/scripts/bootstrap.sh"
# The cached ComfyUI tree is shared; run on a private copy so its input/output folders stay ours.
workdir="${COMFY_LOCAL_DIR:-$root/.venv/comfyui-local}"
if [ ! -f "$workdir/main.py" ]; then
  mkdir -p "$workdir"
  cp -r "$COMFY_TEST_CACHE/ComfyUI/." "$workdir/"
fi
export COMFY_PATH="$workdir"
export COMFY_ARGS="${COMFY_ARGS:---cpu}"
exec "$root/.venv/bin/python" -u "$root/handler.py" "$@"
