"""A whole training run, netspec against the same run in PyTorch, in one process.

    python tools/bench_train.py                       # LeNet-5 on the embedded digits, 10 epochs
    python tools/bench_train.py --spec specs/lenet5.net --epochs 10 --repeats 3

Both sides start from the same initial weights and see the same batches in the same order (the
permutation netspec's trainer draws), with the spec's optimizer (SGD, momentum, as PyTorch's
torch.optim.SGD computes it), and no augmentation. Times are the training epochs only (after a
warm-up run that compiles netspec's kernels); evaluation on the validation and test sets is timed
apart. PyTorch runs netspec's own graph through the independent interpreter
netspec.testing.torch_ref with torch.set_num_threads(2). Prints seconds per run (median of
--repeats), the ratio netspec/PyTorch, and both test accuracies.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import netspec  # noqa: E402
from netspec.lower.build import default_loss  # noqa: E402
from netspec.training import config as C  # noqa: E402
from netspec.training.data import batches, load_data  # noqa: E402
from netspec.training.metrics import accuracy  # noqa: E402
from netspec.training.trainer import Trainer  # noqa: E402


def netspec_run(net, cfg, data, out):
    """Train from the seed's initial weights; (seconds in training epochs, test accuracy)."""
    model = net.compile(training=True, loss=cfg["loss"], seed=cfg["seed"])
    trainer = Trainer(net, model, data, cfg, out, echo=lambda *a: None)
    start = time.perf_counter()
    for _ in range(cfg["epochs"]):
        trainer._train_epoch()
        trainer.state.epoch += 1
    seconds = time.perf_counter() - start
    return seconds, accuracy(model.predict(data.test.x, batch_size=256), data.test.y), model


def torch_run(net, cfg, data, init):
    import torch
    from netspec.testing.torch_ref import TorchGraph, loss
    graph = net.graph
    model = TorchGraph(graph, dtype=torch.float32)
    model.load({k: np.array(v) for k, v in init.items()}, strict=False)
    opt_cfg = cfg["optimizer"]
    opt = torch.optim.SGD(model.parameters(), lr=opt_cfg["lr"], momentum=opt_cfg.get("momentum", 0.0),
                          nesterov=bool(opt_cfg.get("nesterov", False)))
    out = graph.outputs[0]
    keep = [out, *graph.node(out).inputs]
    rng = np.random.default_rng(cfg["seed"])      # the same batches as netspec's trainer
    x_all = torch.from_numpy(data.train.x)
    y_all = torch.from_numpy(data.train.y.astype(np.int64))
    model.train()
    start = time.perf_counter()
    for _ in range(cfg["epochs"]):
        for idx in batches(len(data.train), cfg["batch"], rng):
            t = torch.from_numpy(idx)
            value = loss(graph, model(x_all[t], keep=keep), y_all[t], cfg["loss"])
            opt.zero_grad()
            value.backward()
            opt.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.inference_mode():
        probs = model(torch.from_numpy(data.test.x), keep=keep)[out].numpy()
    return seconds, accuracy(probs, data.test.y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="specs/lenet5.net")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import torch
    torch.set_num_threads(2)
    net = netspec.load(args.spec)
    cfg = C.resolve(net.graph.train, loss=default_loss(net.graph), epochs=args.epochs)
    cfg["augment"] = {}
    if cfg["optimizer"]["name"] not in ("sgd", "momentum", "nesterov"):
        sys.exit("bench_train compares SGD runs; this spec trains with " + cfg["optimizer"]["name"])
    graph = net.graph
    classes = graph.node(graph.outputs[0]).shape[-1]
    data = load_data(cfg["data"], graph.node(graph.inputs[0]).shape, classes, cfg["validation_split"],
                     cfg["seed"])
    import tempfile
    with tempfile.TemporaryDirectory() as out:
        netspec_run(net, cfg, data, out)                 # warm-up: compiles every kernel
        ours, theirs, acc_ours, acc_theirs = [], [], None, None
        for _ in range(args.repeats):
            s, acc_ours, model = netspec_run(net, cfg, data, out)
            ours.append(s)
        init = net.compile(training=True, loss=cfg["loss"], seed=cfg["seed"]).state_dict()
        for _ in range(args.repeats):
            s, acc_theirs = torch_run(net, cfg, data, init)
            theirs.append(s)
    a, b = statistics.median(ours), statistics.median(theirs)
    steps = cfg["epochs"] * -(-len(data.train) // cfg["batch"])
    print(f"{net.name}: {cfg['epochs']} epochs, {steps} steps of batch {cfg['batch']} on {data.source}; "
          f"median of {args.repeats}; PyTorch {torch.__version__}, 2 threads")
    print(f"  netspec  {a:6.2f} s  ({a / steps * 1e3:.2f} ms/step)  test accuracy {acc_ours:.4f}")
    print(f"  PyTorch  {b:6.2f} s  ({b / steps * 1e3:.2f} ms/step)  test accuracy {acc_theirs:.4f}")
    print(f"  ratio netspec/PyTorch {a / b:.2f}")


if __name__ == "__main__":
    main()
