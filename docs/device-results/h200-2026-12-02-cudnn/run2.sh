#!/usr/bin/env bash
set -u
t0=$(date +%s)
mkdir -p /tmp/ft && tar -xJf .device/s1/pub.tar.xz -C /tmp/ft && tar -xJf .device/overlay2.tar.xz -C /tmp/ft
FT=/tmp/ft
echo "== cudnn $(( $(date +%s) - t0 ))s"
timeout 150 $FT/FineTune.DeviceChecks cudnn $OUT > $OUT/cudnn.txt 2> $OUT/cudnn.err; echo "rc=$?"
grep -v "^{" $OUT/cudnn.txt | head -5
python3 -c "
import json
for r in json.load(open('$OUT/cudnn.json')):
    print(r['shape'], 'pass', r['pass'], 'rel', r.get('rel_l2'), 'repeat', r.get('bit_repeat'))
    print('   flash', r['flash'], '\n   cudnn', r['cudnn'], '\n   det', r.get('deterministic_backward'), '\n   eng', {k:v.get('engine') for k,v in r['engines'].items()}, r['errors'][:2])
"
echo "== ops $(( $(date +%s) - t0 ))s"
timeout 150 $FT/FineTune.DeviceChecks ops > $OUT/ops.txt 2>&1; echo "rc=$?"
grep "FAIL" $OUT/ops.txt | head -20; grep "cudnn\|cuDNN" $OUT/ops.txt | head -40; tail -2 $OUT/ops.txt
echo "== models $(( $(date +%s) - t0 ))s"
timeout 170 $FT/FineTune.DeviceChecks models > $OUT/models.txt 2>&1; echo "rc=$?"
grep "FAIL" $OUT/models.txt | head -20; grep "model checks" $OUT/models.txt
echo "== bench $(( $(date +%s) - t0 ))s"
for mode in cudnn cudnn-fast; do
  rows="llama3-8b:1:4096:1 qwen2.5-7b:1:8192:1"; [ $mode = cudnn ] && rows="$rows qwen2.5-7b:4:2048:1 qwen3-0.6b:1:2048:1"
  FINETUNE_ATTENTION=$mode timeout 130 $FT/FineTune.DeviceChecks bench $rows --profile > $OUT/bench_$mode.jsonl 2>&1; echo "rc=$?"
  python3 -c "
import json
for l in open('$OUT/bench_$mode.jsonl'):
    try: d=json.loads(l)
    except: print(l.strip()[:300]); continue
    p=d.get('profile_ms') or {}
    top=sorted(p.items(), key=lambda kv:-kv[1])[:8]
    print('$mode', d['shape'], d['batch'], d['seq'], d.get('tokens_per_s'), d.get('peak_gib'), d.get('loss'), d.get('attention',{}).get('notes') if d.get('attention') else None, top)
"
done
echo "== done $(( $(date +%s) - t0 ))s"
