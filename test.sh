#!/usr/bin/env bash
# Runs the test suite: sets up the virtual environment with the test extra, then pytest.
# Offline, CPU only, tiny random models. Extra arguments go to pytest (e.g. ./test.sh -k prompts).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh test
exec "$VENV/bin/python" -m pytest "$@"
