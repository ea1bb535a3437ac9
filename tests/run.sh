#!/usr/bin/env bash
# The README's test command: set up the environment if needed, then run pytest on the tiny models.
# Extra arguments go to pytest (e.g. `bash tests/run.sh -k kv_cache -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
. ./setup_env.sh
exec python -m pytest "$@"
