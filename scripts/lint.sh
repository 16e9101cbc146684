#!/usr/bin/env bash
# hadolint on the Dockerfile, shellcheck on every shell script. Installs shellcheck when missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if ! command -v shellcheck >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq shellcheck) >/dev/null
fi
mapfile -t scripts < <(git ls-files --cached --others --exclude-standard '*.sh' .ci/run)
shellcheck -x "${scripts[@]}"
if [ -f Dockerfile ]; then
  .venv/bin/hadolint Dockerfile
fi
echo "lint: shellcheck (${#scripts[@]} scripts) and hadolint clean"
