"""Memory plans of a network: `python tools/memory_report.py SPEC [--batch N ...]
[--input C@HxW] [--set k=v] [--table PHASE] [--json FILE] [--time REPEATS]`.

For each phase (infer, train) and batch size: the naive sum (one buffer per tensor),
the planned peak (the arena), the lower bound (the most bytes live at one instruction),
the plan without in-place writes, and for training the activations the backward pass
reads plus the largest transient (runtime/memory.py defines each). Nothing is
allocated unless --time is given: then the training step is timed with and without
the plan (median of REPEATS, the two alternating).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

import netspec
from netspec import pipeline
from netspec.lang.elaborate import parse_value


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def report(prog, phases, batches) -> list[dict]:
    rows = []
    for phase in phases:
        for batch in batches:
            plan = pipeline.plan(prog, batch, phases=[phase])[phase]
            plain = pipeline.plan(prog, batch, phases=[phase], inplace=False)[phase]
            row = {"phase": phase, "batch": batch, "naive": plan.naive_bytes,
                   "planned": plan.arena_bytes, "lower_bound": plan.lower_bound_bytes,
                   "planned_no_inplace": plain.arena_bytes, "inplace": sum(map(len, plan.inplace.values()))}
            if plan.saved_bytes is not None:
                row.update(saved=plan.saved_bytes, transient=plan.transient_bytes,
                           param_grads=plan.param_grad_bytes)
            rows.append(row)
    return rows


def print_rows(rows) -> None:
    print(f"{'phase':<6} {'batch':>5} {'naive MiB':>10} {'planned MiB':>12} {'bound MiB':>10} "
          f"{'/bound':>7} {'no in-place':>12} {'saved+trans MiB':>16} {'/(s+t)':>7}")
    for r in rows:
        need = r.get("saved", 0) + r.get("transient", 0)
        st = f"{_mib(r['saved'])}+{_mib(r['transient'])}" if "saved" in r else "-"
        ratio = f"{r['planned'] / need:.3f}" if need else "-"
        print(f"{r['phase']:<6} {r['batch']:>5} {_mib(r['naive']):>10} {_mib(r['planned']):>12} "
              f"{_mib(r['lower_bound']):>10} {r['planned'] / r['lower_bound']:>7.3f} "
              f"{_mib(r['planned_no_inplace']):>12} {st:>16} {ratio:>7}")


def time_step(net, batch: int, repeats: int) -> dict[str, float]:
    """Median training-step seconds (loss_and_grads), planned and unplanned, alternating."""
    models = {p: net.compile(plan_memory=p) for p in (True, False)}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *net.graph.node(net.graph.inputs[0]).shape)).astype(np.float32)
    model = models[True]
    t = model.program.tensors[model.program.target]
    out = net.graph.node(net.graph.outputs[0]).shape
    y = rng.integers(0, out[0], batch) if t.dtype == "int32" else \
        rng.uniform(0, 1, (batch, *out)).astype(np.float32)
    times = {True: [], False: []}
    for m in models.values():
        m.loss_and_grads(x, y)                       # allocate and warm up
    for _ in range(repeats):
        for p, m in models.items():
            t0 = time.perf_counter()
            m.loss_and_grads(x, y)
            times[p].append(time.perf_counter() - t0)
    return {"planned_s": statistics.median(times[True]), "unplanned_s": statistics.median(times[False])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec")
    ap.add_argument("--batch", type=int, action="append", help="repeatable; default 1 and 16")
    ap.add_argument("--input", dest="input_shape")
    ap.add_argument("--set", action="append", default=[], metavar="K=V")
    ap.add_argument("--table", choices=["infer", "train"], help="also print this phase's plan, "
                    "tensor by tensor, at the first batch size")
    ap.add_argument("--json", help="write the rows (and --table's plan) to this file")
    ap.add_argument("--time", type=int, metavar="REPEATS", help="time the training step with "
                    "and without the plan at each batch size")
    args = ap.parse_args()
    params = {k: parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
    net = netspec.load(args.spec, input_shape=args.input_shape, **params)
    prog = net.program()
    batches = args.batch or [1, 16]
    rows = report(prog, list(prog.phases), batches)
    print(f"{args.spec} {net.graph.node(net.graph.inputs[0]).shape}: {prog.name}")
    print_rows(rows)
    out = {"spec": args.spec, "rows": rows}
    if args.table:
        plan = pipeline.plan(prog, batches[0], phases=[args.table])[args.table]
        print()
        print(plan.text())
        out["plan"] = plan.to_json()
    if args.time:
        out["timings"] = {}
        for b in batches:
            t = time_step(net, b, args.time)
            out["timings"][b] = t
            print(f"train step, batch {b}: planned {t['planned_s'] * 1e3:.1f} ms, "
                  f"unplanned {t['unplanned_s'] * 1e3:.1f} ms (median of {args.time})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
