#!/usr/bin/env bash
# Call 4: the decode graph's kernels as they run inside the replayed graph (Nsight Systems, --cuda-graph-trace=node),
# if nsys can make a report on this machine: per-kernel time in the graph and the gaps between kernels.
set -u
rm -rf /tmp/x && mkdir -p /tmp/x && tar -xJf .device/s1/pub.tar.xz -C /tmp/x
export FINETUNE_KERNEL_CACHE=/tmp/kc
FT=/tmp/x/pub/finetune; R=/tmp/r4; mkdir -p $R
nvidia-smi --query-gpu=name --format=csv,noheader
NSYS=$(command -v nsys || ls /opt/nvidia/nsight-systems/*/bin/nsys /usr/local/cuda/bin/nsys /opt/nvidia/nsight-compute/*/host/target-linux-x64/nsys 2>/dev/null | head -1); echo "nsys: $NSYS"
[ -f /tmp/m17/config.json ] || python3 tests/device/hf_generate_bench.py /tmp/m17 --make-model > $R/m17.json 2>&1
timeout 150 $NSYS profile --trace=cuda --cuda-graph-trace=node --sample=none --cpuctxsw=none -o $R/dec -f true \
  $FT bench --generate --device cuda --model /tmp/m17 --batches 1 --prompts 2 --prompt-len 64 --new-tokens 64 > $R/nsys.out 2>&1
echo "nsys rc=$?"; tail -5 $R/nsys.out; ls -la $R
timeout 120 $NSYS stats --report cuda_gpu_trace --format csv --output $R/trace $R/dec.nsys-rep > $R/stats.out 2>&1; echo "stats rc=$?"; tail -3 $R/stats.out
ls $R; rm -f $R/*.qdstrm; tar -cJf $OUT/call4.tar.xz -C $R --exclude='*.nsys-rep' --exclude='*.sqlite' .
