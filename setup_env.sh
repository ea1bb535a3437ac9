#!/usr/bin/env bash
# Create or reuse the project's virtual environment and install what cogcot needs, in the one order
# that works on a CPU-only machine: torch first (kept if present), DeepSpeed without build isolation
# (its isolated build would pull a multi-GB CUDA torch), then this package in editable mode.
# Sourced by finetune/run.sh and tests/run.sh; a second run only checks and starts in seconds.
# Environment: COGCOT_VENV (default .venv at the repo root), COGCOT_PYTHON (default python3),
# COGCOT_TORCH_SPEC (default torch==2.13.0 without CUDA, plain "torch" with CUDA), COGCOT_NO_INSTALL=1.

_cogcot_root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_cogcot_venv="${COGCOT_VENV:-$_cogcot_root/.venv}"
_cogcot_stamp="$_cogcot_venv/.cogcot-installed"

if [ -n "${VIRTUAL_ENV:-}" ] && [ "${COGCOT_USE_ACTIVE_VENV:-1}" = 1 ] && [ "$VIRTUAL_ENV" != "$_cogcot_venv" ]; then
    _cogcot_venv="$VIRTUAL_ENV"; _cogcot_stamp="$_cogcot_venv/.cogcot-installed"
fi

if [ ! -x "$_cogcot_venv/bin/python" ]; then
    echo "[setup] creating virtual environment at $_cogcot_venv"
    "${COGCOT_PYTHON:-python3}" -m venv "$_cogcot_venv" || { echo "[setup] could not create $_cogcot_venv" >&2; return 1 2>/dev/null || exit 1; }
fi
# shellcheck disable=SC1091
. "$_cogcot_venv/bin/activate"

# Re-install when setup.py changed since the last successful install (COGCOT_NO_INSTALL=1: use the
# environment exactly as it is, e.g. one shared by several checkouts).
if [ "${COGCOT_NO_INSTALL:-0}" != 1 ] && { [ ! -f "$_cogcot_stamp" ] || [ "$_cogcot_root/setup.py" -nt "$_cogcot_stamp" ]; }; then
    _t0=$(date +%s)
    _pip="python -m pip install --disable-pip-version-check -q"
    if ! python -c "import torch" 2>/dev/null; then
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
            _spec="${COGCOT_TORCH_SPEC:-torch}"
        else
            _spec="${COGCOT_TORCH_SPEC:-torch==2.13.0}"
        fi
        echo "[setup] installing $_spec"
        $_pip "$_spec" || { echo "[setup] torch install failed" >&2; return 1 2>/dev/null || exit 1; }
    fi
    if ! python -c "import deepspeed" 2>/dev/null; then
        echo "[setup] installing deepspeed (--no-build-isolation, keeps the torch above)"
        $_pip --no-build-isolation deepspeed || { echo "[setup] deepspeed install failed" >&2; return 1 2>/dev/null || exit 1; }
    fi
    echo "[setup] installing cogcot (editable) and its requirements"
    $_pip -e "$_cogcot_root[test]" || { echo "[setup] pip install -e . failed" >&2; return 1 2>/dev/null || exit 1; }
    touch "$_cogcot_stamp"
    echo "[setup] environment ready in $(( $(date +%s) - _t0 )) s: $_cogcot_venv"
fi
unset _cogcot_venv _cogcot_stamp _pip _spec _t0
