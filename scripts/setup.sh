#!/usr/bin/env bash
# Creates .venv with the project installed. Here (no GPU) torch is the CPU wheel 2.13.0 that lies on
# disk; on a GPU machine set TORCH_SPEC (e.g. TORCH_SPEC=torch) to let pip pick your CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install -q -e ".${extras}"
