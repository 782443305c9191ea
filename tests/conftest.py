import os

# numba-cuda's simulator where no GPU is meant to run the CUDA kernels' tests: they then run on
# any machine, CI's included. On a GPU machine, NUMBA_ENABLE_CUDASIM=0 runs them on the GPU.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
