"""Compares `finetune forward --objective` (FineTune) with tests/device/pref_reference.py (transformers + peft, fp32).

    python3 tests/device/pref_compare.py finetune.json reference.json [--tol 1e-4]

Loss and metrics must agree within --tol (relative, at least absolute 1e-6); every gradient FineTune reports must
have a reference of the same name (PEFT's parameter names without the adapter name "default" and the
"modules_to_save" wrapper) whose norm and first values agree within --tol relative to the gradient's norm (at least
1e-4 of the whole gradient's norm, for gradients that are zero in exact arithmetic).
Prints one line per check and exits 1 on any mismatch."""
import json
import math
import sys


def norm_name(n):
    return n.replace(".default.", ".").replace(".modules_to_save.", ".").replace(".original_module.", ".")


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    tol = float(sys.argv[sys.argv.index("--tol") + 1]) if "--tol" in sys.argv else 1e-4
    if "--tol" in sys.argv:
        args.remove(sys.argv[sys.argv.index("--tol") + 1])
    ft, ref = (json.load(open(p)) for p in args[:2])
    bad = []

    def close(name, a, b, scale=None):
        s = max(abs(b), 1e-6) if scale is None else max(scale, 1e-12)
        ok = abs(a - b) <= tol * s
        if not ok:
            bad.append(name)
        return ok

    print(f"loss {ft['loss']:.8f} vs {ref['loss']:.8f}: {'ok' if close('loss', ft['loss'], ref['loss']) else 'MISMATCH'}")
    for k, v in ft["metrics"].items():
        if k in ref["metrics"]:
            r = ref["metrics"][k]
            print(f"  {k} {v:.6f} vs {r:.6f}: {'ok' if close(k, v, r, max(1.0, abs(r))) else 'MISMATCH'}")
    refs = {norm_name(n): g for n, g in ref["gradients"].items()}
    # A gradient that is zero in exact arithmetic (the reward model's bias: the loss reads only chosen − rejected scores)
    # is rounding noise in both; it is measured against the whole gradient's norm instead of its own.
    floor = 1e-4 * ref["grad_norm"]
    worst = 0.0
    for n, g in ft["gradients"].items():
        r = refs.get(norm_name(n))
        if r is None:
            bad.append(n)
            print(f"  {n}: no reference gradient")
            continue
        scale = max(r["norm"], floor, 1e-12)
        rel = max([abs(g["norm"] - r["norm"]) / scale] + [abs(a - b) / scale for a, b in zip(g["first"], r["first"])])
        worst = max(worst, rel)
        if rel > tol:
            bad.append(n)
            print(f"  {n}: norm {g['norm']:.6e} vs {r['norm']:.6e}, worst relative difference {rel:.2e} MISMATCH")
    print(f"{len(ft['gradients'])} gradients, worst relative difference {worst:.2e}; grad_norm {ft['grad_norm']:.6e} vs {ref['grad_norm']:.6e}")
    print("all equal" if not bad else f"{len(bad)} mismatches: {', '.join(bad[:10])}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
