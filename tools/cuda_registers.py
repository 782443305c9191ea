"""Registers per thread, spills and local memory of every CUDA kernel of runtime/cuda, for sm_90.

    python tools/cuda_registers.py                       # the float32 launches, a table
    python tools/cuda_registers.py --float64             # the float64 launches too
    python tools/cuda_registers.py --ops conv,dense --json regs.json
    python tools/cuda_registers.py --fail-on-spill       # exit 1 if a hot kernel spills

The kernels, and the argument types each is compiled for, are those the op cases launch
(netspec.testing.cuda_launches over tests/test_cuda_kernels.py's `every_call`: the PTX test's
enumeration). Each is compiled to PTX for sm_90 (H100, H200) by numba-cuda's NVVM, with no GPU,
and assembled with -v by the ptxas inside nvJitLink (the libnvJitLink that numba-cuda[cu13]
installs: the same release as its NVVM), or by a ptxas program (--assembler ptxas: $PTXAS, else
PATH, else $CUDA_HOME/bin). From that report: registers per thread, stack frame (local memory)
and spill stores and loads, in bytes per thread. Where a GPU is present, each kernel is also
compiled for it and the dispatcher's own figures are added (get_regs_per_thread,
get_local_mem_per_thread, get_shared_mem_per_block): what the driver loads.

Hot kernels are those the convolutions, dense layers (the matmul), pools, batch norm and fused
groups launch; --fail-on-spill exits 1 naming each hot kernel that spills.

--json FILE writes {"arch", "assembler", "gpu", "kernels": [{"kernel", "types",
"instructions", "hot", "registers", "stack_frame_bytes", "spill_store_bytes",
"spill_load_bytes", "device": null or {"registers", "local_bytes", "shared_bytes"}}]}.

Exit status: 0; 1 no assembler, an assembler that refuses the PTX, or a hot kernel that spills
(--fail-on-spill); 2 a usage error.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCH = "sm_90"
# instruction families whose kernels carry a network's time: a spill there costs every step
HOT = ("conv2d", "dense", "maxpool2d", "avgpool2d", "global_avgpool", "global_maxpool",
       "batchnorm", "fused")

HOW_TO_GET_ONE = ("nvJitLink comes with numba-cuda[cu13] (pip install 'numba-cuda[cu13]'); a "
                  "ptxas program with the CUDA toolkit or pip install 'nvidia-cuda-nvcc==13.*', "
                  "of a release at least that of numba-cuda's NVVM")


class ToolError(Exception):
    """A failure the user can act on: printed as one message, exit 1."""


def is_hot(instruction: str) -> bool:
    return any(instruction == f or instruction.startswith(f + "_") for f in HOT)


# ---------------------------------------------------------------- the assembler's report

ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(\w+)'")
PROPERTIES = re.compile(r"Function properties for (\S+)")
FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
REGISTERS = re.compile(r"Used (\d+) registers")


def parse_report(text: str) -> dict[str, dict[str, int]]:
    """ptxas -v's report -> {entry function: {registers, stack_frame_bytes, spill_store_bytes,
    spill_load_bytes}}; a device function's properties (not inlined) are not the entry's."""
    found: dict[str, dict[str, int]] = {}
    entry = about = None
    for line in text.splitlines():
        if m := ENTRY.search(line):
            entry = m.group(1)
            found[entry] = {}
        elif m := PROPERTIES.search(line):
            about = m.group(1).strip("'")
        elif (m := FRAME.search(line)) and entry is not None and about == entry:
            found[entry].update(stack_frame_bytes=int(m.group(1)), spill_store_bytes=int(m.group(2)),
                                spill_load_bytes=int(m.group(3)))
        elif (m := REGISTERS.search(line)) and entry is not None:
            found[entry]["registers"] = int(m.group(1))
    return found


def nvjitlink_assembler(max_registers=None):
    """(description, assemble(ptx) -> report) with the ptxas inside nvJitLink, or None."""
    try:
        from cuda.bindings import nvjitlink
        major, minor = nvjitlink.version()
    except Exception:  # noqa: BLE001  (no cuda-bindings, or no libnvJitLink it can load)
        return None

    def assemble(ptx: str) -> str:
        data = ptx.encode()
        options = [f"-arch={ARCH}", "-verbose", "-Xptxas=-v",
                   *([f"-maxrregcount={max_registers}"] if max_registers else [])]
        handle = nvjitlink.create(len(options), options)
        try:
            try:
                nvjitlink.add_data(handle, nvjitlink.InputType.PTX, data, len(data), "kernel.ptx")
                nvjitlink.complete(handle)
            except nvjitlink.nvJitLinkError as e:
                raise ToolError(f"nvJitLink {major}.{minor} refused the PTX: {e}: "
                                f"{_log(nvjitlink, handle, 'error')}") from None
            return _log(nvjitlink, handle, "info")
        finally:
            nvjitlink.destroy(handle)
    return f"nvJitLink {major}.{minor} (its ptxas)", assemble


def _log(nvjitlink, handle, which: str) -> str:
    size = getattr(nvjitlink, f"get_{which}_log_size")(handle)
    buf = bytearray(size)
    if size:
        getattr(nvjitlink, f"get_{which}_log")(handle, buf)
    return buf.decode(errors="replace").rstrip("\x00").strip()


def find_ptxas() -> str | None:
    """$PTXAS, else ptxas on PATH, else in $CUDA_HOME/bin, else in an nvidia-cuda-nvcc wheel."""
    if os.environ.get("PTXAS"):
        return os.environ["PTXAS"]
    for candidate in (shutil.which("ptxas"),
                      os.environ.get("CUDA_HOME") and str(Path(os.environ["CUDA_HOME"], "bin", "ptxas")),
                      *(p for d in sys.path for p in glob.glob(os.path.join(d, "nvidia", "*", "bin", "ptxas")))):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def ptxas_assembler(max_registers=None):
    """(description, assemble(ptx) -> report) with a ptxas program, or None."""
    ptxas = find_ptxas()
    if ptxas is None:
        return None
    try:
        version = subprocess.run([ptxas, "--version"], capture_output=True, text=True, timeout=60)
    except OSError as e:
        raise ToolError(f"cannot run ptxas {ptxas}: {e.strerror}") from None
    release = re.search(r"release [\d.]+, V[\d.]+", version.stdout)
    described = f"ptxas {release.group(0) if release else '(version unknown)'} at {ptxas}"

    def assemble(ptx: str) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp, "kernel.ptx")
            source.write_text(ptx)
            cap = ["--maxrregcount", str(max_registers)] if max_registers else []
            done = subprocess.run([ptxas, "-v", "--gpu-name", ARCH, *cap, str(source), "-o",
                                   str(Path(tmp, "kernel.cubin"))], capture_output=True, text=True,
                                  timeout=300)
        report = done.stdout + done.stderr
        if done.returncode:
            if m := re.search(r"Unsupported \.version ([\d.]+); current version is '([\d.]+)'", report):
                raise ToolError(f"{described} reads PTX ISA up to {m.group(2)}, and numba-cuda's NVVM "
                                f"wrote {m.group(1)}: use --assembler nvjitlink, or a newer ptxas "
                                f"({HOW_TO_GET_ONE})")
            raise ToolError(f"{described} failed: {report.strip()[-2000:]}")
        return report
    return described, assemble


def assembler(choice: str, max_registers=None):
    found = None
    if choice in ("auto", "nvjitlink"):
        found = nvjitlink_assembler(max_registers)
    if found is None and choice in ("auto", "ptxas"):
        found = ptxas_assembler(max_registers)
    if found is None:
        which = {"auto": "neither nvJitLink nor a ptxas program", "nvjitlink": "no nvJitLink",
                 "ptxas": "no ptxas program ($PTXAS, PATH, $CUDA_HOME/bin)"}[choice]
        raise ToolError(f"no PTX assembler: {which} found; {HOW_TO_GET_ONE}")
    return found


# ---------------------------------------------------------------- the kernels

def launches(dtypes, ops):
    sys.path.insert(0, str(ROOT / "tests"))      # the op cases' calls are the tests' machinery
    try:
        import test_cuda_kernels
    except ImportError as e:
        raise ToolError(f"the op cases need the test dependencies ({e}): "
                        "pip install -e '.[test]' (tools/install-test-deps.sh)") from None
    from netspec.testing.cuda_launches import every_launch
    return every_launch(test_cuda_kernels.every_call(dtypes, ops), cc=(9, 0))


def device_figures(launch) -> dict:
    """The kernel compiled for the GPU present: numba's own figures for it."""
    from numba.core import types
    signature = types.void(*launch.signature)
    launch.kernel.compile(signature)
    return {"registers": launch.kernel.get_regs_per_thread(signature),
            "local_bytes": launch.kernel.get_local_mem_per_thread(signature),
            "shared_bytes": launch.kernel.get_shared_mem_per_block(signature)}


def measure(launches_, assemble, on_device: bool) -> list[dict]:
    records = []
    for launch in launches_:
        report = parse_report(assemble(launch.ptx))
        if len(report) != 1 or len(next(iter(report.values()))) != 4:
            raise ToolError(f"{launch.name} ({launch.types}): the assembler's report gave no "
                            f"registers and spills for one entry function:\n{report}")
        figures = next(iter(report.values()))
        records.append({"kernel": launch.name, "types": launch.types,
                        "instructions": sorted(launch.instructions),
                        "hot": any(is_hot(i) for i in launch.instructions), **figures,
                        "device": device_figures(launch) if on_device else None})
    return records


def table(records) -> str:
    from netspec.testing.tables import text_table
    heads = ("kernel", "types", "regs", "stack", "spill st", "spill ld", "GPU regs", "GPU local",
             "hot", "instructions")
    rows = [heads]
    for r in records:
        d = r["device"] or {}
        rows.append((r["kernel"], r["types"], str(r["registers"]), str(r["stack_frame_bytes"]),
                     str(r["spill_store_bytes"]), str(r["spill_load_bytes"]),
                     str(d.get("registers", "-")), str(d.get("local_bytes", "-")),
                     "hot" if r["hot"] else "", ",".join(r["instructions"])))
    return text_table(rows, right=range(2, 8))


def spilling(records) -> list[dict]:
    return [r for r in records if r["hot"] and (r["spill_store_bytes"] or r["spill_load_bytes"])]


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--float64", action="store_true", help="the float64 launches too")
    ap.add_argument("--ops", default="", help="only these ops' cases (comma-separated op names)")
    ap.add_argument("--assembler", choices=("auto", "nvjitlink", "ptxas"), default="auto",
                    help="the ptxas inside nvJitLink, or a ptxas program (auto: the first found)")
    ap.add_argument("--max-registers", type=int, metavar="N",
                    help="assemble with at most N registers per thread (what a cap would spill)")
    ap.add_argument("--fail-on-spill", action="store_true", help="exit 1 if a hot kernel spills")
    ap.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    args = ap.parse_args(argv)
    if args.json and not Path(args.json).resolve().parent.is_dir():
        ap.error(f"--json: no such folder: {Path(args.json).parent}")
    from netspec.ops import INTERNAL_OPS, OPS
    if args.max_registers is not None and not 16 <= args.max_registers <= 255:
        ap.error(f"--max-registers must be 16 to 255 (sm_90's range), not {args.max_registers}")
    args.ops = [o.strip() for o in args.ops.split(",") if o.strip()] or None
    unknown = sorted(set(args.ops or ()) - set(OPS) - set(INTERNAL_OPS))
    if unknown:
        ap.error(f"unknown op(s) {', '.join(unknown)}; the ops are {', '.join(sorted({**OPS, **INTERNAL_OPS}))}")
    return args


def main(argv=None) -> int:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "0"       # compile_ptx compiles nothing under the simulator
    args = parse_args(argv)
    try:
        described, assemble = assembler(args.assembler, args.max_registers)
        from numba import cuda
        on_device = cuda.is_available()
        gpu = cuda.get_current_device().name if on_device else None
        gpu = gpu.decode() if isinstance(gpu, bytes) else gpu
        found = launches(("float32", "float64") if args.float64 else ("float32",), args.ops)
        if not found:
            raise ToolError("the selected op cases launch no CUDA kernel")
        records = measure(found, assemble, on_device)
    except ToolError as e:
        print(f"cuda_registers: {e}", file=sys.stderr)
        return 1
    print(f"{len(records)} kernel compilations for {ARCH}; assembled by {described}; "
          f"GPU: {gpu or 'none (assembler figures only)'}")
    print(table(records))
    if args.json:
        Path(args.json).write_text(json.dumps({"arch": ARCH, "assembler": described, "gpu": gpu,
                                               "kernels": records}, indent=2) + "\n")
    if args.fail_on_spill and (bad := spilling(records)):
        for r in bad:
            print(f"cuda_registers: hot kernel {r['kernel']} ({r['types']}) spills: "
                  f"{r['spill_store_bytes']} bytes stored, {r['spill_load_bytes']} loaded per thread",
                  file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
