"""netspec.runtime: executes compiled Programs. It knows nothing of the language.

Installed as `netspec.runtime` (see pyproject.toml). The instruction set (isa.py) is
the contract with the compiler; the executor (program.py) and the memory planner
(memory.py) run a Program on a target without knowing which. A target is a folder
here with one kernel table and its capabilities (target.py says what that is;
targets.py lists them by name): today one, cpu/, Numba kernels. Weights on disk
(checkpoint.py) and the optimizers (optim.py) live here too.
"""
