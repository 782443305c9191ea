"""Data-parallel scaling (issue 19): what `netspec train --ranks N` costs and gains here, and what the
same design predicts for ResNet-50 on a real cluster.

    python tools/bench_scale.py [--specs lenet5,fashion_cnn] [--batch 64] [--steps 20] [--json out.json]

Measured here, by MPI ranks this script starts itself (mpiexec -n 1 and -n 2 of its --worker):
  1. training throughput (samples/s) for 1 and 2 ranks at the same global batch, per network;
  2. the share of a 2-rank step spent waiting on the gradient reductions, with the buckets' reductions
     overlapping the backward pass (as training does) and with all of them started after it, per
     bucket size (the measured default of distributed.DEFAULT_BUCKET_MB comes from here);
  3. the network's per-message latency alpha and per-byte time beta: ping-pong between 2 ranks
     (half the round trip; a least-squares line over 8 B .. 64 MB), and the measured all-reduce
     against the ring all-reduce model 2(p-1)/p * n * beta + 2(p-1) * alpha.
Then the model (with a stated network and compute time, printed with the result) predicts the
scaling efficiency of ResNet-50 at 8, 64 and 512 workers, with and without overlap.

    python tools/bench_scale.py --sync-batchnorm --specs mlp_batchnorm,mobilenet --buckets 25

also times each network compiled with sync_batchnorm (its batch norms in steps, the batch's sums
added up over the ranks between them: distributed.BatchSums), against the per-rank statistics of
the same run: on 1 rank (the steps alone, nothing to sum) and on 2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# ---------------------------------------------------------------- the cluster the model describes
# 100 Gb/s InfiniBand EDR: 12.5 GB/s a direction, ~1.5 us MPI latency between nodes
CLUSTER = {"name": "100 Gb/s InfiniBand (EDR), 1.5 us latency", "alpha": 1.5e-6, "beta": 1 / 12.5e9}
# ResNet-50: 25,557,032 parameters (netspec summary specs/resnet50.net), float32 gradients
RESNET50_GRAD_BYTES = 25_557_032 * 4
# V100-class compute time of one step: ~390 images/s in float32 at batch 64 per GPU (NVIDIA's
# published TensorFlow/PyTorch figures for ResNet-50 training on a V100-16GB are 360-400 fp32,
# ~1,200 with mixed precision): 64 / 390 = 0.164 s a step; the backward pass is ~2/3 of it, the
# window in which bucket reductions can overlap (the first bucket is ready early in it)
V100_STEP_S = 64 / 390
V100_MIXED_STEP_S = 64 / 1200
BACKWARD_SHARE = 2 / 3


def ring_allreduce_seconds(nbytes: float, p: int, alpha: float, beta: float, messages: int = 1) -> float:
    """The ring all-reduce's time for `nbytes` over p workers, sent as `messages` buckets (each
    pays the latency term)."""
    if p <= 1:
        return 0.0
    return 2 * (p - 1) / p * nbytes * beta + messages * 2 * (p - 1) * alpha


def efficiency(step_s: float, comm_s: float, overlap: bool, last_bucket_s: float = 0.0) -> float:
    """Scaling efficiency: compute time over step time. With overlap the reductions run during
    the backward pass and only what exceeds it shows, and at least the last bucket's (it is
    complete only when the backward pass ends)."""
    exposed = max(comm_s - BACKWARD_SHARE * step_s, last_bucket_s) if overlap else comm_s
    return step_s / (step_s + exposed)


# Horovod's own measurement (Sergeev & Del Balso 2018, fig. 6): ResNet-101 at ~88-90% scaling
# efficiency on 512 Pascal GPUs (P100), TensorFlow, 25 Gb/s RoCE. The model with that setup:
# 44,549,160 parameters; ~130 images/s a P100 in fp32 at batch 64 (0.49 s a step); 25 Gb/s
# = 3.125 GB/s, ~5 us latency over RoCE.
HOROVOD = {"name": "ResNet-101, P100, 25 Gb/s RoCE (Horovod's setup)", "grad_bytes": 44_549_160 * 4,
           "step_s": 64 / 130, "alpha": 5e-6, "beta": 1 / 3.125e9, "measured": "~88-90% at 512 GPUs"}


# ---------------------------------------------------------------- the worker (one MPI rank)

def worker(args) -> None:
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    out: dict = {"ranks": size, "networks": {}}
    for spec in args.specs.split(","):
        out["networks"][spec] = measure_network(spec, args, rank, size, comm)
    if size == 2 and args.latency:
        out["pingpong"] = pingpong(comm, rank)
        out["allreduce"] = allreduce_times(comm)
    if rank == 0:
        print("RESULT " + json.dumps(out), flush=True)


def measure_network(spec: str, args, rank: int, size: int, comm) -> dict:
    import netspec
    from netspec.training.distributed import BatchSums, GradientReducer, MPICommunicator, join_hooks, shard
    net = netspec.load(str(ROOT / "specs" / f"{spec}.net"),
                       input_shape=args.input if spec.startswith("resnet") else None)
    model = net.compile(training=True, seed=0)
    grads_bytes = sum(model.program.tensors[g].size(1) * 4 for g in model.program.grads.values())
    rng = np.random.default_rng(0)
    graph = net.graph
    shape = tuple(graph.node(graph.inputs[0]).shape)
    classes = int(np.prod(graph.shape_of(graph.outputs[0])))
    x_all = rng.standard_normal((args.batch, *shape)).astype(np.float32)
    part = shard(np.arange(args.batch), rank, size)
    x = np.ascontiguousarray(x_all[part])
    y = rng.integers(0, classes, args.batch)[part]
    result = {"params_mb": grads_bytes / 2**20, "batch": args.batch}
    mpi = MPICommunicator(comm)
    # "skew": no reduction, a barrier after the backward pass: how long the faster rank waits for
    # the slower one, which no overlap can hide (it is part of every configuration's wait)
    configs = [("none", None, True)] if size == 1 else \
        [(f"{mb:g}MB {'overlap' if ov else 'after'}", mb, ov) for mb in args.buckets for ov in (True, False)] \
        + [("skew", None, True)]
    synced = None
    if args.sync_batchnorm:     # the same network with its batch norms synchronised
        synced = net.compile(training=True, seed=0, sync_batchnorm=True)
        configs.append(("sync", None if size == 1 else max(args.buckets), True))
        result["batch_norms"] = BatchSums(synced, mpi).layers
    # the configurations take turns, a round of steps each, so that the machine's drift (other
    # work on its cores) falls on all of them alike; medians of the rounds are reported
    runs = {}
    for name, mb, overlap in configs:
        m = synced if name == "sync" else model
        runs[name] = {"model": m, "reducer": None if mb is None else GradientReducer(m, mpi, mb, overlap=overlap),
                      "batch_sums": BatchSums(m, mpi) if name == "sync" and size > 1 else None,
                      "bufs": m.executor.buffers("train", len(y)), "step_s": [], "wait_s": [],
                      "skew": name == "skew"}
    optimizers = {id(m): m.optim.make_optimizer("sgd", m.physical_params()) for m in (model, synced) if m}
    skew = [0.0]

    def step(run):
        reducer, m, bufs = run["reducer"], run["model"], run["bufs"]
        hooks = None if reducer is None else reducer.begin(bufs, len(y) / args.batch)
        if run["batch_sums"] is not None:
            hooks = join_hooks(run["batch_sums"].hooks(bufs, len(y) / args.batch), hooks)
        b = m.train_buffers(x, y, after=hooks)
        if run["skew"]:
            t0 = time.perf_counter()
            comm.Barrier()
            skew[0] += time.perf_counter() - t0
        grads = ({p: b[g] for p, g in m.program.grads.items()} if reducer is None
                 else reducer.finish())
        optimizers[id(m)].step(grads, 1e-4)

    from mpi4py import MPI
    for run in runs.values():
        for _ in range(3):      # compile, warm caches
            step(run)
    per_round = max(1, args.steps // args.rounds)
    for _ in range(args.rounds):
        for run in runs.values():
            reducer = run["reducer"]
            comm.Barrier()
            if reducer is not None:
                reducer.wait_seconds = 0.0
            skew[0] = 0.0
            start = time.perf_counter()
            for _ in range(per_round):
                step(run)
            seconds = (time.perf_counter() - start) / per_round
            waited = (skew[0] if reducer is None else reducer.wait_seconds) / per_round
            # the slowest rank sets the pace
            run["step_s"].append(comm.allreduce(seconds, op=MPI.MAX))
            run["wait_s"].append(comm.allreduce(waited, op=MPI.MAX))
    for name, run in runs.items():
        # the fastest round: on a machine shared with other work the slower rounds measure the
        # others (all rounds are kept in rounds_step_s)
        best = int(np.argmin(run["step_s"]))
        seconds, waited = run["step_s"][best], run["wait_s"][best]
        result[name] = {"step_s": seconds, "samples_per_s": args.batch / seconds,
                        "wait_s": waited, "wait_share": waited / seconds,
                        "rounds_step_s": run["step_s"], "rounds_wait_s": run["wait_s"],
                        "buckets": 1 if run["reducer"] is None else run["reducer"].bucket_count}
    return result


def pingpong(comm, rank: int) -> dict:
    """Half round-trip times between ranks 0 and 1 over message sizes; alpha, beta fitted."""
    sizes = [8, 1 << 10, 1 << 14, 1 << 17, 1 << 20, 1 << 22, 1 << 24, 1 << 26]
    times = []
    for n in sizes:
        buf = np.zeros(n, np.uint8)
        reps = max(5, min(1000, (1 << 24) // max(n, 1)))
        comm.Barrier()
        start = time.perf_counter()
        for _ in range(reps):
            if rank == 0:
                comm.Send(buf, 1)
                comm.Recv(buf, 1)
            else:
                comm.Recv(buf, 0)
                comm.Send(buf, 0)
        times.append((time.perf_counter() - start) / reps / 2)
    # alpha: the smallest message's time, all latency; beta: the median per-byte time of the
    # messages of 1 MB and more, latency taken off (a least-squares line over all sizes lets the
    # largest messages' noise decide the intercept)
    alpha = times[0]
    beta = float(np.median([(t - alpha) / n for n, t in zip(sizes, times) if n >= 1 << 20]))
    return {"sizes": sizes, "seconds": times, "alpha": alpha, "beta": beta}


def allreduce_times(comm) -> dict:
    from mpi4py import MPI
    sizes = [1 << 10, 1 << 16, 1 << 20, 1 << 22, 1 << 24, 1 << 26]
    times = []
    for n in sizes:
        buf = np.ones(n // 4, np.float32)
        reps = max(3, min(500, (1 << 25) // n))
        comm.Barrier()
        start = time.perf_counter()
        for _ in range(reps):
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        times.append((time.perf_counter() - start) / reps)
    return {"sizes": sizes, "seconds": times}


# ---------------------------------------------------------------- the driver

def run_ranks(n: int, args, latency: bool) -> dict:
    from netspec.training.launch import mpiexec_path
    from netspec.runtime.cpu.threads import usable_cores
    env = dict(os.environ)
    env.setdefault("NETSPEC_NUM_THREADS", str(max(1, usable_cores() // n)))
    cmd = [mpiexec_path(), "-n", str(n), sys.executable, __file__, "--worker", "--specs", args.specs,
           "--batch", str(args.batch), "--steps", str(args.steps), "--rounds", str(args.rounds),
           "--buckets", ",".join(f"{b:g}" for b in args.buckets), "--input", args.input]
    if args.sync_batchnorm:
        cmd.append("--sync-batchnorm")
    if latency:
        cmd.append("--latency")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise SystemExit(f"the {n}-rank run failed:\n{proc.stdout}\n{proc.stderr}")


def report(one: dict, two: dict, args) -> str:
    lines = [f"Measured on this machine ({os.cpu_count()} cores; each rank "
             f"{max(1, (os.cpu_count() or 1) // 2)} thread(s) with 2 ranks), global batch {args.batch}, "
             f"{args.steps} timed steps a configuration in {args.rounds} rounds taking turns (the fastest round), "
             "the better of two runs each of 1 and 2 ranks, alternating:", "",
             "| network | gradients | 1 rank samples/s | 2 ranks samples/s (best bucket) | speed-up |",
             "|---|---:|---:|---:|---:|"]
    for spec, r1 in one["networks"].items():
        r2 = two["networks"][spec]
        best = max((k for k in r2 if k.endswith("overlap")), key=lambda k: r2[k]["samples_per_s"])
        lines.append(f"| {spec} | {r1['params_mb']:.2f} MB | {r1['none']['samples_per_s']:,.0f} | "
                     f"{r2[best]['samples_per_s']:,.0f} ({best.split()[0]}) | "
                     f"{r2[best]['samples_per_s'] / r1['none']['samples_per_s']:.2f}x |")
    lines += ["", "Share of a 2-rank step spent waiting for the gradient reductions (after the backward "
              "pass, before the optimizer step), by bucket size:", "",
              "| network | bucket | buckets | step (overlap) | wait share, overlapped | "
              "step (after) | wait share, all after backward |", "|---|---:|---:|---:|---:|---:|---:|"]
    for spec, r2 in two["networks"].items():
        for mb in args.buckets:
            o, a = r2[f"{mb:g}MB overlap"], r2[f"{mb:g}MB after"]
            lines.append(f"| {spec} | {mb:g} MB | {o['buckets']} | {o['step_s'] * 1e3:.1f} ms | "
                         f"{o['wait_share']:.1%} | {a['step_s'] * 1e3:.1f} ms | {a['wait_share']:.1%} |")
        k = r2["skew"]
        lines.append(f"| {spec} | no reduction: a barrier | - | {k['step_s'] * 1e3:.1f} ms | "
                     f"{k['wait_share']:.1%} (the ranks' skew) | | |")
    if args.sync_batchnorm:
        mb = max(args.buckets)
        lines += ["", f"sync_batchnorm: the same networks compiled with their batch norms in steps (1 rank: "
                  f"nothing to sum) and, on 2 ranks, their sums added up between the steps ({mb:g} MB "
                  "buckets, overlapped), against per-rank statistics; samples/s:", "",
                  "| network | batch norms | 1 rank | 1 rank, in steps | 2 ranks, per rank | "
                  "2 ranks, synchronised | synchronised / per rank |", "|---|---:|---:|---:|---:|---:|---:|"]
        for spec, r1 in one["networks"].items():
            r2 = two["networks"][spec]
            per_rank, sync = r2[f"{mb:g}MB overlap"]["samples_per_s"], r2["sync"]["samples_per_s"]
            lines.append(f"| {spec} | {r1['batch_norms']} | {r1['none']['samples_per_s']:,.0f} | "
                         f"{r1['sync']['samples_per_s']:,.0f} | {per_rank:,.0f} | {sync:,.0f} | "
                         f"{sync / per_rank:.2f} |")
    pp, ar = two["pingpong"], two["allreduce"]
    alpha, beta = pp["alpha"], pp["beta"]
    lines += ["", f"Ping-pong between the 2 ranks (shared memory): alpha = {alpha * 1e6:.2f} us "
              f"(an 8-byte message's half round trip), beta = {beta * 1e9:.3f} ns/byte "
              f"({1 / beta / 1e9:.1f} GB/s). All-reduce at 2 ranks, measured against the ring model "
              "n*beta + 2*alpha:", "", "| bytes | measured | ring model |", "|---:|---:|---:|"]
    for n, t in zip(ar["sizes"], ar["seconds"]):
        lines.append(f"| {n:,} | {t * 1e6:,.1f} us | {ring_allreduce_seconds(n, 2, alpha, beta) * 1e6:,.1f} us |")
    a, b = CLUSTER["alpha"], CLUSTER["beta"]
    lines += ["", f"ResNet-50 predicted by the ring model on {CLUSTER['name']} (beta = {b * 1e9:.3f} "
              f"ns/byte), {RESNET50_GRAD_BYTES / 1e6:.1f} MB of float32 gradients a step, compute "
              f"{V100_STEP_S * 1e3:.0f} ms a step (V100, fp32, batch 64 a GPU) and "
              f"{V100_MIXED_STEP_S * 1e3:.0f} ms (mixed precision); overlap hides the reductions "
              f"behind the backward pass ({BACKWARD_SHARE:.0%} of the step):", "",
              "| workers | buckets | all-reduce | fp32: no overlap | fp32: overlap | mixed: no overlap | mixed: overlap |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for p in (8, 64, 512):
        for mb in (4, 25):
            m = int(np.ceil(RESNET50_GRAD_BYTES / (mb * 2**20)))
            c = ring_allreduce_seconds(RESNET50_GRAD_BYTES, p, a, b, messages=m)
            last = ring_allreduce_seconds(mb * 2**20, p, a, b)
            lines.append(f"| {p} | {m} x {mb} MB | {c * 1e3:.1f} ms | "
                         f"{efficiency(V100_STEP_S, c, False):.1%} | "
                         f"{efficiency(V100_STEP_S, c, True, last):.1%} | "
                         f"{efficiency(V100_MIXED_STEP_S, c, False):.1%} | "
                         f"{efficiency(V100_MIXED_STEP_S, c, True, last):.1%} |")
    h = HOROVOD
    lines += ["", f"The same model for {h['name']}: {h['grad_bytes'] / 1e6:.0f} MB of gradients, "
              f"{h['step_s'] * 1e3:.0f} ms of compute a step; Horovod measured {h['measured']}:", "",
              "| workers | all-reduce (25 MB buckets) | no overlap | overlap |", "|---:|---:|---:|---:|"]
    for p in (8, 64, 512):
        m = int(np.ceil(h["grad_bytes"] / (25 * 2**20)))
        c = ring_allreduce_seconds(h["grad_bytes"], p, h["alpha"], h["beta"], messages=m)
        last = ring_allreduce_seconds(25 * 2**20, p, h["alpha"], h["beta"])
        lines.append(f"| {p} | {c * 1e3:.1f} ms | {efficiency(h['step_s'], c, False):.1%} | "
                     f"{efficiency(h['step_s'], c, True, last):.1%} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--specs", default="lenet5,fashion_cnn")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40, help="timed steps per configuration")
    ap.add_argument("--rounds", type=int, default=5, help="turns the configurations take")
    ap.add_argument("--buckets", default="0.25,1,4,25",
                    type=lambda s: [float(v) for v in s.split(",")])
    ap.add_argument("--input", default="3@32x32", help="input shape for resnet specs")
    ap.add_argument("--json", help="also write the raw measurements here")
    ap.add_argument("--sync-batchnorm", action="store_true",
                    help="also time the networks compiled with sync_batchnorm")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--latency", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    # 1 and 2 ranks alternate (1, 2, 1, 2); each network's better run of each is reported
    one, two = run_ranks(1, args, latency=False), run_ranks(2, args, latency=True)
    for again, keep in ((run_ranks(1, args, latency=False), one), (run_ranks(2, args, latency=False), two)):
        for spec, results in again["networks"].items():
            for name, r in results.items():
                if isinstance(r, dict) and r["samples_per_s"] > keep["networks"][spec][name]["samples_per_s"]:
                    keep["networks"][spec][name] = r
    if args.json:
        Path(args.json).write_text(json.dumps({"one": one, "two": two}, indent=1))
    print(report(one, two, args))


if __name__ == "__main__":
    main()
