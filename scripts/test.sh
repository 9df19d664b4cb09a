#!/usr/bin/env bash
# Makes the project's virtual environment (scripts/venv.sh: locked versions, no system pip), then runs every
# check: generated protos current, ruff, mypy, pytest. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh ""
python -m pip --version >/dev/null
python proto/generate.py --check
python -m ruff check .
python -m ruff format --check .
python -m mypy
python -m pytest "$@"
