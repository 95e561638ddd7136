#!/usr/bin/env bash
# The DSA kernels on one H100/H200 (a few minutes): correctness against the reference on CUDA,
# TFLOP/s of sparse prefill forward, backward and decode at V3.2's shapes, sparse vs dense flash
# prefill from 2K to 64K tokens; writes the "dsa gpu" section of docs/benchmarks.md.
#   PYTHON   an interpreter with a CUDA torch and triton (default: .venv/bin/python, else python3)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}"
export TRITON_DEFAULT_FP_FUSION=1
unset TRITON_INTERPRET
"$PYTHON" -c "import sys, torch
sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh: torch sees no CUDA device (torch ' + torch.__version__ + ')')"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
PYTHONPATH="$ROOT" "$PYTHON" -m benchmarks.dsa_gpu --device cuda "$@"
