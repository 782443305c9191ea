"""Optimised against unoptimised programs: the graph passes' (and the memory plan's) effect on
inference and the training step, in one process.

    python tools/bench_passes.py                  # LeNet-5 b256, ResNet-34 64px b16 and 224px b8
    python tools/bench_passes.py --repeats 11 --cases lenet

Each case compiles the network three ways with the same weights: no graph passes and no memory
plan (one buffer per tensor), no passes with the plan, and the default passes with the plan.
Median of --repeats after warm-up runs; the ratio is the plain time over the optimised one
(above 1: the optimised program is faster).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import netspec  # noqa: E402
from bench_cpu import median_ms  # noqa: E402

CASES = [
    ("lenet5 1@32x32 b256", "specs/lenet5.net", {}, 256, ("infer", "train")),
    ("resnet34 3@64x64 b16", "specs/resnet34.net", {"classes": 10, "input_shape": (3, 64, 64)}, 16,
     ("infer", "train")),
    ("resnet34 3@224x224 b8", "specs/resnet34.net", {"classes": 10, "input_shape": (3, 224, 224)}, 8,
     ("infer",)),
]
VARIANTS = [("plain", [], False), ("plan only", [], True), ("optimised", None, True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    rows = []
    for name, spec, load, batch, modes in CASES:
        if args.cases and args.cases not in name:
            continue
        net = netspec.load(spec, **load)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, *net.graph.node(net.graph.inputs[0]).shape)).astype(np.float32)
        classes = net.graph.node(net.graph.outputs[0]).shape[0]
        y = rng.integers(0, classes, batch)
        models = {label: net.compile(passes=passes, plan_memory=plan) for label, passes, plan in VARIANTS}
        weights = models["plain"].state_dict()
        for m in models.values():
            m.set_weights(weights)
        for mode in modes:
            times = {}
            for label, m in models.items():
                fn = (lambda m=m: m.predict(x)) if mode == "infer" else (lambda m=m: m.loss_and_grads(x, y))
                times[label] = median_ms(fn, args.warmup, args.repeats)
            rows.append((name, mode, times))
            print(f"  {name} {mode}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in times.items()), flush=True)
        del models
    print(f"\nmedian of {args.repeats} after {args.warmup} warm-up run(s); float32\n")
    labels = [v[0] for v in VARIANTS]
    print(f"{'case':<24}{'mode':<7}" + "".join(f"{lab + ' ms':>14}" for lab in labels) + f"{'plain/opt':>11}")
    for name, mode, t in rows:
        print(f"{name:<24}{mode:<7}" + "".join(f"{t[lab]:>14.1f}" for lab in labels)
              + f"{t['plain'] / t['optimised']:>11.2f}")


if __name__ == "__main__":
    main()
