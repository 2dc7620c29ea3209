#!/usr/bin/env bash
set -u
t0=$(date +%s)
mkdir -p /tmp/ft && tar -xJf .device/s1/pub.tar.xz -C /tmp/ft && tar -xJf .device/overlay4.tar.xz -C /tmp/ft
mkdir -p /tmp/art && tar -xJf .device/art2.tar.xz -C /tmp/art
echo "== hf_equality $(( $(date +%s) - t0 ))s"
timeout 150 python3 tests/device/hf_equality.py /tmp/art/eq --json $OUT/hf_equality.json --finetune /tmp/ft/finetune > $OUT/hf_equality.txt 2>&1; echo "rc=$?"
tail -30 $OUT/hf_equality.txt
echo "== done $(( $(date +%s) - t0 ))s"
