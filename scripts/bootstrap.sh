#!/usr/bin/env bash
# Creates the virtual environment and installs the project into it, once per change of
# pyproject.toml. Sourced by run.sh and test.sh so that both commands work on a fresh clone.
# Usage: source scripts/bootstrap.sh [EXTRA]   (EXTRA is "test" for the test dependencies)
set -euo pipefail

_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_extra="${1:-}"
VENV="${VENV:-$_root/.venv}"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: Python 3.11 or newer is needed (found: $("$PYTHON" --version 2>&1 || echo none))." >&2
    echo "       Install it, or point PYTHON at one: PYTHON=/usr/bin/python3.12 $0" >&2
    exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
fi

_stamp="$VENV/.installed-$(cat "$_root/pyproject.toml" | sha256sum | cut -c1-16)-${_extra:-base}"
if [ ! -f "$_stamp" ]; then
    echo "[setup] installing dependencies (the first time takes a few minutes: PyTorch is large)"
    _target="$_root"
    [ -n "$_extra" ] && _target="$_root[$_extra]"
    _log="$VENV/install.log"
    if ! { "$VENV/bin/python" -m pip install --upgrade pip "setuptools<81" wheel \
           && "$VENV/bin/python" -m pip install -e "$_target"; } >"$_log" 2>&1; then
        tail -n 40 "$_log" >&2
        echo "error: installing the dependencies failed (full log: $_log)." >&2
        echo "       Check the network connection to the Python package index and run again." >&2
        exit 1
    fi
    rm -f "$VENV"/.installed-*
    touch "$_stamp"
    echo "[setup] done"
fi
unset _root _extra _stamp _target _log
