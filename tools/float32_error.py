"""float32 accuracy of the CPU target's long reductions, against PyTorch's float32 on the same data.

    python tools/float32_error.py                     # every case, table
    python tools/float32_error.py --cases conv --json err.json
    python tools/float32_error.py --size 112          # VGG-16 to pool4 at 3@112x112

Each case runs netspec's CPU kernels in float32 and PyTorch (CPU, float32) on the same float32
inputs and weights, and reports each one's relative error ||out - ref|| / ||ref|| against a
float64 reference computed from those same float32 values (so only the arithmetic differs):

- single layers (conv forward, backward data and weight, depthwise weight gradients, dense
  forward): the reference is NumPy in float64 (an im2col and one float64 matrix product, or
  einsum), sharing no code with netspec;
- VGG-16's features to pool4 (13.7 G multiply-adds at 224x224): the reference is netspec's own
  CPU model in float64, from the same weights (netspec's initialisers, seed 0) and input;
  PyTorch runs the graph op by op (netspec.testing.torch_ref.TorchGraph, as tests/ and
  tools/bench_cpu.py do).

The "ratio" column is netspec's error over PyTorch's. Inputs and weights are standard normal
(single layers; weights scaled by 1/sqrt(fan-in)), seeded.

--json FILE writes a list of {"case", "reduction", "netspec", "torch", "ratio"}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SEED = 0


def rel_error(got, want) -> float:
    got = np.asarray(got.detach().numpy() if hasattr(got, "detach") else got, np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


# ---------------------------------------------------------------- float64 references (NumPy)

def im2col64(x, KH, KW, pad):
    """(N*OH*OW, KH*KW*C) patches of the NHWC x in float64, stride 1, `pad` on every side;
    columns in (kh, kw, c) order (OHWI weights)."""
    N, H, W, C = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    OH, OW = H + 2 * pad - KH + 1, W + 2 * pad - KW + 1
    cols = [xp[:, kh:kh + OH, kw:kw + OW, :] for kh in range(KH) for kw in range(KW)]
    return np.concatenate(cols, axis=3).reshape(N * OH * OW, KH * KW * C), (N, OH, OW)


def conv64(x, w, pad):
    """conv2d (stride 1, symmetric `pad`) of NHWC x and OHWI w, in float64."""
    O, KH, KW, C = w.shape
    col, (N, OH, OW) = im2col64(x, KH, KW, pad)
    return (col @ w.reshape(O, -1).astype(np.float64).T).reshape(N, OH, OW, O)


def conv_bwd_data64(gy, w, pad):
    """The input gradient of conv64: the conv of gy with the flipped, transposed kernel."""
    KH, KW = w.shape[1:3]
    wf = w[:, ::-1, ::-1, :].transpose(3, 1, 2, 0)      # (C, KH, KW, O)
    return conv64(gy, np.ascontiguousarray(wf), KH - 1 - pad)


def conv_bwd_weight64(x, gy, KH, KW, pad):
    col, _ = im2col64(x, KH, KW, pad)
    O = gy.shape[3]
    return (gy.reshape(-1, O).astype(np.float64).T @ col).reshape(O, KH, KW, x.shape[3])


# ---------------------------------------------------------------- single layers

def netspec_kernel(name, ins, shape, attrs=None):
    from netspec.runtime.cpu import KERNELS
    out = np.empty(shape, np.float32)
    KERNELS[name](ins, [out], attrs or {}, None)
    return out


def nchw(a):
    import torch
    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


def nhwc(t):
    return t.permute(0, 2, 3, 1).contiguous()


def conv_case(kind, N, H, C, O, K=3):
    """One KxK same conv, C -> O channels at HxH, batch N: its forward, backward data or
    backward weight; returns (netspec error, torch error, reduction length)."""
    import torch
    F = torch.nn.functional
    rng = np.random.default_rng(SEED)
    pad = K // 2
    x = rng.standard_normal((N, H, H, C)).astype(np.float32)
    w = (rng.standard_normal((O, K, K, C)) / np.sqrt(K * K * C)).astype(np.float32)
    gy = rng.standard_normal((N, H, H, O)).astype(np.float32)
    attrs = dict(stride=(1, 1), pad=(pad,) * 4, dilation=(1, 1), groups=1)
    wt = torch.from_numpy(np.ascontiguousarray(w.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        if kind == "forward":
            want = conv64(x, w, pad)
            ours = netspec_kernel("conv2d", [x, w, None], want.shape, attrs)
            theirs = nhwc(F.conv2d(nchw(x), wt, padding=pad))
            length = K * K * C
        elif kind == "bwd_data":
            want = conv_bwd_data64(gy, w, pad)
            ours = netspec_kernel("conv2d_bwd_data", [gy, w, None], x.shape, attrs)
            theirs = nhwc(torch.nn.grad.conv2d_input(
                (N, C, H, H), wt, nchw(gy), padding=pad))
            length = K * K * O
        else:
            want = conv_bwd_weight64(x, gy, K, K, pad)
            ours = netspec_kernel("conv2d_bwd_weight", [x, gy], w.shape, attrs)
            theirs = torch.nn.grad.conv2d_weight(nchw(x), wt.shape, nchw(gy), padding=pad)
            theirs = theirs.permute(0, 2, 3, 1)
            length = N * H * H
    return rel_error(ours, want), rel_error(theirs, want), length


def depthwise_bwd_weight_case(N, H, C, stride, K=3):
    """The weight gradient of a KxK depthwise conv (groups = C channels, padding K // 2),
    whose reduction runs over every output pixel of the batch."""
    import torch
    rng = np.random.default_rng(SEED)
    pad = K // 2
    OH = (H + 2 * pad - K) // stride + 1
    x = rng.standard_normal((N, H, H, C)).astype(np.float32)
    gy = rng.standard_normal((N, OH, OH, C)).astype(np.float32)
    attrs = dict(stride=(stride, stride), pad=(pad,) * 4, dilation=(1, 1), groups=C)
    xp = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    span = (OH - 1) * stride + 1
    want = np.stack([np.einsum("nhwc,nhwc->c", gy.astype(np.float64),
                               xp[:, kh:kh + span:stride, kw:kw + span:stride, :])
                     for kh in range(K) for kw in range(K)], axis=1).reshape(C, K, K, 1)
    ours = netspec_kernel("conv2d_bwd_weight", [x, gy], want.shape, attrs)
    with torch.no_grad():
        theirs = torch.nn.grad.conv2d_weight(nchw(x), (C, 1, K, K), nchw(gy), stride=stride,
                                             padding=pad, groups=C).permute(0, 2, 3, 1)
    return rel_error(ours, want), rel_error(theirs, want), N * OH * OH


def dense_case(N, Fin, U):
    """y = x @ w.T + b with a long reduction (Fin)."""
    import torch
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((N, Fin)).astype(np.float32)
    w = (rng.standard_normal((U, Fin)) / np.sqrt(Fin)).astype(np.float32)
    b = rng.standard_normal(U).astype(np.float32)
    want = x.astype(np.float64) @ w.astype(np.float64).T + b
    ours = netspec_kernel("dense", [x, w, b], want.shape)
    with torch.no_grad():
        theirs = torch.nn.functional.linear(torch.from_numpy(x), torch.from_numpy(w),
                                            torch.from_numpy(b))
    return rel_error(ours, want), rel_error(theirs, want), Fin


# ---------------------------------------------------------------- VGG-16 to pool4

VGG16_POOL4 = """
block stage(filters, convs) {
    in x
    out x -> conv(filters, 3, pad=same, act=relu) * convs -> maxpool(2)
}

network vgg16_pool4() {
    input image: 3@SIZExSIZE
    image -> block1: stage(64, 2) -> block2: stage(128, 2) -> block3: stage(256, 3)
          -> block4: stage(512, 3) -> out
}
"""


def vgg_case(size, batch):
    """VGG-16's convs and pools to pool4 (512@size/16), netspec float32 and PyTorch float32
    against netspec float64, from netspec's initial weights."""
    import torch
    import netspec
    from netspec.testing.torch_ref import TorchGraph

    net = netspec.loads(VGG16_POOL4.replace("SIZE", str(size)))
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((batch, *net.graph.node(net.graph.inputs[0]).shape)).astype(np.float32)
    m32 = net.compile(target="cpu", training=False, batch=batch)
    params = {k: np.array(v) for k, v in m32.params.items()}
    ours = m32.predict(x)
    del m32
    m64 = net.compile(target="cpu", training=False, dtype="float64", batch=batch)
    m64.set_weights({k: v.astype(np.float64) for k, v in params.items()})
    want = np.asarray(m64.predict(x.astype(np.float64)), np.float64)
    del m64
    model = TorchGraph(net.graph, dtype=torch.float32, calibrate=False)
    model.load(params)
    model.eval()
    out = net.graph.outputs[0]
    with torch.inference_mode():
        theirs = model(torch.from_numpy(x), keep=[out])[out]
    return rel_error(ours, want), rel_error(theirs, want), 4608


# ---------------------------------------------------------------- the cases

def cases(args):
    """(name, function) of every case."""
    return [
        ("conv 3x3 512->512 14x14 b2 forward", lambda: conv_case("forward", 2, 14, 512, 512)),
        ("conv 3x3 512->512 14x14 b2 bwd_data", lambda: conv_case("bwd_data", 2, 14, 512, 512)),
        ("conv 3x3 64->64 56x56 b2 bwd_weight", lambda: conv_case("bwd_weight", 2, 56, 64, 64)),
        ("conv 3x3 256->256 28x28 b4 bwd_weight",
         lambda: conv_case("bwd_weight", 4, 28, 256, 256)),
        # depthwise: row by row along the channels (64), row by row along the pixels
        # (stride 2, 8 channels), whole planes (stride 1, 8 channels)
        ("depthwise 3x3 64ch 56x56 b8 bwd_weight",
         lambda: depthwise_bwd_weight_case(8, 56, 64, 1)),
        ("depthwise 3x3/2 8ch 112x112 b8 bwd_weight",
         lambda: depthwise_bwd_weight_case(8, 112, 8, 2)),
        ("depthwise 3x3 8ch 56x56 b8 bwd_weight",
         lambda: depthwise_bwd_weight_case(8, 56, 8, 1)),
        ("dense 25088->256 b8 forward", lambda: dense_case(8, 25088, 256)),
        (f"vgg16 to pool4 3@{args.size}x{args.size} b{args.batch}",
         lambda: vgg_case(args.size, args.batch)),
    ]


def table(records) -> str:
    from netspec.testing.tables import text_table
    rows = [("case", "reduction", "netspec", "torch", "ratio")]
    for r in records:
        rows.append((r["case"], str(r["reduction"]), f"{r['netspec']:.2e}", f"{r['torch']:.2e}",
                     f"{r['ratio']:.2f}"))
    return text_table(rows, right=range(1, len(rows[0])))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="", help="only cases whose name contains this")
    ap.add_argument("--size", type=int, default=224, help="VGG-16's input height and width")
    ap.add_argument("--batch", type=int, default=1, help="VGG-16's batch")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    ap.add_argument("--json", metavar="FILE", help="write the records as JSON")
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    todo = [(name, fn) for name, fn in cases(args) if args.cases in name]
    if not todo:
        print(f"no case matches {args.cases!r}", file=sys.stderr)
        return 2
    print(f"relative error ||out - ref|| / ||ref|| vs float64 (NumPy; VGG: netspec float64), "
          f"float32, torch {torch.__version__}", flush=True)
    records = []
    for name, fn in todo:
        ours, theirs, length = fn()
        records.append({"case": name, "reduction": length, "netspec": ours, "torch": theirs,
                        "ratio": ours / theirs})
        print(f"  {name}: netspec {ours:.2e}, torch {theirs:.2e}", file=sys.stderr, flush=True)
    print()
    print(table(records))
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
