#!/usr/bin/env bash
# Checks on one H100/H200, each a few minutes; each writes its section of docs/benchmarks.md.
#   scripts/gpu_check.sh dsa   the DSA kernels: correctness against the reference on CUDA, TFLOP/s of sparse
#                              prefill forward, backward and decode at V3.2's shapes, sparse vs dense flash
#                              prefill from 2K to 64K tokens ("dsa gpu"); further arguments go to benchmarks.dsa_gpu
#   scripts/gpu_check.sh byo   configs/byo.yaml in bf16 on CUDA, generation on our engine and on vLLM, wall
#                              time and peak GPU memory per stage ("byo gpu"; vLLM needs its CUDA build in .venv-vllm)
#   scripts/gpu_check.sh       both
#   PYTHON   an interpreter with a CUDA torch and triton (default: .venv/bin/python, else python3)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PART="${1:-all}"
[[ $# -gt 0 ]] && shift
case "$PART" in
  dsa|byo|all) ;;
  *) echo "usage: scripts/gpu_check.sh [dsa|byo|all] [benchmarks.dsa_gpu arguments]" >&2; exit 2 ;;
esac
PYTHON="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}"
export TRITON_DEFAULT_FP_FUSION=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
unset TRITON_INTERPRET
"$PYTHON" -c "import sys, torch
sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh: torch sees no CUDA device (torch ' + torch.__version__ + ')')"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
if [[ "$PART" != byo ]]; then
  PYTHONPATH="$ROOT" "$PYTHON" -m benchmarks.dsa_gpu --device cuda "$@"
fi
if [[ "$PART" != dsa ]]; then
  DISTILLERY_DEVICE=cuda PYTHONPATH="$ROOT" "$PYTHON" -m benchmarks.byo_gpu
fi
