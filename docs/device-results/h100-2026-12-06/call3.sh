#!/usr/bin/env bash
# 2026-12-06, call 3: persist_lab.py (the 1.7B GEMV chain: 113 graph launches against one persistent kernel).
set -u
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv,noheader
python3 -c "import cupy; print('cupy', cupy.__version__)"
timeout 300 python3 docs/device-results/h100-2026-12-06/persist_lab.py $OUT/persist1.json 2>&1 | tail -30
