#!/usr/bin/env bash
# One script for the first minutes on a machine with one NVIDIA GPU: install, run the CUDA
# tests, train each paper preset a few steps (images/s, MFU, peak memory), sample the
# cascade, write a JSON result. Under 8 minutes on an H100/H200 (the install is most of it).
#
#   benchmarks/gpu_check.sh [OUT.json]          # default benchmarks/results/gpu-check-DATE.json
#   GPU_CHECK_FAKE_SMALL=1 benchmarks/gpu_check.sh OUT.json
#                                               # CPU, tiny presets, no install: checks the script
#
# Environment:
#   GPU_CHECK_VENV=DIR      venv to create/use (default /tmp/pixcade-gpu-venv)
#   GPU_CHECK_PYTHON=PATH   use this interpreter as it is (no venv, no install), e.g. an
#                           offline machine where pixcade and torch are already installed
#   GPU_CHECK_WHEELS=DIR    install from these wheels only (pip --no-index --find-links DIR)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$REPO/benchmarks/results/gpu-check-$(date -u +%Y-%m-%d).json}"
START=$(date +%s)

if [[ -n "${GPU_CHECK_FAKE_SMALL:-}" || -n "${GPU_CHECK_PYTHON:-}" ]]; then
    PY="${GPU_CHECK_PYTHON:-python3}"
else
    VENV="${GPU_CHECK_VENV:-/tmp/pixcade-gpu-venv}"
    PIP_SOURCE=()
    [[ -n "${GPU_CHECK_WHEELS:-}" ]] && PIP_SOURCE=(--no-index --find-links "$GPU_CHECK_WHEELS")
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
    PY="$VENV/bin/python"
    "$PY" -m pip install -q --upgrade pip
    # torch from PyPI is the CUDA build on Linux x86-64; pixcade with its test extra.
    "$PY" -m pip install -q "${PIP_SOURCE[@]}" "torch>=2.13,<3" -e "$REPO[test]"
    # The peers' install line of benchmarks/README.md (no dependencies, so torch stays), plus
    # requests: diffusers imports it and, installed --no-deps, does not bring it.
    "$PY" -m pip install -q "${PIP_SOURCE[@]}" --no-deps imagen-pytorch==2.1.0 diffusers einops beartype \
        importlib-metadata zipp
    "$PY" -m pip install -q "${PIP_SOURCE[@]}" requests
    "$PY" -c "import diffusers, imagen_pytorch" || echo "gpu_check: a peer does not import (benchmarks/run.py shows n/a for it)" >&2
fi
echo "gpu_check: setup took $(( $(date +%s) - START )) s" >&2

ARGS=(--json "$OUT")
[[ -n "${GPU_CHECK_FAKE_SMALL:-}" ]] && ARGS+=(--fake-small)
cd "$REPO"
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PY" benchmarks/gpu_check.py "${ARGS[@]}"
echo "gpu_check: done in $(( $(date +%s) - START )) s; result in $OUT" >&2
