#!/usr/bin/env python3
"""Summarise a decode run's kernels from Nsight Systems' cuda_gpu_trace report (CSV, `nsys stats --report
cuda_gpu_trace --format csv`, with --cuda-graph-trace=node so the replayed graph's kernels appear one by one).

A decode step ends with the greedy pick (the argmax kernels); the script takes the steady steps (the middle half
of them), and prints per step: its span (first kernel's start to the last one's end), the kernels' busy time
(their durations summed; with programmatic dependent launches kernels overlap, so busy can exceed the span),
and per kernel name its launches a step and mean duration. Usage: graph_trace_summary.py TRACE.csv
"""
import csv
import statistics
import sys


def column(header, prefix):
    return next(i for i, h in enumerate(header) if h.startswith(prefix))


def main(path):
    rows = list(csv.reader(open(path)))
    head = next(i for i, r in enumerate(rows) if r and r[0].startswith('Start'))
    header = rows[head]
    start, dur, name = column(header, 'Start'), column(header, 'Duration'), column(header, 'Name')
    kernels = []
    for r in rows[head + 1:]:
        if len(r) <= name or not r[start].replace('.', '').isdigit():
            continue
        n = r[name]
        if n.startswith('[CUDA'):  # memcpy / memset rows
            continue
        kernels.append((float(r[start]), float(r[dur]), n.split('(')[0]))
    kernels.sort()
    steps, current = [], []
    for i, k in enumerate(kernels):
        current.append(k)
        nxt = kernels[i + 1][2] if i + 1 < len(kernels) else ''
        if 'argmax' in k[2] and 'argmax' not in nxt:
            steps.append(current)
            current = []
    if len(steps) < 4:
        print(f'{path}: {len(steps)} steps found (need 4)')
        return
    # decode steps share one kernel sequence; the prefill's differs: keep the most common length, middle half
    common = statistics.mode(len(s) for s in steps)
    steady = [s for s in steps if len(s) == common]
    steady = steady[len(steady) // 4: len(steady) - len(steady) // 4] or steady
    spans = [(s[-1][0] + s[-1][1] - s[0][0]) / 1000 for s in steady]
    busy = [sum(k[1] for k in s) / 1000 for s in steady]
    print(f'{path}: {len(steps)} steps, {len(steady)} steady of {common} kernels; step span median {statistics.median(spans):.1f} us, '
          f'kernel busy median {statistics.median(busy):.1f} us')
    per = {}
    for s in steady:
        for k in s:
            per.setdefault(k[2], []).append(k[1] / 1000)
    for n, ds in sorted(per.items(), key=lambda kv: -sum(kv[1])):
        print(f'  {n:40s} {len(ds) / len(steady):6.1f} a step  mean {statistics.mean(ds):8.2f} us  '
              f'total {sum(ds) / len(steady):8.1f} us a step')


if __name__ == '__main__':
    main(sys.argv[1])
