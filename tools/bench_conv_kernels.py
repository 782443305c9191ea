"""Time the CPU conv/dense kernels against PyTorch, layer by layer, in one process.

    python tools/bench_conv_kernels.py               # all layers, 7 repeats each
    python tools/bench_conv_kernels.py --repeat 15 --only lenet

For each layer shape (LeNet-5 at batch 256, ResNet-34 at 3@64x64 batch 16, and their dense
layers) it times, as the median of `--repeat` runs after one warm-up run:
- fwd:  our conv2d                  vs torch conv2d (no grad)
- bwd:  our conv2d_bwd_data + conv2d_bwd_weight (+ bias_grad where the layer has a bias)
        vs torch's backward of conv2d for the same gradients (input grad skipped for a
        network's first layer, as a training step does: torch then skips it too);
        dense layers: dense / dense_bwd_data + dense_bwd_weight + bias_grad vs F.linear
and prints our time, torch's time and the ratio ours/torch (below 1: we are faster). Torch
runs with torch.set_num_threads(2), our kernels on Numba's pool (Numba's pool
is the only parallelism), as the executor runs them. Timings on a shared machine are noisy:
compare within one run, and repeat.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netspec.runtime.cpu import KERNELS  # noqa: E402

# name, batch, C, H, W, O, k, stride, pad, bias, first layer (no input gradient), how many
# times the network has the layer (ResNet-34 at 64x64: its stride-2 128->256 and 256->512
# convs are not listed)
LAYERS = [
    ("lenet c1 1->6 5x5 32px", 256, 1, 32, 32, 6, 5, 1, 0, True, True, 1),
    ("lenet c3 6->16 5x5 14px", 256, 6, 14, 14, 16, 5, 1, 0, True, False, 1),
    ("lenet c5 16->120 5x5 5px", 256, 16, 5, 5, 120, 5, 1, 0, True, False, 1),
    ("resnet stem 3->64 7x7/2", 16, 3, 64, 64, 64, 7, 2, 3, False, True, 1),
    ("resnet 64->64 3x3 16px", 16, 64, 16, 16, 64, 3, 1, 1, False, False, 6),
    ("resnet 64->128 3x3/2", 16, 64, 16, 16, 128, 3, 2, 1, False, False, 1),
    ("resnet 64->128 1x1/2", 16, 64, 16, 16, 128, 1, 2, 0, False, False, 1),
    ("resnet 128->128 3x3 8px", 16, 128, 8, 8, 128, 3, 1, 1, False, False, 7),
    ("resnet 256->256 3x3 4px", 16, 256, 4, 4, 256, 3, 1, 1, False, False, 11),
    ("resnet 512->512 3x3 2px", 16, 512, 2, 2, 512, 3, 1, 1, False, False, 5),
]
DENSE = [
    ("lenet f6 120->84", 256, 120, 84, 1),
    ("lenet out 84->10", 256, 84, 10, 1),
    ("resnet fc 512->10", 16, 512, 10, 1),
]


def median_ms(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def bench_conv(layer, repeat, torch):
    name, n, c, h, w, o, k, s, p, has_bias, first, _ = layer
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, h, w, c), dtype=np.float32)
    wt = rng.standard_normal((o, k, k, c), dtype=np.float32) * 0.1
    b = rng.standard_normal(o, dtype=np.float32) if has_bias else None
    oh = (h + 2 * p - k) // s + 1
    ow = (w + 2 * p - k) // s + 1
    attrs = dict(stride=(s, s), pad=(p, p, p, p), dilation=(1, 1), groups=1)
    y = np.empty((n, oh, ow, o), np.float32)
    gy = rng.standard_normal(y.shape, dtype=np.float32)
    gx = np.empty_like(x)
    gw = np.empty_like(wt)
    gb = np.empty(o, np.float32)

    def ours_fwd():
        KERNELS["conv2d"]([x, wt, b], [y], attrs, None)

    def ours_bwd():
        if not first:
            KERNELS["conv2d_bwd_data"]([gy, wt, None], [gx], attrs, None)
        KERNELS["conv2d_bwd_weight"]([x, gy], [gw], attrs, None)
        if has_bias:
            KERNELS["bias_grad"]([gy], [gb], {}, None)

    F = torch.nn.functional
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(not first)
    tw = torch.from_numpy(wt.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    tb = torch.from_numpy(b).requires_grad_(True) if has_bias else None
    tgy = torch.from_numpy(gy.transpose(0, 3, 1, 2).copy())

    def torch_fwd():
        with torch.no_grad():
            F.conv2d(tx, tw, tb, stride=s, padding=p)

    ty = F.conv2d(tx, tw, tb, stride=s, padding=p)
    wrt = [t for t in (tx, tw, tb) if t is not None and t.requires_grad]

    def torch_bwd():
        torch.autograd.grad(ty, wrt, tgy, retain_graph=True)

    ours = (median_ms(ours_fwd, repeat), median_ms(ours_bwd, repeat))
    theirs = (median_ms(torch_fwd, repeat), median_ms(torch_bwd, repeat))
    return ours, theirs


def bench_dense(layer, repeat, torch):
    name, n, f, u, _ = layer
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, f), dtype=np.float32)
    w = rng.standard_normal((u, f), dtype=np.float32)
    b = rng.standard_normal(u, dtype=np.float32)
    y = np.empty((n, u), np.float32)
    gy = rng.standard_normal((n, u), dtype=np.float32)
    gx, gw, gb = np.empty_like(x), np.empty_like(w), np.empty_like(b)

    def ours_fwd():
        KERNELS["dense"]([x, w, b], [y], {}, None)

    def ours_bwd():
        KERNELS["dense_bwd_data"]([gy, w], [gx], {}, None)
        KERNELS["dense_bwd_weight"]([x, gy], [gw], {}, None)
        KERNELS["bias_grad"]([gy], [gb], {}, None)

    F = torch.nn.functional
    tx = torch.from_numpy(x).requires_grad_(True)
    tw = torch.from_numpy(w).requires_grad_(True)
    tb = torch.from_numpy(b).requires_grad_(True)

    def torch_fwd():
        with torch.no_grad():
            F.linear(tx, tw, tb)

    ty = F.linear(tx, tw, tb)
    tgy = torch.from_numpy(gy)

    def torch_bwd():
        torch.autograd.grad(ty, [tx, tw, tb], tgy, retain_graph=True)

    ours = (median_ms(ours_fwd, repeat), median_ms(ours_bwd, repeat))
    theirs = (median_ms(torch_fwd, repeat), median_ms(torch_bwd, repeat))
    return ours, theirs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--only", default="", help="run the layers whose name contains this")
    args = ap.parse_args(argv)

    import numba
    import torch
    torch.set_num_threads(2)
    print(f"numba threads {numba.get_num_threads()}, torch threads {torch.get_num_threads()}, "
          f"median of {args.repeat} runs (ms)")
    head = (f"{'layer':28s} {'fwd ms':>8s} {'torch':>8s} {'ratio':>6s}   "
            f"{'bwd ms':>8s} {'torch':>8s} {'ratio':>6s}   {'f+b ratio':>9s}")
    print(head)
    print("-" * len(head))
    totals = {}
    rows = [(layer, bench_conv) for layer in LAYERS] + [(layer, bench_dense) for layer in DENSE]
    for layer, fn in rows:
        name, count = layer[0], layer[-1]
        if args.only not in name:
            continue
        (of, ob), (tf, tb) = fn(layer, args.repeat, torch)
        print(f"{name:28s} {of:8.3f} {tf:8.3f} {of / tf:6.2f}   {ob:8.3f} {tb:8.3f} {ob / tb:6.2f}"
              f"   {(of + ob) / (tf + tb):9.2f}")
        t = totals.setdefault(name.split()[0], [0.0, 0.0, 0.0, 0.0])
        for i, v in enumerate((of, ob, tf, tb)):
            t[i] += count * v
    print("-" * len(head))
    for net, (of, ob, tf, tb) in totals.items():
        label = f"{net}, x layer counts"
        print(f"{label:28s} {of:8.3f} {tf:8.3f} {of / tf:6.2f}   {ob:8.3f} {tb:8.3f} "
              f"{ob / tb:6.2f}   {(of + ob) / (tf + tb):9.2f}")


if __name__ == "__main__":
    main()
