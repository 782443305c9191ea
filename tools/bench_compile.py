"""Compile time of `net.compile(target="cpu", training=True)`: cold and warm Numba cache.

Each measurement runs in a fresh Python process (so nothing is compiled in memory):
cold uses an empty cache folder, warm runs again on the folder the cold run filled.

    python tools/bench_compile.py                      # resnet34 and resnet152
    python tools/bench_compile.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CASES = {
    "resnet34": ("specs/resnet34.net", "dict(classes=10, input_shape=(3, 64, 64))"),
    "resnet152": ("specs/resnet152.net", "dict(classes=10, input_shape=(3, 64, 64))"),
    "lenet5": ("specs/lenet5.net", "dict(classes=10)"),
}

CHILD = """
import time, json
t0 = time.perf_counter()
import netspec
t1 = time.perf_counter()
net = netspec.load({spec!r}, **{kwargs})
t2 = time.perf_counter()
model = net.compile(target="cpu", training=True)
t3 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1, "compile_s": t3 - t2,
                  "kernels": len(model.program.kernels()),
                  "instructions": sum(len(p.instrs) for p in model.program.phases.values())}}))
"""


def measure(case: str, cache: str) -> dict:
    spec, kwargs = CASES[case]
    env = dict(os.environ, NETSPEC_CACHE_DIR=cache)
    env.pop("NUMBA_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", CHILD.format(spec=spec, kwargs=kwargs)],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="resnet34,resnet152")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    records = []
    print(f"{'case':<10} {'cold s':>8} {'warm s':>8} {'kernels':>8} {'instructions':>13}")
    for case in args.cases.split(","):
        with tempfile.TemporaryDirectory() as cache:
            cold = measure(case, cache)
            warm = measure(case, cache)
        records.append({"case": case, "cold_s": round(cold["compile_s"], 2),
                        "warm_s": round(warm["compile_s"], 2), "kernels": cold["kernels"],
                        "instructions": cold["instructions"]})
        r = records[-1]
        print(f"{case:<10} {r['cold_s']:>8.2f} {r['warm_s']:>8.2f} {r['kernels']:>8} "
              f"{r['instructions']:>13}")
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2) + "\n")


if __name__ == "__main__":
    main()
