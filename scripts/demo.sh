#!/usr/bin/env bash
# The main job on a fresh machine: install, then train the demo sweep (S/M/L/XL) locally with the
# embedded MLflow store, fit on S/M/L, predict XL and write reports/demo/index.html.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/scaling run sweeps/demo.yaml "$@"
