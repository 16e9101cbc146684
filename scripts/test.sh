#!/usr/bin/env bash
# Run every check: lint of the Dockerfile and shell scripts, then the whole pytest suite
# (which starts its own CPU ComfyUI and PostgreSQL). Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/bootstrap.sh
. "$root/scripts/bootstrap.sh"
"$root/scripts/lint.sh"
exec "$root/.venv/bin/python" -m pytest "$@"
