#!/bin/bash
# The CUDA target's checks on a lent GPU machine (issues 15 and 19), in one command, within 9
# minutes; name steps to run only those (bash tools/gpu_check.sh data-parallel nccl):
#   cuda-tests      NUMBA_ENABLE_CUDASIM=0 python3 -m pytest -q tests/test_cuda_kernels.py:
#                   every kernel on the GPU against the CPU kernels, and the PTX test
#   cuda-registers  python3 tools/cuda_registers.py --fail-on-spill: registers and spills
#                   (beside cuda-tests)
#   bench-gpu       python3 tools/bench_gpu.py --json $OUT/gpu.json: netspec against PyTorch
#   data-parallel   tests/test_distributed.py's CUDA tests on the GPU: 2 ranks on one GPU, their
#                   buckets packed on the device and summed through the host, against the CPU
#   nccl            tools/check_nccl.py: NCCL's communicator (CuPy, the image's) on the GPU
# each under `timeout`, timed, then a line per step: passed, FAILED or TIMED OUT. Exit status:
# the number of steps that did not pass. Logs and JSON go to $OUT (./gpu-out without it).
#
# That machine reaches no package registry, and its image has numpy 2.5, which numba-cuda 0.30
# cannot import (numpy.row_stack is gone), and no lark or graphviz. So the wheels it lacks travel
# with the call: once, here, on a machine with pip and a network, from the repository root:
#
#   bash tools/gpu_check.sh --wheels     # into .whl/ (git ignores it): numpy 2.4, numba-cuda
#                                        # 0.30.4, lark, graphviz for CPython 3.12 x86-64, and in
#                                        # .whl/mpi/ mpi4py and the mpich wheel, ~32 MB
#
# then the device tool's `run`, from the checkout the session was started in:
#
#   run(command="bash tools/gpu_check.sh", carry=[".whl"], timeout_s=540)
#
# Everything else is the image's (python3 3.12 with torch, numba, cuda-bindings, pytest; the
# CUDA 13.0 toolkit, whose NVVM and nvJitLink match the driver): the wheels install with
# --no-deps into /tmp/site, first on PYTHONPATH, and netspec installs editable, offline.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
WHEELS=.whl
PY=${PYTHON:-python3}

if [ "${1:-}" = "--wheels" ]; then
    rm -rf "$WHEELS" && mkdir -p "$WHEELS" || exit 1
    # the device's Python (3.12) and platform, whatever this machine's are
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$WHEELS" \
        "numpy>=2.0,<2.5" "numba-cuda==0.30.4" "lark>=1.2,<2" "graphviz>=0.20" || exit 1
    # MPI for the data-parallel steps: installed under a prefix there (pip --target has no place
    # for the mpich wheel's mpiexec and libmpi, which go beside a Python's bin/ and lib/)
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_5_x86_64 \
        --platform manylinux1_x86_64 -d "$WHEELS/mpi" "mpi4py==4.1.2" "mpich==5.0.2" || exit 1
    ls -l "$WHEELS" "$WHEELS/mpi"
    size=$(du -sm "$WHEELS" | cut -f1)
    echo "$WHEELS: ${size} MiB of wheels; with the working tree, a call carries at most 64 MiB"
    [ "$size" -lt 60 ] || { echo "gpu_check: $WHEELS is too large to carry" >&2; exit 1; }
    exit 0
fi
ALL_STEPS="cuda-tests cuda-registers bench-gpu data-parallel nccl"
STEPS=${*:-$ALL_STEPS}
for s in $STEPS; do
    case " $ALL_STEPS " in
        *" $s "*) ;;
        *) echo "usage: bash tools/gpu_check.sh [--wheels | STEP...]; steps: $ALL_STEPS" >&2; exit 2 ;;
    esac
done
wanted() { case " $STEPS " in *" $1 "*) return 0 ;; esac; return 1; }

OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT" || exit 1
START=$SECONDS
DEADLINE=530            # seconds for all the steps: 9 minutes, less the machine's own margins
SUMMARY=()
FAILED=0

left() { echo $((DEADLINE - (SECONDS - START))); }

verdict() {   # verdict NAME STATUS SECONDS
    local what=passed
    [ "$2" -eq 124 ] && what="TIMED OUT"
    [ "$2" -ne 0 ] && [ "$2" -ne 124 ] && what="FAILED (exit $2)"
    [ "$2" -ne 0 ] && FAILED=$((FAILED + 1))
    SUMMARY+=("$(printf '%-16s %-18s %4ss' "$1" "$what" "$3")")
}

step() {      # step NAME SECONDS LOG COMMAND...: COMMAND under timeout, its output also in LOG
    local name=$1 limit=$2 log=$3 t0=$SECONDS status
    shift 3
    [ "$limit" -gt "$(left)" ] && limit=$(left)
    if [ "$limit" -le 0 ]; then verdict "$name" 124 0; return; fi
    echo "== $name (at most ${limit}s): $*"
    timeout "$limit" "$@" 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    verdict "$name" "$status" $((SECONDS - t0))
}

# -- the wheels and netspec, offline
t0=$SECONDS
if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "gpu_check: no wheels in $WHEELS: run 'bash tools/gpu_check.sh --wheels' here first and carry $WHEELS" >&2
    exit 1
fi
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$WHEELS"/*.whl || { echo "gpu_check: the carried wheels did not install" >&2; exit 1; }
export PYTHONPATH=/tmp/site
[ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ] && export CUDA_HOME=/usr/local/cuda
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . \
    || { echo "gpu_check: netspec did not install (editable, offline)" >&2; exit 1; }
export NUMBA_ENABLE_CUDASIM=0 PYTHONUNBUFFERED=1
# numba.cuda must be the carried numba-cuda, on the carried numpy, with a GPU it can see
"$PY" - <<'EOF' || { echo "gpu_check: the Python environment is not usable (above)" >&2; exit 1; }
import re
import numpy, numba, numba_cuda, torch
from numba import cuda, float32
from cuda.bindings import nvjitlink
assert numba_cuda.__file__.startswith("/tmp/site/"), f"numba_cuda from {numba_cuda.__file__}"
assert cuda.__file__.startswith("/tmp/site/"), f"numba.cuda from {cuda.__file__}, not the carried numba-cuda"
def probe(a):
    a[0] = 1
ptx, _ = cuda.compile_ptx(probe, (float32[::1],), cc=(9, 0))    # which NVVM, which PTX ISA
nvvm = re.search(r"release ([\d.]+)", ptx).group(1)
isa = re.search(r"^\.version ([\d.]+)", ptx, re.M).group(1)
print(f"numpy {numpy.__version__}, numba {numba.__version__}, numba-cuda {numba_cuda.__version__}, "
      f"torch {torch.__version__}; NVVM {nvvm} (PTX ISA {isa}), nvJitLink {nvjitlink.version()}")
assert cuda.is_available(), "numba-cuda sees no GPU"
cuda.detect()
EOF
verdict setup 0 $((SECONDS - t0))

# -- cuda-tests and cuda-registers side by side (compiling: CPU-bound, 16 cores), then the rest
if wanted cuda-registers; then
    REGISTERS_LIMIT=150
    [ "$REGISTERS_LIMIT" -gt "$(left)" ] && REGISTERS_LIMIT=$(left)
    t_reg=$SECONDS
    timeout "$REGISTERS_LIMIT" "$PY" tools/cuda_registers.py --fail-on-spill --json "$OUT/registers.json" \
        >"$OUT/registers.log" 2>&1 &
    registers_pid=$!
fi
wanted cuda-tests && step cuda-tests 270 "$OUT/pytest.log" "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda_kernels.py
if wanted cuda-registers; then
    wait "$registers_pid"
    registers_status=$?
    echo "== cuda-registers (beside cuda-tests, at most ${REGISTERS_LIMIT}s): tools/cuda_registers.py --fail-on-spill"
    cat "$OUT/registers.log"
    verdict cuda-registers "$registers_status" $((SECONDS - t_reg))
fi
wanted bench-gpu && step bench-gpu 180 "$OUT/bench.log" "$PY" tools/bench_gpu.py --budget 10 --json "$OUT/gpu.json"
if wanted data-parallel || wanted nccl; then
    # MPI under a prefix of its own (the image's python3 is a virtual environment, and one made
    # from it would not see its packages): mpich's mpiexec on PATH, its libmpi on the loader's
    # path, mpi4py on PYTHONPATH ahead of the image's. Checked with Python 3.11 here: mpiexec -n 2 ran an
    # all-reduce through the carried mpi4py
    MPY=$PY
    if "$PY" -m pip install -q --no-index --no-deps --no-cache-dir --ignore-installed \
            --prefix /tmp/mpi "$WHEELS"/mpi/*.whl; then
        export PATH=/tmp/mpi/bin:$PATH LD_LIBRARY_PATH=/tmp/mpi/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
        export PYTHONPATH=$PYTHONPATH:$(echo /tmp/mpi/lib/python3*/site-packages)
    else
        echo "gpu_check: MPI did not install from $WHEELS/mpi" >&2
        MPY=false
    fi
    wanted data-parallel && step data-parallel 150 "$OUT/distributed.log" \
        "$MPY" -m pytest -q -p no:cacheprovider tests/test_distributed.py -k "cuda or device"
    wanted nccl && step nccl 60 "$OUT/nccl.log" "$MPY" tools/check_nccl.py
fi

echo
gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null)
echo "gpu_check: ${gpu:-nvidia-smi did not answer}, $((SECONDS - START))s in all"
printf '%s\n' "${SUMMARY[@]}"
exit "$FAILED"
