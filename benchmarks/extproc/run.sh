#!/usr/bin/env bash
# Installs wrk and nginx-light (Debian) if missing, makes the project's environment (scripts/venv.sh), then
# runs the ext_proc benchmark. Args go to run.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light >/dev/null
  service nginx stop >/dev/null 2>&1 || true
fi
source scripts/venv.sh ""
exec python benchmarks/extproc/run.py "$@"
