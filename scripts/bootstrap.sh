#!/usr/bin/env bash
# Creates the virtual environment and installs the project into it, once per change of
# pyproject.toml. Sourced by run.sh and test.sh so that both commands work on a fresh clone.
# Usage: source scripts/bootstrap.sh base|sandbox|test
#   base: the bot; sandbox: + the simulated Discord of `--sandbox`; test: + the test tools
#   (test holds everything sandbox does, which holds everything base does).
# The extra is always named: a sourced file sees its caller's arguments when given none,
# and run.sh's arguments are the bot's, not ours.
set -euo pipefail

_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_extra="${1:-}"
# The installs that hold everything the asked-for one does.
case "$_extra" in
    base) _enough="base sandbox test" ;;
    sandbox) _enough="sandbox test" ;;
    test) _enough="test" ;;
    *) echo "error: scripts/bootstrap.sh needs base, sandbox or test, not '${_extra}'" >&2
       exit 2 ;;
esac
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

# One stamp per pyproject.toml and extra. A larger install's stamp satisfies a smaller
# one (./test.sh then ./run.sh or ./run.sh --sandbox installs nothing).
_hash="$(sha256sum <"$_root/pyproject.toml" | cut -c1-16)"
_stamp="$VENV/.installed-$_hash-$_extra"
_installed=false
for _e in $_enough; do
    [ -f "$VENV/.installed-$_hash-$_e" ] && _installed=true
done
if [ "$_installed" = false ]; then
    echo "[setup] installing dependencies (the first time takes a few minutes: PyTorch is large)"
    _target="$_root"
    [ "$_extra" != base ] && _target="$_root[$_extra]"
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
unset _root _extra _enough _installed _e _hash _stamp _target _log
