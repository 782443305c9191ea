"""The optimizers, weight penalties and gradient clipping of runtime/optim.py on device arrays:
parameters, gradients and per-parameter slots stay on the GPU.

The same names and signatures as runtime/optim.py (`make_optimizer`, `penalty`,
`add_penalty_grads`, `clip_by_value`, `clip_by_global_norm`), with params and grads dicts
of C-contiguous device arrays. Each optimizer is its CPU class's host half (hyperparameter
checks, step counts, Adam's bias corrections, NAdam's momentum products, all computed once
per parameter on the host, as Python floats) with a kernel for the arrays' half, handed
those scalars in the parameter's dtype, so every operation rounds as NumPy's does.

One launch per parameter, or one for a run of parameters updated together: the slots of
each dtype are one buffer, in parameter order, so parameters and gradients that are
consecutive views of one allocation each (as the executor's arenas can give them) and share
their scalars (no step count apart) are updated by one launch over the whole run.

Checkpoints are target-independent: `state_arrays` returns host NumPy arrays and
`load_state` takes them, in the CPU's names, shapes and dtypes; the one-element slots live
on the host here too.

The reductions (the penalty's sums, the global norm) are deterministic: float64 terms, a
tree per block into per-block partials, summed on the host in block order; no atomics.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64

from .. import optim
from .launch import THREADS, empty, flat, grid, launch, same_shape, scalar, to_device, to_host


# ---------------------------------------------------------------------------------------------
# kernels: one thread per element, grid-stride, over flat arrays
# ---------------------------------------------------------------------------------------------

@cuda.jit
def _sgd(p, g, lr):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        p[i] -= g[i] * lr


@cuda.jit
def _momentum(p, g, buf, momentum, lr, nesterov):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        b = buf[i] * momentum + g[i]
        buf[i] = b
        p[i] -= (b * momentum + g[i]) * lr if nesterov else b * lr


@cuda.jit
def _accumulated_root(p, g, acc, decay, weight, epsilon, lr):
    """Adagrad (decay = weight = 1) and RMSprop: acc = acc*decay + g^2*weight;
    p -= g / (sqrt(acc) + epsilon) * lr."""
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        gi = g[i]
        a = acc[i] * decay + gi * gi * weight
        acc[i] = a
        p[i] -= gi / (math.sqrt(a) + epsilon) * lr


@cuda.jit(device=True, inline=True)
def _moments(m, v, g, i, factor, from_g, beta2, one_minus_beta2):
    """Adam's moments at i: m = lerp(m, g, 1-beta1) (optim.lerp_factor's formulas);
    v = v*beta2 + g^2*(1-beta2). Returns (m, v)."""
    gi = g[i]
    d = (gi - m[i]) * factor
    mi = gi - d if from_g else m[i] + d
    vi = v[i] * beta2 + gi * gi * one_minus_beta2
    m[i] = mi
    v[i] = vi
    return mi, vi


@cuda.jit
def _adam(p, g, m, v, factor, from_g, beta2, one_minus_beta2, root_correction2, epsilon, step_size):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        mi, vi = _moments(m, v, g, i, factor, from_g, beta2, one_minus_beta2)
        p[i] -= mi / (math.sqrt(vi) / root_correction2 + epsilon) * step_size


@cuda.jit
def _nadam(p, g, m, v, factor, from_g, beta2, one_minus_beta2, correction2, epsilon, grad_coefficient,
           momentum_coefficient):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        mi, vi = _moments(m, v, g, i, factor, from_g, beta2, one_minus_beta2)
        denom = math.sqrt(vi / correction2) + epsilon
        pi = p[i] + g[i] / denom * grad_coefficient
        p[i] = pi + mi / denom * momentum_coefficient


@cuda.jit
def _block_sums(x, squares, partials):
    """partials[block] = the block's float64 sum of x^2 (squares) or |x|: each thread's terms in
    grid-stride order, then a tree over the block's threads (a power of two)."""
    terms = cuda.shared.array(THREADS, float64)
    acc = 0.0
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = np.float64(x[i])
        acc += v * v if squares else abs(v)
    t = cuda.threadIdx.x
    terms[t] = acc
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        if t < half:
            terms[t] += terms[t + half]
        cuda.syncthreads()
        half //= 2
    if t == 0:
        partials[cuda.blockIdx.x] = terms[0]


@cuda.jit
def _add_penalty_grad(g, w, l1, twice_l2, with_l1, with_l2):
    """g += l1*sign(w), then g += 2*l2*w, as two roundings (NumPy's two in-place adds)."""
    for i in range(cuda.grid(1), g.size, cuda.gridsize(1)):
        wi, gi = w[i], g[i]
        if with_l1:
            # l1*sign(w): sign(0) = +0, sign(NaN) = NaN, and w - w is +0 or NaN there
            gi += l1 if wi > 0 else (-l1 if wi < 0 else l1 * (wi - wi))
        if with_l2:
            gi += twice_l2 * wi
        g[i] = gi


@cuda.jit
def _clamp(g, low, high):
    """np.clip: NaN stays NaN."""
    for i in range(cuda.grid(1), g.size, cuda.gridsize(1)):
        gi = g[i]
        g[i] = low if gi < low else (high if gi > high else gi)


@cuda.jit
def _scale(g, coefficient):
    for i in range(cuda.grid(1), g.size, cuda.gridsize(1)):
        g[i] *= coefficient


# ---------------------------------------------------------------------------------------------
# runs of consecutive views: one launch
# ---------------------------------------------------------------------------------------------

def _host_root(a: np.ndarray):
    """The NumPy array a is a view of, when it is C-contiguous (a flat view of it is no copy)."""
    root = a
    while isinstance(root.base, np.ndarray):
        root = root.base
    return root if root.flags.c_contiguous else None


def _location(a):
    """(the allocation a lies in, a's byte offset in it), or None where that is unknown.

    Three kinds of array: a device array (its memory pointer's owner is the allocation), the
    simulator's (a NumPy array inside) and a NumPy array (where the kernels are compiled, not
    run)."""
    host = a if isinstance(a, np.ndarray) else getattr(a, "_ary", None)
    if isinstance(host, np.ndarray):
        root = _host_root(host)
        if root is None:
            return None
        start = root.__array_interface__["data"][0]
        return (start, root.nbytes), host.__array_interface__["data"][0] - start
    memory = getattr(a, "gpu_data", None)
    root = getattr(memory, "owner", None)
    if root is None or not hasattr(root, "device_pointer_value"):
        return None
    return (root.device_pointer_value, root.size), memory.device_pointer_value - root.device_pointer_value


def _follows(a, b) -> bool:
    """b starts in a's allocation where a ends."""
    at, bt = _location(a), _location(b)
    return at is not None and bt is not None and at[0] == bt[0] and bt[1] == at[1] + a.size * a.dtype.itemsize


def _joined(arrays: list):
    """One flat view over arrays, each of which follows the one before it."""
    first = arrays[0]
    if len(arrays) == 1:
        return first
    n = sum(a.size for a in arrays)
    (start, size), offset = _location(first)
    nbytes = n * first.dtype.itemsize
    if offset + nbytes > size:
        raise AssertionError("a run of views past its allocation")
    host = first if isinstance(first, np.ndarray) else getattr(first, "_ary", None)
    if isinstance(host, np.ndarray):
        view = _host_root(host).reshape(-1).view(np.uint8)[offset:offset + nbytes].view(first.dtype)
        return view if host is first else type(first)(view)
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    return DeviceNDArray((n,), (first.dtype.itemsize,), first.dtype, gpu_data=first.gpu_data.owner.view(
        offset, offset + nbytes))


def launch_runs(updates: list) -> list:
    """Updates [(arrays, scalars)] merged where each array follows its predecessor's and the
    scalars are equal: [(joined arrays, scalars)], in order."""
    runs: list[tuple[list, tuple]] = []
    for arrays, scalars in updates:
        if runs and runs[-1][1] == scalars and all(
                a.dtype == b.dtype and _follows(a, b) for a, b in zip(runs[-1][0][-1], arrays)):
            runs[-1][0].append(arrays)
        else:
            runs.append(([arrays], scalars))
    return [([_joined(list(column)) for column in zip(*members)], scalars) for members, scalars in runs]


# ---------------------------------------------------------------------------------------------
# optimizers
# ---------------------------------------------------------------------------------------------

class DeviceOptimizer(optim.Optimizer):
    """The arrays' half of an optimizer on device arrays; the host's half is its CPU class's.

    The per-parameter slots of each dtype are one zeroed device buffer per slot, the
    parameters' parts in parameter order; `_launch(p, g, slots, coefficients)` runs the rule's
    kernel over flat arrays."""

    def _check_param(self, key, p):
        if np.dtype(p.dtype) not in optim.FLOATS:
            raise ValueError(f"{self.name}: parameter '{key}' must be a float32 or float64 array, got {p.dtype}")
        flat(p)

    def _check_gradient(self, key, g, p):
        if g.dtype != p.dtype:
            raise ValueError(f"{self.name}: gradient for '{key}' is {g.dtype}, parameter is {p.dtype}")
        flat(g)

    def _allocate(self):
        self._offsets, sizes = {}, {}
        for key, p in self.params.items():
            dtype = np.dtype(p.dtype)
            self._offsets[key] = sizes.get(dtype, 0)
            sizes[dtype] = self._offsets[key] + p.size
        self._buffers = {(dtype, slot): to_device(np.zeros(n, dtype)) for dtype, n in sizes.items()
                         for slot in self.slots}
        self._view_buffers()

    def _view_buffers(self):
        self._state = {key: {slot: self._part(self._buffers[np.dtype(p.dtype), slot], key) for slot in self.slots}
                       for key, p in self.params.items()}

    def _part(self, buffer, key):
        """key's part of a buffer (a device buffer, or its host copy)."""
        start = self._offsets[key]
        return buffer[start:start + self.params[key].size]

    def _apply(self, updates):
        runs = launch_runs([([flat(p), flat(g), *(self._state[key][slot] for slot in self.slots)], coefficients)
                            for key, p, g, coefficients in updates])
        for (p, g, *slots), coefficients in runs:
            self._launch(p, g, slots, coefficients)

    def _launch(self, p, g, slots, coefficients):
        raise NotImplementedError

    def _array_copies(self):
        hosts = {where: to_host(buffer) for where, buffer in self._buffers.items()}
        return {f"{key}.{slot}": self._part(hosts[np.dtype(p.dtype), slot], key).reshape(p.shape)
                for key, p in self.params.items() for slot in self.slots}

    def _restore_arrays(self, arrays):
        for (dtype, slot), buffer in self._buffers.items():
            host = np.zeros(buffer.size, dtype)
            for key, p in self.params.items():
                if np.dtype(p.dtype) == dtype:
                    np.copyto(self._part(host, key), np.reshape(arrays[f"{key}.{slot}"], -1), casting="same_kind")
            self._buffers[dtype, slot] = to_device(host)
        self._view_buffers()


def _sgd_launch(opt, p, g, slots, coefficients):
    (lr,), dtype = coefficients, p.dtype
    if slots:
        launch(_momentum, p.size, p, g, slots[0], scalar(dtype, opt.hyper["momentum"]), scalar(dtype, lr),
               opt.hyper["nesterov"])
    else:
        launch(_sgd, p.size, p, g, scalar(dtype, lr))


def _accumulated_root_launch(opt, p, g, slots, coefficients):
    _, decay, weight = opt._accumulator()
    (lr,), dtype = coefficients, p.dtype
    launch(_accumulated_root, p.size, p, g, slots[0], scalar(dtype, 1.0 if decay is None else decay),
           scalar(dtype, 1.0 if weight is None else weight), scalar(dtype, opt.hyper["epsilon"]), scalar(dtype, lr))


def _moment_scalars(opt, dtype) -> tuple:
    """The scalars of Adam's moments (_moments' arguments after i), in dtype."""
    factor, from_g = optim.lerp_factor(1.0 - opt.hyper["beta1"])
    beta2 = opt.hyper["beta2"]
    return scalar(dtype, factor), from_g, scalar(dtype, beta2), scalar(dtype, 1.0 - beta2)


def _adam_launch(opt, p, g, slots, coefficients):
    step_size, root_correction2 = coefficients
    dtype = p.dtype
    launch(_adam, p.size, p, g, *slots, *_moment_scalars(opt, dtype), scalar(dtype, root_correction2),
           scalar(dtype, opt.hyper["epsilon"]), scalar(dtype, step_size))


def _nadam_launch(opt, p, g, slots, coefficients):
    correction2, grad_coefficient, momentum_coefficient = coefficients
    dtype = p.dtype
    launch(_nadam, p.size, p, g, *slots, *_moment_scalars(opt, dtype), scalar(dtype, correction2),
           scalar(dtype, opt.hyper["epsilon"]), scalar(dtype, grad_coefficient), scalar(dtype, momentum_coefficient))


# the CPU's rule class -> its class here (the rule's host half first in line after DeviceOptimizer)
CLASSES = {cls: type(cls.__name__, (DeviceOptimizer, cls), {"_launch": launcher, "__module__": __name__})
           for cls, launcher in [(optim.SGD, _sgd_launch), (optim.Adagrad, _accumulated_root_launch),
                                 (optim.RMSprop, _accumulated_root_launch), (optim.Adam, _adam_launch),
                                 (optim.NAdam, _nadam_launch)]}


def make_optimizer(name: str, params: dict, **kwargs) -> DeviceOptimizer:
    """The optimizer `name` over device params, with runtime/optim.py's arguments and rules."""
    return optim.build_optimizer(name, params, kwargs, CLASSES.__getitem__)


# ---------------------------------------------------------------------------------------------
# weight penalties and gradient clipping
# ---------------------------------------------------------------------------------------------

def _sum(x, squares: bool) -> float:
    """The float64 sum of x^2 or |x| over a device array: per-block partials, then in block order."""
    x = flat(x)
    partials = empty(grid(x.size)[0], np.float64)
    launch(_block_sums, x.size, x, squares, partials)
    total = 0.0
    for term in to_host(partials).tolist():
        total += term
    return total


def penalty(params: dict, l1: float, l2: float) -> float:
    """l1*sum|w| + l2*sum w^2 over the given device arrays, accumulated in float64."""
    return optim.penalty_of(params, l1, l2, lambda w: _sum(w, False), lambda w: _sum(w, True))


def add_penalty_grads(grads: dict, params: dict, l1: float, l2: float) -> None:
    """grads[k] += l1*sign(w) + 2*l2*w, in place, for each k in params that has a gradient."""
    for g, w, l1, l2 in optim.penalty_grad_terms(grads, params, l1, l2):
        same_shape("add_penalty_grads", g, w)
        launch(_add_penalty_grad, g.size, flat(g), flat(w), scalar(g.dtype, l1), scalar(g.dtype, 2.0 * l2),
               bool(l1), bool(l2))


def clip_by_value(grads: dict, value: float) -> None:
    """Clamp every gradient element to [-value, value], in place."""
    value = optim.clip_threshold(value, "clip value")
    for g in grads.values():
        launch(_clamp, g.size, flat(g), scalar(g.dtype, -value), scalar(g.dtype, value))


def clip_by_global_norm(grads: dict, max_norm: float) -> float:
    """runtime/optim.py's clip_by_global_norm on device arrays: returns the norm before."""
    return optim.clip_by_global_norm_of(
        grads, max_norm, lambda g: _sum(g, True),
        lambda g, coefficient: launch(_scale, g.size, flat(g), scalar(g.dtype, coefficient)))

