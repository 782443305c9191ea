"""LeNet-5 epoch time alone and beside a busy process, for each way the CPU threads may wait.

    python tools/bench_busy.py              # every setting, 3 repeats, both neighbours
    python tools/bench_busy.py --quick      # 1 repeat, 3 epochs, the OpenMP neighbour only
    python tools/bench_busy.py --settings spin,shortspin --busy spin --repeats 5

Each measurement is a fresh process (the wait policy and thread layer are fixed when Numba's
pool starts) that compiles LeNet-5 from the kernel cache, trains one warm-up epoch on the
embedded digits, then times --epochs epochs with netspec's Trainer. A setting is
NETSPEC_THREADS (runtime/cpu/threads.py), with `/free` for NETSPEC_NUM_THREADS=free. Neighbours:
`spin`, one pure-Python busy loop per usable core; `omp`, a second LeNet-5 training in a loop with
Numba's default OpenMP spinning (what another OpenMP program does). Settings are interleaved
within each repeat, so a change in the machine's load hits them all alike; each row gives the
1-minute load average (`uptime`) seen when its runs started. Prints a table: median epoch
seconds alone and busy, and busy / alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ["auto", "spin", "passive", "workqueue", "tbb", "spin/free", "passive/free"]
NEIGHBOURS = ["spin", "omp"]


def setting_env(setting: str) -> dict:
    """The environment of a run with this setting: none of the user's thread variables."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMP_", "GOMP_", "KMP_", "NUMBA_THREADING", "NUMBA_NUM_THREADS",
                                "NETSPEC_THREADS", "NETSPEC_NUM_THREADS"))}
    policy, _, count = setting.partition("/")
    env["NETSPEC_THREADS"] = policy
    env["NETSPEC_NUM_THREADS"] = count or "all"
    return env


def child(epochs: int, forever: bool) -> None:
    """Train LeNet-5 (warm-up epoch, then `epochs` timed ones) and print one JSON line."""
    sys.path.insert(0, str(ROOT))
    import tempfile

    import numba

    import netspec
    from netspec.runtime.cpu import threads
    from netspec.lower.build import default_loss
    from netspec.training import config as C
    from netspec.training.data import load_data
    from netspec.training.trainer import Trainer

    net = netspec.load(ROOT / "specs" / "lenet5.net")
    graph = net.graph
    cfg = C.resolve(graph.train, loss=default_loss(graph), epochs=epochs)
    cfg["augment"] = {}
    data = load_data(cfg["data"], graph.node(graph.inputs[0]).shape,
                     graph.node(graph.outputs[0]).shape[-1], cfg["validation_split"], cfg["seed"])
    with tempfile.TemporaryDirectory() as out:
        model = net.compile(training=True, loss=cfg["loss"], seed=cfg["seed"])
        trainer = Trainer(net, model, data, cfg, out, echo=lambda *a: None)
        trainer._train_epoch()
        if forever:                                  # a neighbour: say it is ready, then train on
            print("ready", flush=True)
            while True:
                trainer._train_epoch()
        times = []
        for _ in range(epochs):
            start = time.perf_counter()
            trainer._train_epoch()
            times.append(time.perf_counter() - start)
    print(json.dumps({"epochs": times, "policy": threads.chosen[0], "layer": numba.threading_layer(),
                      "threads": numba.get_num_threads()}))


def start_neighbour(kind: str) -> list[subprocess.Popen]:
    if kind == "spin":
        loop = "while True: pass"
        return [subprocess.Popen([sys.executable, "-c", loop]) for _ in os.sched_getaffinity(0)]
    proc = subprocess.Popen([sys.executable, __file__, "--child", "--forever"], env=setting_env("spin"),
                            stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        sys.exit("bench_busy: the OpenMP neighbour did not start")
    return [proc]


def measure(setting: str, epochs: int) -> dict | None:
    """One run's epoch times, or None where the setting cannot run here (no tbb)."""
    res = subprocess.run([sys.executable, __file__, "--child", "--epochs", str(epochs)],
                         env=setting_env(setting), capture_output=True, text=True)
    if res.returncode:
        if "No threading layer could be loaded" in res.stderr:
            return None
        sys.exit(f"bench_busy: {setting} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--busy", default=",".join(NEIGHBOURS), help="neighbours: spin, omp")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5, help="timed epochs per run (median taken)")
    ap.add_argument("--quick", action="store_true", help="1 repeat, 3 epochs, the omp neighbour")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--forever", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.epochs, args.forever)
    sys.path.insert(0, str(ROOT))
    if args.quick:
        args.repeats, args.epochs, args.busy = 1, 3, "omp"
    settings, neighbours = args.settings.split(","), args.busy.split(",")
    conditions = ["alone", *neighbours]
    times = {(s, c): [] for s in settings for c in conditions}
    loads = {s: [] for s in settings}
    info, missing = {}, set()
    for rep in range(args.repeats):
        for setting in settings:
            if setting in missing:
                continue
            loads[setting].append(os.getloadavg()[0])
            for cond in conditions:
                procs = [] if cond == "alone" else start_neighbour(cond)
                try:
                    result = measure(setting, args.epochs)
                finally:
                    for p in procs:
                        p.kill()
                        p.wait()
                if result is None:
                    missing.add(setting)
                    break
                times[setting, cond].append(statistics.median(result["epochs"]))
                info.setdefault(setting, set()).add(f"{result['policy']} {result['layer']}, {result['threads']}")
            print(f"repeat {rep + 1}/{args.repeats} {setting}: done", file=sys.stderr, flush=True)
    steps = "21 steps of batch 64"
    print(f"LeNet-5 epoch on the embedded digits ({steps}), seconds: median over {args.repeats} "
          f"run(s) of each run's median of {args.epochs} epochs; {os.cpu_count()} CPUs")
    head = "| setting | policy layer, threads | load (1 min) | alone s | " + " | ".join(
        f"beside {n} s | {n}/alone" for n in neighbours) + " |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for setting in settings:
        if setting in missing:
            print(f"| {setting} | not available here |" + " |" * (2 * len(neighbours) + 2))
            continue
        alone = statistics.median(times[setting, "alone"])
        cells = [f"{statistics.median(times[setting, n]):.3f} | "
                 f"{statistics.median(times[setting, n]) / alone:.1f}x" for n in neighbours]
        load = "-".join(f"{x:.1f}" for x in (min(loads[setting]), max(loads[setting])))
        print(f"| {setting} | {'; '.join(sorted(info[setting]))} | {load} | {alone:.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
