#!/usr/bin/env bash
# Everything the tests need on a fresh Debian 12 machine (as root), then the whole suite:
# Debian packages (SLURM + munge + MariaDB for the dev cluster, Chromium for the report test),
# the Python environment with the dev extras (pytest, hypothesis, ruff, Ray Tune), the dev SLURM cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
if [ ! -f /var/lib/apt/lists/.scaling-updated ] || [ -n "$(find /var/lib/apt/lists/.scaling-updated -mmin +1440)" ]; then
    apt-get update -q >/dev/null && touch /var/lib/apt/lists/.scaling-updated
fi
apt-get install -y -q chromium >/dev/null
bash slurm/dev-cluster.sh install
bash scripts/setup.sh "[dev]"
bash slurm/dev-cluster.sh start
.venv/bin/ruff check scaling tests benchmarks
.venv/bin/python -m pytest -q "$@"
