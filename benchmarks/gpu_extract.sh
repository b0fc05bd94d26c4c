#!/usr/bin/env bash
# The GPU check of benchmarks/README.md: the extract benchmark with the ResNet-50-sized
# model on CUDA, 1/2/4/8 reader threads and processes, float32 and bfloat16. Runs on a
# bare GPU machine whose python3 has torch: the wheels in .whl/ (openslide-python,
# openslide-bin, imagecodecs) and benchmarks/out/texture.png travel with it. Figures go
# to $OUT (or benchmarks/out/).
set -uo pipefail
OUT=${OUT:-benchmarks/out}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "cores: $(nproc); $(python3 -c 'import torch, numpy; print("torch", torch.__version__, "numpy", numpy.__version__)')"
timeout "${BENCH_TIMEOUT:-400}" python3 benchmarks/bench_extract.py --device cuda --size 20000 \
    --models resnet50 --workers 1,2,4,8 --readers threads,processes \
    --precisions float32,bfloat16 --rounds 1 --split-tiles 2048 --check \
    2>&1 | tee "$OUT/extract_cuda.log"
cp benchmarks/out/extract_cuda.json "$OUT/" 2>/dev/null || true
