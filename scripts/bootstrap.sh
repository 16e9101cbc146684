#!/usr/bin/env bash
# Shared set-up for the README's two commands, sourced by run-local.sh and test.sh:
# the project's virtualenv (.venv, in the checkout, small) and the cached CPU ComfyUI
# (outside the checkout, large). Exports COMFY_PATH and COMFY_PYTHON for that ComfyUI.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [ ! -x .venv/bin/python ]; then
  python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum < pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e ".[dispatcher,test]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi

comfy_cache="$("$root/scripts/ensure_test_comfyui.sh")"
export COMFY_TEST_CACHE="$comfy_cache"
export COMFY_PYTHON="$comfy_cache/venv/bin/python"
