"""Where a compiled network's time goes, per kernel: `python tools/profile_program.py SPEC
[--batch N] [--input C@HxW] [--set k=v] [--phase train|infer] [--repeats N]`."""

from __future__ import annotations

import argparse
import time

import numpy as np

import netspec
from netspec.lang.elaborate import parse_value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--input", dest="input_shape")
    ap.add_argument("--set", action="append", default=[], metavar="K=V")
    ap.add_argument("--phase", default="train", choices=["train", "infer"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    params = {k: parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
    net = netspec.load(args.spec, input_shape=args.input_shape, **params)
    model = net.compile(training=args.phase == "train")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, *net.graph.node(net.graph.inputs[0]).shape)).astype(np.float32)
    batch, feeds = model._feeds(x)
    if args.phase == "train":
        t = model._dummy_target()
        y = np.zeros(args.batch, np.int64) if t.dtype.kind == "i" else \
            np.zeros((args.batch, *t.shape[1:]), np.float32)
        feeds[model.program.target] = model._target_feed(y, batch)
    model.executor.run(args.phase, feeds, batch)
    timings: dict = {}
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        model.executor.run(args.phase, feeds, batch, timings=timings)
    total = (time.perf_counter() - t0) / args.repeats * 1e3
    by_kernel: dict = {}
    for (k, _), s in timings.items():
        by_kernel[k] = by_kernel.get(k, 0.0) + s / args.repeats * 1e3
    inside = sum(by_kernel.values())
    print(f"{net.name} {args.phase} batch {args.batch}: {total:.1f} ms per run, "
          f"{inside:.1f} ms in kernels")
    for k, ms in sorted(by_kernel.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {k:<22} {ms:8.2f} ms  {100 * ms / inside:5.1f}%")
    print("slowest instructions:")
    for (k, node), s in sorted(timings.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  {k:<22} {node:<40} {s / args.repeats * 1e3:7.2f} ms")


if __name__ == "__main__":
    main()
