"""netspec's CUDA target against PyTorch on the same GPU, in one process.

    python tools/bench_gpu.py                          # LeNet-5 b256, ResNet-34 3@224x224 b32
    python tools/bench_gpu.py --json gpu.json          # also write the records
    python tools/bench_gpu.py --spec specs/vgg16.net --batch 16 --phases infer
    python tools/bench_gpu.py --repeats 20 --warmup 3 --budget 20

Each spec (default specs/lenet5.net and specs/resnet34.net; --spec, repeatable, names
others) is timed in two phases at one batch (--batch; default 256 for LeNet-5, 32 for the
rest): "infer", a forward pass in inference mode, and "train", one training step: forward,
loss and backward, no update (netspec: `model.train_buffers(x, y)`, which leaves the
buffers on the device; PyTorch: zero_grad, forward, loss, backward). Both sides start
from the same weights (netspec's initial parameters, loaded into the PyTorch interpreter
netspec.testing.torch_ref.TorchGraph, moved to the GPU) on the same float32 batch, and
before timing the first outputs (infer) or losses (train) are compared: "max |diff|".

Timing: warm-up runs excluded; the device is synchronised (numba.cuda.synchronize /
torch.cuda.synchronize) before and after each timed run; the median of --repeats runs,
fewer when one run is slow (at least 3, within --budget seconds per measurement). PyTorch
runs with cuDNN on (benchmark mode: fixed shapes) and TF32 off
(torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False), so that
both sides compute in float32. PyTorch's input is on the GPU already; netspec's API takes
host arrays and returns host probabilities, so "copy ms" gives those copies' time
(through PyTorch: the batch, and the labels, host to device; the probabilities back).

The ceiling: the measured rate of cuBLAS SGEMM (torch.matmul of two 8192x8192 float32
random matrices, TF32 off), in TFLOP/s. The header names the device, the driver and the
numba-cuda, numba, NumPy and torch versions.

--json FILE writes {"device", "versions", "sgemm_tflops", "settings", "records": [{"spec",
"network", "phase", "batch", "netspec_ms", "torch_ms", "ratio", "copy_ms", "max_abs_diff",
"repeats", "error"}]} (ratio = netspec_ms / torch_ms), rewritten after each record, so a
run stopped by a time limit keeps what it measured.

Exit status: 0; 1 no GPU (no CUDA driver, or a torch without CUDA), no CUDA target in
netspec, a spec that does not load, or a measurement that failed (its error is in the
table and the JSON); 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from types import SimpleNamespace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPECS = ("specs/lenet5.net", "specs/resnet34.net")
DEFAULT_BATCH = {"lenet5": 256}          # any other network: 32
OTHER_BATCH = 32
PHASES = ("infer", "train")
GEMM_SIZE = 8192


class Refused(Exception):
    """Why the benchmark cannot run here, in one line: exit 1."""


# ---------------------------------------------------------------- arguments

def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", action="append", metavar="PATH",
                    help=f"a spec to time (repeatable; default {' '.join(DEFAULT_SPECS)})")
    ap.add_argument("--batch", type=positive, help="the batch of every spec "
                    f"(default {DEFAULT_BATCH['lenet5']} for LeNet-5, {OTHER_BATCH} otherwise)")
    ap.add_argument("--phases", default=",".join(PHASES), help="comma-separated: infer, train")
    ap.add_argument("--repeats", type=positive, default=10, help="timed runs (their median)")
    ap.add_argument("--warmup", type=positive, default=2, help="untimed runs first")
    ap.add_argument("--budget", type=float, default=30.0,
                    help="seconds per measurement, at most (fewer repeats when runs are slow)")
    ap.add_argument("--json", metavar="FILE", help="write the records as JSON")
    args = ap.parse_args(argv)
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    bad = [p for p in args.phases if p not in PHASES]
    if bad or not args.phases:
        ap.error(f"--phases: {', '.join(bad) or 'none given'}; the phases are {', '.join(PHASES)}")
    if not args.budget > 0:
        ap.error(f"--budget must be positive, not {args.budget}")
    args.spec = [Path(s) for s in (args.spec or [ROOT / s for s in DEFAULT_SPECS])]
    for spec in args.spec:
        if not spec.is_file():
            ap.error(f"--spec: no such file: {spec}")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        ap.error(f"--json: no such folder: {Path(args.json).parent}")
    return args


# ---------------------------------------------------------------- the GPU

def gpu_or_refuse():
    """torch and numba's CUDA module, once both see a GPU; else Refused saying why."""
    try:
        import torch
    except ImportError:
        raise Refused("PyTorch is not installed; it is the peer this benchmark measures against") from None
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise Refused(f"no GPU: torch {torch.__version__} ({build}) sees no CUDA device")
    os.environ["NUMBA_ENABLE_CUDASIM"] = "0"     # the real device, never the simulator
    from numba import cuda
    if not cuda.is_available():
        raise Refused("no GPU for numba-cuda: it finds no CUDA driver or device")
    from netspec.runtime.targets import UnknownTarget, get_target
    try:
        get_target("cuda")
    except UnknownTarget as e:
        raise Refused(f"netspec has no CUDA target registered yet: {e}") from None
    torch.backends.cuda.matmul.allow_tf32 = False      # float32 on both sides
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.enabled = True
    torch.backends.cudnn.benchmark = True
    return torch, cuda


def driver_version(cuda) -> str:
    """The NVIDIA driver's version (NVML, else nvidia-smi), and the CUDA version it serves."""
    api = ".".join(map(str, cuda.cudadrv.driver.driver.get_version()))
    try:
        import pynvml
        pynvml.nvmlInit()
        release = pynvml.nvmlSystemGetDriverVersion()
        release = release.decode() if isinstance(release, bytes) else release
    except Exception:  # noqa: BLE001  (no NVML binding: ask nvidia-smi)
        import subprocess
        try:
            release = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                     capture_output=True, text=True, timeout=30).stdout.strip() or "?"
        except (OSError, subprocess.TimeoutExpired):
            release = "?"
    return f"{release} (CUDA {api})"


def describe(torch, cuda) -> tuple[dict, dict]:
    import numba
    import numba_cuda
    props = torch.cuda.get_device_properties(0)
    device = {"name": torch.cuda.get_device_name(0), "driver": driver_version(cuda),
              "compute_capability": f"{props.major}.{props.minor}",
              "multiprocessors": props.multi_processor_count,
              "memory_gib": round(props.total_memory / 2**30, 1)}
    versions = {"python": platform.python_version(), "numpy": np.__version__,
                "numba": numba.__version__, "numba_cuda": numba_cuda.__version__,
                "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version()}
    return device, versions


# ---------------------------------------------------------------- timing

def timed(run, sync, warmup: int, repeats: int, budget: float) -> tuple[float, int]:
    """(median milliseconds, runs timed): each run between two device synchronisations."""
    def once():
        sync()
        start = time.perf_counter()
        run()
        sync()
        return time.perf_counter() - start
    for _ in range(warmup):
        last = once()
    count = max(3, min(repeats, int(budget / max(last, 1e-9))))
    return statistics.median(once() for _ in range(count)) * 1e3, count


def sgemm_tflops(torch, warmup: int, repeats: int, budget: float) -> float:
    gen = torch.Generator(device="cuda").manual_seed(0)
    a, b = (torch.randn(GEMM_SIZE, GEMM_SIZE, device="cuda", generator=gen) for _ in range(2))
    ms, _ = timed(lambda: torch.matmul(a, b), torch.cuda.synchronize, warmup, repeats, budget)
    return 2 * GEMM_SIZE ** 3 / (ms * 1e-3) / 1e12


# ---------------------------------------------------------------- the two sides

def host(a) -> np.ndarray:
    """A result of either side as a float64 host array."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    elif hasattr(a, "copy_to_host"):
        a = a.copy_to_host()
    return np.asarray(a, dtype=np.float64)


def batch_of(graph, batch: int, loss_name: str):
    rng = np.random.default_rng(0)
    out = graph.node(graph.outputs[0])
    x = rng.standard_normal((batch, *graph.node(graph.inputs[0]).shape)).astype(np.float32)
    if loss_name == "sparse_categorical_crossentropy":
        y = rng.integers(0, out.shape[0], batch).astype(np.int32)
    else:
        y = rng.uniform(0, 1, (batch, *out.shape)).astype(np.float32)
    return x, y


def torch_side(torch, graph, params, loss_name, x, y, device="cuda"):
    """{phase: run} for PyTorch's interpreter of the graph on `device`, from netspec's weights,
    and {phase: copy}, the host-device copies netspec's API makes in that phase."""
    from netspec.testing.torch_ref import TorchGraph, loss
    model = TorchGraph(graph, dtype=torch.float32, calibrate=False)
    model.load(params, strict=False)
    model.to(device)
    xt = torch.from_numpy(x).to(device)
    yt = torch.from_numpy(y.astype(np.int64) if y.dtype.kind in "iu" else y).to(device)
    out = graph.outputs[0]
    keep = [out, *graph.node(out).inputs]          # the loss reads a final softmax's logits

    def infer():
        model.eval()
        with torch.inference_mode(), torch.device(device):     # tensors an op's rule makes
            return model(xt, keep=keep)[out]

    def train():
        model.train()
        model.zero_grad(set_to_none=True)
        with torch.device(device):
            value = loss(graph, model(xt, keep=keep), yt, loss_name)
        value.backward()
        return value

    probs = torch.empty(len(x), *graph.node(out).shape, device=device)
    copies = {"infer": lambda: (torch.from_numpy(x).to(device), probs.cpu()),
              "train": lambda: (torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))}
    return {"infer": infer, "train": train}, copies


def measure_spec(spec: Path, args, torch, record, on) -> None:
    """Time `spec` in each phase of args on `on`: the netspec target and torch device, and
    each side's synchronisation (tests/test_cuda_tools.py runs this on the CPU)."""
    import netspec
    from netspec.errors import SpecError
    from netspec.lower.build import default_loss
    try:
        net = netspec.load(spec)
    except (SpecError, OSError) as e:
        raise Refused(f"{spec}: {e}") from None
    graph = net.graph
    batch = args.batch or DEFAULT_BATCH.get(net.name, OTHER_BATCH)
    loss_name = default_loss(graph)
    x, y = batch_of(graph, batch, loss_name)
    base = {"spec": str(spec), "network": net.name, "batch": batch}
    try:
        model = net.compile(target=on.target, training="train" in args.phases, batch=batch)
        params = {k: host(v) for k, v in model.state_dict().items()}     # before any step
        runs, copies = torch_side(torch, graph, params, loss_name, x, y, on.device)
        ours = {"infer": lambda: model.predict(x), "train": lambda: model.train_buffers(x, y)}
    except Exception as e:  # noqa: BLE001  (recorded, and the other specs still run)
        for phase in args.phases:
            record({**base, "phase": phase, "error": _one_line(e), "traceback": traceback.format_exc()})
        return
    for phase in args.phases:
        try:
            first = model.predict(x) if phase == "infer" else model.loss_and_grads(x, y)[0]
            check = float(np.max(np.abs(host(first) - host(runs[phase]()))))
            ns_ms, n = timed(ours[phase], on.sync_netspec, args.warmup, args.repeats, args.budget)
            t_ms, _ = timed(runs[phase], on.sync_torch, args.warmup, n, args.budget)
            copy_ms, _ = timed(copies[phase], on.sync_torch, args.warmup, n, args.budget)
            record({**base, "phase": phase, "netspec_ms": ns_ms, "torch_ms": t_ms, "ratio": ns_ms / t_ms,
                    "copy_ms": copy_ms, "max_abs_diff": check, "repeats": n, "error": None})
        except Exception as e:  # noqa: BLE001
            record({**base, "phase": phase, "error": _one_line(e), "traceback": traceback.format_exc()})


def _one_line(e: Exception) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"


# ---------------------------------------------------------------- report

def table(records) -> str:
    from netspec.testing.tables import text_table
    rows = [("spec", "phase", "batch", "netspec ms", "torch ms", "ratio", "copy ms", "max |diff|")]
    failed = []
    for r in records:
        if r["error"]:
            failed.append(f"{r['network']} {r['phase']} b{r['batch']}: failed: {r['error']}")
            continue
        rows.append((r["network"], r["phase"], str(r["batch"]), f"{r['netspec_ms']:.2f}",
                     f"{r['torch_ms']:.2f}", f"{r['ratio']:.2f}", f"{r['copy_ms']:.2f}",
                     f"{r['max_abs_diff']:.2g}"))
    return "\n".join([text_table(rows, right=range(2, len(rows[0]))), *failed])


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        torch, cuda = gpu_or_refuse()
    except Refused as e:
        print(f"bench_gpu: {e}", file=sys.stderr)
        return 1
    device, versions = describe(torch, cuda)
    print(f"{device['name']} (sm_{device['compute_capability'].replace('.', '')}, "
          f"{device['multiprocessors']} SMs, {device['memory_gib']} GiB), driver {device['driver']}")
    print("  ".join(f"{k} {v}" for k, v in versions.items()), flush=True)
    tflops = sgemm_tflops(torch, args.warmup, args.repeats, args.budget)
    print(f"cuBLAS SGEMM {GEMM_SIZE}x{GEMM_SIZE} float32, TF32 off: {tflops:.1f} TFLOP/s (the ceiling)")
    print(f"median of up to {args.repeats} after {args.warmup} warm-up run(s), float32, cuDNN on, "
          f"TF32 off; train = forward + loss + backward, no update", flush=True)
    report = {"device": device, "versions": versions, "sgemm_tflops": tflops,
              "settings": {"repeats": args.repeats, "warmup": args.warmup, "budget_s": args.budget,
                           "tf32": False, "cudnn_benchmark": True}, "records": []}

    def record(r):
        report["records"].append(r)
        status = r["error"] or f"netspec {r['netspec_ms']:.2f} ms, torch {r['torch_ms']:.2f} ms"
        print(f"  {r['network']} {r['phase']} b{r['batch']}: {status}", file=sys.stderr, flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")

    on_gpu = SimpleNamespace(target="cuda", device="cuda", sync_netspec=cuda.synchronize,
                             sync_torch=torch.cuda.synchronize)
    try:
        for spec in args.spec:
            measure_spec(spec, args, torch, record, on_gpu)
    except Refused as e:
        print(f"bench_gpu: {e}", file=sys.stderr)
        return 1
    print()
    print(table(report["records"]))
    return 1 if any(r["error"] for r in report["records"]) else 0


if __name__ == "__main__":
    sys.exit(main())
