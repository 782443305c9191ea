"""netspec's CPU backend against PyTorch on the CPU, in one process.

    python tools/bench_cpu.py                         # every case, table
    python tools/bench_cpu.py --json bench.json       # also write the records
    python tools/bench_cpu.py --cases lenet --repeats 10 --warmup 3
    python tools/bench_cpu.py --torch-only            # the PyTorch side alone

Each case is a spec, its input size and batch, and the modes it is timed in:
"infer" (a forward pass in inference mode) and "train" (one SGD step: forward,
loss, backward and the update p -= 0.01 * grad). Both sides run the same shapes
from the same weights (netspec's initial parameters are loaded into the PyTorch
interpreter, netspec.testing.torch_ref.TorchGraph) on the same float32 batch.
Warm-up runs are excluded; the time reported is the median of the repeats. Each
side's runs are made back to back (never interleaved, so neither side's thread pool
is still spinning while the other runs).

The PyTorch side is an op-by-op interpreter of the graph (torch.nn.functional,
activations freed as soon as their consumers have run); it is the same code the
CPU backend is tested against. Before timing, the first outputs (infer) or losses
(train) of the two sides are compared and the largest difference is shown.

--json FILE writes a list of {"case", "mode", "netspec_ms", "torch_ms", "ratio"}
(ratio = netspec_ms / torch_ms; null for the side not run).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LR = 0.01


@dataclass
class Case:
    name: str
    spec: str
    load: dict                      # keyword arguments of netspec.load
    batch: int
    modes: tuple[str, ...]
    extra: dict = field(default_factory=dict)


CASES = [
    Case("lenet5 1@32x32 b256", "specs/lenet5.net", dict(classes=10), 256, ("train", "infer")),
    Case("resnet34 3@64x64 b16", "specs/resnet34.net", dict(input_shape=(3, 64, 64), classes=10),
         16, ("train", "infer")),
    Case("resnet34 3@224x224 b8", "specs/resnet34.net", dict(classes=10), 8, ("infer",)),
    # depthwise convs, squeeze-and-excitation, hard-swish / SiLU: where PyTorch is weakest
    Case("mobilenet_v3_large 3@224x224 b8", "specs/mobilenet_v3_large.net", {}, 8, ("infer",)),
    # the train steps without dropout and drop path: their random masks differ between the two
    # sides, and the losses then could not be compared
    Case("mobilenet_v3_large 3@64x64 b16", "specs/mobilenet_v3_large.net",
         dict(input_shape=(3, 64, 64), classes=10, dropout=0), 16, ("train",)),
    Case("efficientnet_b0 3@224x224 b8", "specs/efficientnet_b0.net", {}, 8, ("infer",)),
    Case("efficientnet_b0 3@64x64 b16", "specs/efficientnet_b0.net",
         dict(input_shape=(3, 64, 64), classes=10, dropout=0, drop_path_rate=0), 16, ("train",)),
]


# ---------------------------------------------------------------- the two sides
# Each returns (params or None, run): `run()` does one timed unit of work and returns what
# the correctness check compares (the output for infer, the loss for train).

def netspec_side(net, mode: str, x: np.ndarray, y: np.ndarray):
    """netspec's compiled CPU model: predict, or loss_and_grads plus the SGD update."""
    model = net.compile(target="cpu", training=(mode == "train"))
    params = model.params                       # name -> array (PyTorch layout, writable)
    if mode == "infer":
        return model, params, lambda: model.predict(x)

    def step():
        loss, grads = model.loss_and_grads(x, y)
        for name, g in grads.items():
            params[name] -= LR * g
        return loss
    return model, params, step


def torch_side(graph, params, mode: str, x: np.ndarray, y: np.ndarray, loss_name: str):
    """TorchGraph (float32) from `params` (netspec's; random if None)."""
    import torch
    from netspec.testing.torch_ref import TorchGraph, loss

    model = TorchGraph(graph, dtype=torch.float32, calibrate=params is None)
    if params:
        missing = sorted(set(model.names) - set(params))
        if missing:
            print(f"  note: netspec's params lack {len(missing)} tensors (e.g. {missing[0]}); "
                  f"the PyTorch side keeps random values for them", file=sys.stderr)
        model.load({k: np.array(v) for k, v in params.items()}, strict=False)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y.astype(np.int64) if y.dtype.kind in "iu" else y)
    out = graph.outputs[0]
    keep = [out, *graph.node(out).inputs]      # the loss reads a final softmax's logits
    if mode == "infer":
        model.eval()

        def infer():
            with torch.inference_mode():
                return model(xt, keep=keep)[out]
        return model, infer
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=LR)

    def step():
        value = loss(graph, model(xt, keep=keep), yt, loss_name)
        value.backward()
        opt.step()
        opt.zero_grad()
        return value.detach()
    return model, step


# ---------------------------------------------------------------- timing

def median_ms(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    gc.collect()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def diff(a, b) -> float:
    a = np.asarray(a.detach().numpy() if hasattr(a, "detach") else a, dtype=np.float64)
    b = np.asarray(b.detach().numpy() if hasattr(b, "detach") else b, dtype=np.float64)
    return float(np.max(np.abs(a - b))) if a.shape == b.shape else float("nan")


def run_case(case: Case, mode: str, args) -> dict:
    import netspec
    net = netspec.load(ROOT / case.spec, **case.load)
    graph = net.graph
    out = graph.node(graph.outputs[0])
    # netspec's default loss: the train section's, else cross-entropy after a softmax, else mse
    loss_name = (graph.train or {}).get("loss") or (
        "sparse_categorical_crossentropy" if out.op == "softmax" else "mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((case.batch, *graph.node(graph.inputs[0]).shape)).astype(np.float32)
    if loss_name == "sparse_categorical_crossentropy":
        y = rng.integers(0, out.shape[0], case.batch).astype(np.int32)
    else:
        y = rng.uniform(0, 1, (case.batch, *out.shape)).astype(np.float32)

    ns_ms = check = None
    if not args.torch_only:
        _, params, ns_run = netspec_side(net, mode, x, y)
        params_copy = {k: np.array(v) for k, v in params.items()}   # before any update
        _, t_run = torch_side(graph, params_copy, mode, x, y, loss_name)
        check = diff(ns_run(), t_run())       # first outputs / losses, same weights
        ns_ms = median_ms(ns_run, args.warmup, args.repeats)
        del ns_run
    else:
        _, t_run = torch_side(graph, None, mode, x, y, loss_name)
    gc.collect()
    t_ms = median_ms(t_run, args.warmup, args.repeats)
    return {"case": case.name, "mode": mode, "netspec_ms": ns_ms, "torch_ms": t_ms,
            "ratio": ns_ms / t_ms if ns_ms is not None else None, "_check": check}


# ---------------------------------------------------------------- report

def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(args) -> str:
    import torch
    lines = [f"netspec vs PyTorch, CPU: {cpu_name()}, {os.cpu_count()} logical CPUs",
             f"Python {platform.python_version()}, NumPy {np.__version__}, "
             f"torch {torch.__version__} (threads: intra-op {torch.get_num_threads()}, "
             f"inter-op {torch.get_num_interop_threads()})"]
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        lines.append(f"NumPy BLAS: {blas.get('name')} {blas.get('version', '')} "
                     f"({blas.get('openblas configuration', '').strip() or 'build config n/a'})")
    except Exception:  # noqa: BLE001  (older NumPy: no dict form)
        pass
    try:
        import numba
        lines.append(f"numba {numba.__version__} (threads {numba.get_num_threads()}, "
                     f"layer {numba.config.THREADING_LAYER})")
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_info
        for info in threadpool_info():
            lines.append(f"  pool: {info.get('user_api')}/{info.get('internal_api')} "
                         f"{info.get('version') or ''} threads={info.get('num_threads')} "
                         f"({Path(info.get('filepath', '')).name})")
    except ImportError:
        pass
    lines.append(f"median of {args.repeats} after {args.warmup} warm-up run(s); float32; "
                 f"train = forward + loss + backward + SGD(lr={LR}) update")
    return "\n".join(lines)


def table(records) -> str:
    from netspec.testing.tables import text_table
    rows = [("case", "mode", "netspec ms", "torch ms", "ratio", "max |diff|")]
    for r in records:
        def f(v, fmt):
            return "-" if v is None else format(v, fmt)
        rows.append((r["case"], r["mode"], f(r["netspec_ms"], ".1f"), f(r["torch_ms"], ".1f"),
                     f(r["ratio"], ".2f"), f(r["_check"], ".2g")))
    return text_table(rows, right=range(2, len(rows[0])))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="", help="only cases whose name contains this")
    ap.add_argument("--modes", default="train,infer", help="comma-separated: train, infer")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs (median)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    ap.add_argument("--json", metavar="FILE", help="write the records as JSON")
    ap.add_argument("--torch-only", action="store_true", help="time the PyTorch side only")
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    modes = {m.strip() for m in args.modes.split(",") if m.strip()}
    todo = [(c, m) for c in CASES if args.cases in c.name for m in c.modes if m in modes]
    if not todo:
        print(f"no case matches {args.cases!r}", file=sys.stderr)
        return 2
    if not args.torch_only:
        import netspec.runtime.cpu  # noqa: F401  (numba and its pools load now, for the header)
    print(header(args), flush=True)
    records = []
    for case, mode in todo:
        records.append(run_case(case, mode, args))
        r = records[-1]
        print(f"  {r['case']} {r['mode']}: torch {r['torch_ms']:.1f} ms"
              + (f", netspec {r['netspec_ms']:.1f} ms" if r["netspec_ms"] is not None else ""),
              file=sys.stderr, flush=True)
    print()
    print(table(records))
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{k: v for k, v in r.items() if not k.startswith("_")} for r in records], indent=2)
            + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
