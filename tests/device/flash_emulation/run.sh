#!/usr/bin/env bash
# Checks flash_attention.cu without a GPU (see README.md here): clang's CUDA front end for syntax and types, then the
# kernels' own source in a CPU emulation against a double-precision reference. Needs g++, python3, and clang (llvm 14+).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"; kernels="$here/../../../src/FineTune.Engine/Cuda/Kernels"
build="${TMPDIR:-/tmp}/flash_emulation"; mkdir -p "$build"
clang="$(command -v clang++ || ls /usr/lib/llvm-*/bin/clang++ 2>/dev/null | tail -1)"
"$clang" -x cuda --cuda-device-only --cuda-gpu-arch=sm_80 -nocudainc -nocudalib -std=c++17 -O3 \
  -include "$here/clang_prelude.h" -S -o "$build/flash.ptx" "$kernels/flash_attention.cu"
echo "clang: $(grep -c '^.visible .entry' "$build/flash.ptx") kernels"
python3 "$here/prep.py" "$build/flash_emu.inc"
g++ -O2 -std=c++17 -w -I"$here" -I"$build" -o "$build/emu" "$here/driver.cpp"
g++ -O2 -std=c++17 -w -I"$here" -I"$build" -o "$build/fwd_cache" "$here/fwd_cache.cpp"
# B T Hq Hkv D window cap packed magnitude [tile] [warps, head_dim 256]
while read -r c; do echo "== $c"; "$build/emu" $c; done <<'CASES'
1 130 2 1 64 0 0 1 1
2 300 4 2 64 100 20 1 4
1 300 4 2 128 0 50 1 5
2 300 4 2 128 77 0 1 1 32
1 300 2 1 128 65 0 0 1 32
1 200 2 1 256 0 0 1 1
2 250 4 2 256 70 0 1 1
1 250 4 2 256 50 30 1 5
1 190 2 2 256 33 5 1 3
2 300 4 2 256 70 30 1 4 32 8
1 190 2 2 256 0 0 1 1 32 8
CASES
# QL KL D window cap
for c in "3 600 256 256 50" "70 300 64 90 10" "100 400 256 130 0"; do "$build/fwd_cache" $c; done
