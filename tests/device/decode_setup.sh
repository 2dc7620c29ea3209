# Sourced by the decode scripts (decode_pdl.sh, decode_gemv.sh), which take
#   <finetune single-file binary> <FineTune.DeviceChecks single-file binary> <out dir> [qwen3-1.7b dir] [llama3-8b dir]
# Sets ft, dc, out, here, rc, m17, m8; writes a model dir not given (or without config.json) by hf_generate_bench.py
# --make-model (random bf16 weights; the 8B one is 16 GB and takes minutes; "-" as the 8B dir skips that shape); points
# the kernel cache into <out dir> unless set; compiles the decode kernels (rc=1 on failure).
set -uo pipefail
ft=$(realpath "$1"); dc=$(realpath "$2"); out=$3; here=$(dirname "$0"); rc=0
mkdir -p "$out"
m17=${4:-$out/m17}; m8=${5:-$out/m8}
[ -f "$m17/config.json" ] || python3 "$here/hf_generate_bench.py" "$m17" --make-model | tee "$out/m17.json"
[ "$m8" = - ] || [ -f "$m8/config.json" ] || python3 "$here/hf_generate_bench.py" "$m8" --make-model --shape llama3-8b | tee "$out/m8.json"
export FINETUNE_KERNEL_CACHE=${FINETUNE_KERNEL_CACHE:-$out/kernel-cache}
"$dc" compile sm_90 decode.cu,gemv.cu,kv_cache.cu 2>&1 | tee "$out/compile.txt" || rc=1
