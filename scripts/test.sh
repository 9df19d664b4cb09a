#!/usr/bin/env bash
# Installs what the tests need, then runs every check: generated protos current, ruff, mypy, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --disable-pip-version-check -q -e '.[test]'
python3 proto/generate.py --check
python3 -m ruff check .
python3 -m ruff format --check .
python3 -m mypy
python3 -m pytest "$@"
