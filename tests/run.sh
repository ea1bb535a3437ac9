#!/usr/bin/env bash
# The README's test command: set up the environment if needed (the package with its [test] extra, and
# Debian's chromium for the browser tests of the board), then run pytest on the tiny models.
# Extra arguments go to pytest (e.g. `bash tests/run.sh -k kv_cache -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
. ./setup_env.sh
# The board's tests drive a real headless browser; install Debian's chromium when it is absent and we
# may (root, apt-get present). Without it those tests skip and say why.
if ! command -v chromium >/dev/null 2>&1 && [ -z "${COGCOT_BROWSER:-}" ] && [ "${COGCOT_NO_INSTALL:-0}" != 1 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "[setup] installing chromium (Debian package) for the browser tests"
        { apt-get install -y -q chromium >/dev/null 2>&1 \
          || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; } \
          || echo "[setup] could not install chromium: the browser tests will skip" >&2
    else
        echo "[setup] no chromium and no root to install it: the browser tests will skip" >&2
    fi
fi
exec python -m pytest "$@"
