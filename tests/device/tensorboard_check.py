#!/usr/bin/env python3
"""Loads a FineTune train stage's TensorBoard event files with tensorboard's own EventAccumulator and checks them
against the stage's trainer_log.jsonl.

usage: python3 tests/device/tensorboard_check.py <train output dir>

The train output is what `finetune path <pipeline> --stage train` prints for a pipeline whose train block has
`report_to: tensorboard` (or `all`), e.g. on the GPU machine:
    cp -r pipelines/identity /tmp/tb && sed -i 's/^    plot_loss: true/    plot_loss: true\n    report_to: tensorboard/' /tmp/tb/pipeline.yaml
    ./finetune run /tmp/tb --stage train && python3 tests/device/tensorboard_check.py "$(./finetune path /tmp/tb --stage train)"
Prints every scalar series (tag, steps, first and last value) and exits non-zero when a check fails.
"""
import json
import math
import os
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main(output_dir):
    runs = os.path.join(output_dir, "runs")
    acc = EventAccumulator(runs, size_guidance={"scalars": 0})
    acc.Reload()
    tags = sorted(acc.Tags()["scalars"])
    print(f"{runs}: {len(tags)} scalar tags")
    series = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags}
    for t in tags:
        s = series[t]
        print(f"  {t:32} {len(s):4} points  steps {s[0][0]}..{s[-1][0]}  {s[0][1]:.6g} -> {s[-1][1]:.6g}")

    log = [json.loads(l) for l in open(os.path.join(output_dir, "trainer_log.jsonl")) if l.strip()]
    failures = []

    def check(tag, key):
        want = [(e["current_steps"], e[key]) for e in log if key in e and e.get(key) is not None]
        got = series.get(tag, [])
        if len(want) != len(got):
            failures.append(f"{tag}: {len(got)} points, trainer_log.jsonl has {len(want)} {key} values")
            return
        for (ws, wv), (gs, gv) in zip(want, got):
            # TensorBoard keeps simple_value as float32.
            if ws != gs or not math.isclose(wv, gv, rel_tol=1e-6, abs_tol=1e-12):
                failures.append(f"{tag} at step {gs}: {gv}, trainer_log.jsonl step {ws}: {wv}")
                return

    train_lines = [e for e in log if e.get("loss") is not None]
    for tag, key in [("train/loss", "loss"), ("train/learning_rate", "lr"), ("train/grad_norm", "grad_norm")]:
        check(tag, key)
    if any(e.get("eval_loss") is not None for e in log):
        check("eval/loss", "eval_loss")
    epochs = series.get("train/epoch", [])
    if len(epochs) != sum(1 for e in log if e.get("epoch") is not None):
        failures.append(f"train/epoch: {len(epochs)} points")
    if "train/train_loss" not in series:
        failures.append("train/train_loss missing (logged when training ends)")
    if not train_lines:
        failures.append("trainer_log.jsonl has no training lines")

    for f in failures:
        print("FAIL", f)
    print("tensorboard check:", "FAIL" if failures else "PASS")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
