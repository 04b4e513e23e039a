#!/usr/bin/env bash
# One prepared GPU check for a lent CUDA machine (under 5 minutes):
#   1. parity tests: every backend against the CPU torch reference (outputs, gradients,
#      decoded pictures), with CUDA present so the CUDA cases run instead of skipping;
#   2. renderer timings, CUDA next to the CPU backends;
#   3. a short encode on CUDA and its decode on the CPU.
# Usage: bash benchmarks/gpu_check.sh   (after scripts/setup.sh; OUT=dir keeps logs)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.cuda.get_device_name(0), torch.__version__)" || exit 1
status=0
timeout 150 "$PY" -m pytest -q -rs tests/test_render_backends.py tests/test_codec.py -k "cuda or backend" 2>&1 | tee "$OUT/parity.txt" || status=1
timeout 120 "$PY" benchmarks/render.py --backends torch-cuda,numba --counts 1000,9000,50000 \
  --sizes 768x512,1920x1080 --repeats 10 --max-seconds 20 2>&1 | tee "$OUT/render.txt" || status=1
timeout 60 "$PY" -m gsvc encode examples/kodim03_384x256.png -o "$OUT/cuda.gsv" -y --device cuda --iterations 300 2>&1 | tail -6 | tee "$OUT/encode.txt" || status=1
"$PY" -m gsvc decode "$OUT/cuda.gsv" -o "$OUT/cuda.png" -y --device cpu && "$PY" -m gsvc info "$OUT/cuda.gsv" | tee -a "$OUT/encode.txt" || status=1
exit $status
