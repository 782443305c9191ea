"""Optimizers, learning-rate schedules, weight penalties and gradient clipping, on NumPy arrays.

The runtime knows nothing of the spec language: parameters and gradients are
dicts of arrays (name -> float32 or float64 array), hyperparameters are plain
numbers. Names and defaults are Keras-like (`epsilon`, `rho`, `beta1`), the
update rules are PyTorch's, term for term, so the tests can check parity with
`torch.optim`:

    sgd / momentum / nesterov   torch.optim.SGD(momentum, nesterov, dampening=0)
    adagrad                     torch.optim.Adagrad(lr_decay=0, initial_accumulator_value=0)
    rmsprop                     torch.optim.RMSprop(alpha=rho, momentum=0, centered=False)
    adam                        torch.optim.Adam(betas=(beta1, beta2), amsgrad=False)
    nadam                       torch.optim.NAdam(betas=(beta1, beta2), momentum_decay=4e-3)

Like torch, each parameter counts its own steps (a parameter left out of the
gradients, i.e. frozen, does not advance), so Adam's bias correction and
NAdam's momentum product are per parameter; both are one-element slots in
the state (shape (1,), not 0-d: checkpoint files keep that shape) so that a
resumed run continues bit-identically.

These are the CPU (NumPy) update kernels. Every target supplies its own: a
CUDA target implements the same interface (`step`, `state_arrays`,
`load_state`) on device arrays, and is tested against this module.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_NADAM_MOMENTUM_DECAY = 4e-3     # torch.optim.NAdam's default, which Keras's schedule also uses
_CLIP_NORM_EPS = 1e-6            # torch.nn.utils.clip_grad_norm_: max_norm / (norm + 1e-6)


# ---------------------------------------------------------------------------------------------
# hyperparameter checks
# ---------------------------------------------------------------------------------------------

def _number(value, what: str, lo: float = 0.0, hi: float = math.inf, hi_open: bool = False) -> float:
    """A finite real in [lo, hi] (or [lo, hi)) as a Python float, else ValueError naming `what`."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < lo or value > hi or (hi_open and value == hi):
        upper = "" if hi == math.inf else f" and {'<' if hi_open else '<='} {hi:g}"
        raise ValueError(f"{what} must be a number >= {lo:g}{upper}, got {value!r}")
    return float(value)


def _check_lr(lr) -> float:
    return _number(lr, "learning rate")


def lerp_factor(weight: float) -> tuple[float, bool]:
    """torch's two formulas of lerp(a, b, weight) (lerp_ on CPU): (f, False): a + (b-a)*f with
    f = weight when weight < 0.5, else (f, True): b - (b-a)*f with f = 1 - weight."""
    return (weight, False) if weight < 0.5 else (1.0 - weight, True)


def _lerp_(a: np.ndarray, b: np.ndarray, weight: float, tmp: np.ndarray) -> None:
    """a = lerp(a, b, weight) in place."""
    factor, from_b = lerp_factor(weight)
    np.subtract(b, a, out=tmp)
    tmp *= factor
    if from_b:
        np.subtract(b, tmp, out=a)
    else:
        a += tmp


# ---------------------------------------------------------------------------------------------
# optimizers
# ---------------------------------------------------------------------------------------------

class Optimizer:
    """Updates parameter arrays in place from gradient arrays of the same shape and layout.

    A subclass is an update rule in two halves. The host's half, shared by every target: its
    hyperparameter checks (`_check`), its per-parameter slots (arrays shaped and typed like
    the parameter), its one-element slots (name -> (dtype, initial value), host NumPy arrays
    on every target), and `_coefficients`, which advances those and returns the scalars of one
    parameter's update. The arrays' half is `_update`, on NumPy arrays here; another target
    overrides the array hooks (`_check_param`, `_allocate`, `_apply`, `_array_copies`,
    `_restore_arrays`) and keeps the rest.
    """

    name = "optimizer"
    slots: tuple[str, ...] = ()
    scalar_slots: dict[str, tuple[type, float]] = {}
    n_scratch = 1

    def __init__(self, params: dict, **hyper):
        self.params = dict(params)
        for key, p in self.params.items():
            self._check_param(key, p)
        self.hyper = self._check(hyper)
        self.t = 0
        self._scalars = {key: {slot: np.full(1, initial, dtype=dtype)
                               for slot, (dtype, initial) in self.scalar_slots.items()}
                         for key in self.params}
        self._allocate()

    # -- the host's half ---------------------------------------------------------------------

    def _check(self, hyper: dict) -> dict:
        """Validated hyperparameters (Python floats and bools)."""
        raise NotImplementedError

    def _coefficients(self, lr: float, scalars: dict) -> tuple[float, ...]:
        """The scalars of one parameter's update, its one-element slots advanced (Python floats)."""
        return (lr,)

    def step(self, grads: dict, lr: float) -> None:
        """One update of every parameter named in grads (absent ones are frozen); grads are not modified."""
        lr = _check_lr(lr)
        for key, g in grads.items():
            p = self.params.get(key)
            if p is None:
                raise ValueError(f"{self.name}: gradient for unknown parameter '{key}'")
            if tuple(g.shape) != tuple(p.shape):
                raise ValueError(f"{self.name}: gradient for '{key}' has shape {g.shape}, "
                                 f"parameter has {p.shape}")
            self._check_gradient(key, g, p)
        self._apply([(key, self.params[key], g, self._coefficients(lr, self._scalars[key]))
                     for key, g in grads.items()])
        self.t += 1

    def _slot_names(self):
        """(checkpoint name, parameter, slot) of every slot, in the checkpoint's order."""
        return [(f"{key}.{slot}", key, slot) for key in self.params for slot in (*self.slots, *self.scalar_slots)]

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Every slot as a host copy, keyed 'param.slot' (e.g. 'c1.weight.exp_avg'), for checkpoints."""
        arrays = self._array_copies()
        return {name: arrays[name] if slot in self.slots else self._scalars[key][slot].copy()
                for name, key, slot in self._slot_names()}

    def load_state(self, arrays: dict[str, np.ndarray], t: int) -> None:
        """Restore the slots saved by state_arrays (on any target) and the step count t, exactly."""
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0:
            raise ValueError(f"{self.name}: step count must be an integer >= 0, got {t!r}")
        expected = {}
        for name, key, slot in self._slot_names():
            if slot in self.slots:
                expected[name] = (tuple(self.params[key].shape), np.dtype(self.params[key].dtype))
            else:
                expected[name] = ((1,), np.dtype(self.scalar_slots[slot][0]))
        missing = [k for k in expected if k not in arrays]
        if missing:
            raise ValueError(f"{self.name}: optimizer state lacks {len(missing)} slot(s): "
                             f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}")
        unexpected = [k for k in arrays if k not in expected]
        if unexpected:
            raise ValueError(f"{self.name}: optimizer state has slot(s) this optimizer does not: "
                             f"{', '.join(unexpected[:5])}{', ...' if len(unexpected) > 5 else ''}")
        for k, (shape, dtype) in expected.items():
            src = np.asarray(arrays[k])
            if src.shape != shape:
                raise ValueError(f"{self.name}: slot '{k}' has shape {src.shape}, expected {shape}")
            if not np.can_cast(src.dtype, dtype, casting="same_kind"):
                raise ValueError(f"{self.name}: slot '{k}' has dtype {src.dtype}, expected {dtype}")
        # only after every slot is checked: all or nothing
        for name, key, slot in self._slot_names():
            if slot not in self.slots:
                np.copyto(self._scalars[key][slot], arrays[name], casting="same_kind")
        self._restore_arrays({name: np.asarray(arrays[name]) for name, _, slot in self._slot_names()
                              if slot in self.slots})
        self.t = int(t)

    def __repr__(self):
        args = ", ".join(f"{k}={v}" for k, v in self.hyper.items())
        return f"{type(self).__name__}({self.name}: {args}; {len(self.params)} parameters, t={self.t})"

    # -- the arrays' half, on NumPy arrays ------------------------------------------------------

    def _check_param(self, key: str, p) -> None:
        if not isinstance(p, np.ndarray) or p.dtype not in FLOATS:
            kind = p.dtype if isinstance(p, np.ndarray) else type(p).__name__
            raise ValueError(f"{self.name}: parameter '{key}' must be a float32 or float64 array, got {kind}")
        if not p.flags.writeable:
            raise ValueError(f"{self.name}: parameter '{key}' is read-only; it is updated in place")

    def _check_gradient(self, key: str, g, p) -> None:
        """Beyond the shape: NumPy casts a gradient of the other float type."""

    def _allocate(self) -> None:
        """The per-parameter slots, zero, and the scratch one update needs."""
        self._state = {key: {slot: np.zeros_like(p) for slot in self.slots} for key, p in self.params.items()}
        self._scratch = self._new_scratch()

    def _new_scratch(self) -> dict[str, list[np.ndarray]]:
        """Per parameter, n_scratch views into flat buffers shared by all parameters of a dtype."""
        if not self.n_scratch:
            return {key: [] for key in self.params}
        sizes: dict[np.dtype, int] = {}
        for p in self.params.values():
            sizes[p.dtype] = max(sizes.get(p.dtype, 0), p.size)
        flat = {dt: [np.empty(n, dtype=dt) for _ in range(self.n_scratch)] for dt, n in sizes.items()}
        return {key: [buf[:p.size].reshape(p.shape) for buf in flat[p.dtype]] for key, p in self.params.items()}

    def _apply(self, updates: list) -> None:
        """Each (parameter name, parameter, gradient, coefficients) update, in place."""
        for key, p, g, coefficients in updates:
            self._update(p, g, coefficients, self._state[key], self._scratch[key])

    def _update(self, p: np.ndarray, g: np.ndarray, coefficients: tuple, state: dict, scratch: list) -> None:
        """One update of parameter p from gradient g, in place."""
        raise NotImplementedError

    def _array_copies(self) -> dict[str, np.ndarray]:
        return {f"{key}.{slot}": arr.copy() for key, state in self._state.items() for slot, arr in state.items()}

    def _restore_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        for key, state in self._state.items():
            for slot, dst in state.items():
                np.copyto(dst, arrays[f"{key}.{slot}"], casting="same_kind")


class SGD(Optimizer):
    """buf = momentum*buf + g (buf = g at first); w -= lr*(g + momentum*buf if nesterov else buf).

    With momentum 0 it is plain w -= lr*g and keeps no slot. The buffer starts
    at zero, which gives torch's `buf = g` on the first step exactly.
    """

    name = "sgd"

    def __init__(self, params, momentum: float = 0.0, nesterov: bool = False):
        if not isinstance(nesterov, (bool, np.bool_)):
            raise ValueError(f"sgd: nesterov must be true or false, got {nesterov!r}")
        self.slots = ("momentum",) if momentum else ()
        super().__init__(params, momentum=momentum, nesterov=bool(nesterov))

    def _check(self, hyper):
        return {"momentum": _number(hyper["momentum"], "momentum"), "nesterov": hyper["nesterov"]}

    def _update(self, p, g, coefficients, state, scratch):
        (lr,), m, s = coefficients, self.hyper["momentum"], scratch[0]
        if not m:
            np.multiply(g, lr, out=s)
        else:
            buf = state["momentum"]
            buf *= m
            buf += g
            if self.hyper["nesterov"]:
                np.multiply(buf, m, out=s)
                s += g
                s *= lr
            else:
                np.multiply(buf, lr, out=s)
        p -= s


class Adagrad(Optimizer):
    """sum += g^2; w -= lr * g / (sqrt(sum) + epsilon).

    With RMSprop it is one rule: acc = decay*acc + weight*g^2 (here decay = weight = 1, which
    multiply exactly) and w -= lr * g / (sqrt(acc) + epsilon).
    """

    name = "adagrad"
    slots = ("sum",)

    def _check(self, hyper):
        return {"epsilon": _number(hyper["epsilon"], "epsilon")}

    def _accumulator(self) -> tuple[str, float | None, float | None]:
        """The accumulator's slot, its decay and the weight of g^2 (None: 1, no multiplication)."""
        return "sum", None, None

    def _update(self, p, g, coefficients, state, scratch):
        (lr,), s = coefficients, scratch[0]
        slot, decay, weight = self._accumulator()
        acc = state[slot]
        if decay is not None:
            acc *= decay
        np.multiply(g, g, out=s)
        if weight is not None:
            s *= weight
        acc += s
        np.sqrt(acc, out=s)
        s += self.hyper["epsilon"]
        np.divide(g, s, out=s)
        s *= lr
        p -= s


class RMSprop(Adagrad):
    """square_avg = rho*square_avg + (1-rho)*g^2; w -= lr * g / (sqrt(square_avg) + epsilon)."""

    name = "rmsprop"
    slots = ("square_avg",)

    def _check(self, hyper):
        return {"rho": _number(hyper["rho"], "rho"), "epsilon": _number(hyper["epsilon"], "epsilon")}

    def _accumulator(self):
        return "square_avg", self.hyper["rho"], 1.0 - self.hyper["rho"]


class Adam(Optimizer):
    """m = lerp(m, g, 1-beta1); v = beta2*v + (1-beta2)*g^2; with the parameter's step n:
    w -= lr/(1-beta1^n) * m / (sqrt(v)/sqrt(1-beta2^n) + epsilon)."""

    name = "adam"
    slots = ("exp_avg", "exp_avg_sq")
    scalar_slots = {"step": (np.int64, 0)}

    def _check(self, hyper):
        return {"beta1": _number(hyper["beta1"], "beta1", hi=1.0, hi_open=True),
                "beta2": _number(hyper["beta2"], "beta2", hi=1.0, hi_open=True),
                "epsilon": _number(hyper["epsilon"], "epsilon")}

    def _coefficients(self, lr, scalars):
        """(step size lr/(1-beta1^n), sqrt(1-beta2^n))."""
        b1, b2 = self.hyper["beta1"], self.hyper["beta2"]
        scalars["step"] += 1
        n = float(scalars["step"][0])
        return lr / (1.0 - b1 ** n), (1.0 - b2 ** n) ** 0.5

    def _moments(self, m, v, g, s) -> None:
        """m = lerp(m, g, 1-beta1); v = beta2*v + (1-beta2)*g^2, in place."""
        b1, b2 = self.hyper["beta1"], self.hyper["beta2"]
        _lerp_(m, g, 1.0 - b1, s)
        v *= b2
        np.multiply(g, g, out=s)
        s *= 1.0 - b2
        v += s

    def _update(self, p, g, coefficients, state, scratch):
        step_size, root_correction2 = coefficients
        m, v, s = state["exp_avg"], state["exp_avg_sq"], scratch[0]
        self._moments(m, v, g, s)
        np.sqrt(v, out=s)
        s /= root_correction2
        s += self.hyper["epsilon"]
        np.divide(m, s, out=s)
        s *= step_size
        p -= s


class NAdam(Adam):
    """Adam with Nesterov momentum and torch's momentum schedule
    mu_n = beta1*(1 - 0.5*0.96^(n*0.004)), whose running product is a slot."""

    name = "nadam"
    scalar_slots = {"step": (np.int64, 0), "mu_product": (np.float64, 1.0)}
    n_scratch = 2

    def _coefficients(self, lr, scalars):
        """(1-beta2^n, the gradient's coefficient, the momentum's coefficient)."""
        b1, b2 = self.hyper["beta1"], self.hyper["beta2"]
        scalars["step"] += 1
        n = float(scalars["step"][0])
        mu = b1 * (1.0 - 0.5 * 0.96 ** (n * _NADAM_MOMENTUM_DECAY))
        mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((n + 1.0) * _NADAM_MOMENTUM_DECAY))
        mu_product = float(scalars["mu_product"][0]) * mu
        scalars["mu_product"][0] = mu_product
        mu_product_next = mu_product * mu_next
        return (1.0 - b2 ** n, -lr * (1.0 - mu) / (1.0 - mu_product),
                (-lr * mu_next) / (1.0 - mu_product_next))

    def _update(self, p, g, coefficients, state, scratch):
        correction2, grad_coefficient, momentum_coefficient = coefficients
        m, v = state["exp_avg"], state["exp_avg_sq"]
        denom, s = scratch
        self._moments(m, v, g, s)
        np.divide(v, correction2, out=denom)
        np.sqrt(denom, out=denom)
        denom += self.hyper["epsilon"]
        np.divide(g, denom, out=s)
        s *= grad_coefficient
        p += s
        np.divide(m, denom, out=s)
        s *= momentum_coefficient
        p += s


# name -> (class, keyword arguments and their defaults, fixed arguments); lr comes per step
OPTIMIZERS: dict[str, tuple[type[Optimizer], dict, dict]] = {
    "sgd": (SGD, {"momentum": 0.0, "nesterov": False}, {}),
    "momentum": (SGD, {"momentum": 0.9}, {"nesterov": False}),
    "nesterov": (SGD, {"momentum": 0.9}, {"nesterov": True}),
    "adagrad": (Adagrad, {"epsilon": 1e-7}, {}),
    "rmsprop": (RMSprop, {"rho": 0.9, "epsilon": 1e-7}, {}),
    "adam": (Adam, {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-7}, {}),
    "nadam": (NAdam, {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-7}, {}),
}


def make_optimizer(name: str, params: dict[str, np.ndarray], **kwargs) -> Optimizer:
    """The optimizer `name` over params, with Keras-like keyword arguments (see OPTIMIZERS)."""
    return build_optimizer(name, params, kwargs)


def build_optimizer(name: str, params: dict, kwargs: dict, on_target=lambda cls: cls) -> Optimizer:
    """make_optimizer for any target: on_target maps the rule's class here to that target's."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{name}'; choose from: {', '.join(OPTIMIZERS)}")
    cls, defaults, fixed = OPTIMIZERS[name]
    unknown = [k for k in kwargs if k not in defaults]
    if unknown:
        raise ValueError(f"optimizer '{name}' has no argument '{unknown[0]}'; "
                         f"its arguments: {', '.join(defaults) or 'none'} (lr is given per step)")
    opt = on_target(cls)(params, **{**defaults, **kwargs, **fixed})
    opt.name = name
    return opt


# ---------------------------------------------------------------------------------------------
# learning-rate schedules (Geron, Hands-On ML 2nd ed., ch. 11; Keras)
# ---------------------------------------------------------------------------------------------

def _constant(base_lr, step, epoch):
    return base_lr


def _power(base_lr, step, epoch, decay_steps, power):
    return base_lr / (1.0 + step / decay_steps) ** power


def _exponential(base_lr, step, epoch, decay_steps, rate):
    return base_lr * rate ** (step / decay_steps)


def _piecewise(base_lr, step, epoch, epochs, lr):
    for boundary, value in zip(epochs, lr):
        if epoch < boundary:
            return value
    return lr[-1]


def _polynomial(base_lr, step, epoch, decay_steps, end_lr, power):
    s = min(step, decay_steps)
    return (base_lr - end_lr) * (1.0 - s / decay_steps) ** power + end_lr


# name -> (lr rule, keyword arguments and their defaults; None: required, or for decay_steps the whole run)
SCHEDULES = {
    "constant": (_constant, {}),
    "power": (_power, {"decay_steps": None, "power": 1.0}),
    "exponential": (_exponential, {"decay_steps": None, "rate": 0.1}),
    "piecewise": (_piecewise, {"epochs": None, "lr": None}),
    "polynomial": (_polynomial, {"decay_steps": None, "end_lr": 0.0001, "power": 1.0}),
}


def _schedule_args(name: str, kwargs: dict) -> dict:
    """Defaults filled in and every argument checked; decay_steps may stay None (the whole run)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule '{name}'; choose from: {', '.join(SCHEDULES)}")
    defaults = SCHEDULES[name][1]
    unknown = [k for k in kwargs if k not in defaults]
    if unknown:
        raise ValueError(f"schedule '{name}' has no argument '{unknown[0]}'; "
                         f"its arguments: {', '.join(defaults) or 'none'}")
    args = {**defaults, **kwargs}
    if name == "piecewise":
        epochs, lrs = args["epochs"], args["lr"]
        if epochs is None or lrs is None:
            raise ValueError("schedule 'piecewise' needs both epochs (boundaries) and lr (one more rate "
                             "than boundaries), e.g. piecewise(epochs=[30, 60], lr=[0.1, 0.01, 0.001])")
        epochs = list(epochs) if isinstance(epochs, (list, tuple)) else [epochs]
        lrs = list(lrs) if isinstance(lrs, (list, tuple)) else [lrs]
        epochs = [_number(b, "piecewise epoch boundary") for b in epochs]
        lrs = [_number(r, "piecewise lr") for r in lrs]
        if len(lrs) != len(epochs) + 1:
            raise ValueError(f"schedule 'piecewise' needs one more lr than epoch boundaries: "
                             f"{len(epochs)} boundaries, {len(lrs)} rates")
        if any(b2 <= b1 for b1, b2 in zip(epochs, epochs[1:])):
            raise ValueError(f"schedule 'piecewise': epoch boundaries must increase, got {epochs}")
        args["epochs"], args["lr"] = epochs, lrs
        return args
    for key, value in args.items():
        if key == "decay_steps":
            if value is not None:
                args[key] = _number(value, "decay_steps")
                if args[key] <= 0:
                    raise ValueError(f"schedule '{name}': decay_steps must be > 0, got {value!r}")
        elif key == "rate":
            args[key] = _number(value, "exponential rate")
        else:
            args[key] = _number(value, f"schedule '{name}' {key}")
    return args


def schedule_lr(name: str, base_lr: float, step: int, epoch: int, total_steps: int, **kwargs) -> float:
    """The learning rate for the next optimizer step.

    step: optimizer steps done before this one (0-based); epoch: the current
    epoch (0-based); total_steps: steps in the whole run, used where
    decay_steps is left out (None).
    """
    args = _schedule_args(name, kwargs)
    if "decay_steps" in args and args["decay_steps"] is None:
        if isinstance(total_steps, bool) or not isinstance(total_steps, (int, np.integer)) or total_steps <= 0:
            raise ValueError(f"schedule '{name}': decay_steps is left out, so it is the whole run, "
                             f"but total_steps is {total_steps!r}")
        args["decay_steps"] = float(total_steps)
    if step < 0 or epoch < 0:
        raise ValueError(f"schedule '{name}': step and epoch must be >= 0, got step {step}, epoch {epoch}")
    return float(SCHEDULES[name][0](float(base_lr), step, epoch, **args))


def describe_schedule(name: str, **kwargs) -> str:
    """One line for printing, e.g. 'exponential: lr x 0.1 every 1000 steps'."""
    a = _schedule_args(name, kwargs)
    decay = f"{a['decay_steps']:g}" if a.get("decay_steps") is not None else "total_steps"
    steps = f"{a['decay_steps']:g} steps" if a.get("decay_steps") is not None else "the whole run"
    if name == "constant":
        return "constant"
    if name == "power":
        return f"power: lr / (1 + step/{decay})^{a['power']:g}"
    if name == "exponential":
        every = f"every {steps}" if a["decay_steps"] is not None else "over the whole run"
        return f"exponential: lr x {a['rate']:g} {every}"
    if name == "piecewise":
        parts = [f"{r:g} until epoch {b:g}" for b, r in zip(a["epochs"], a["lr"])]
        return f"piecewise: {', '.join(parts)}, then {a['lr'][-1]:g}"
    return f"polynomial: lr -> {a['end_lr']:g} over {steps} (power {a['power']:g})"


# ---------------------------------------------------------------------------------------------
# weight penalties and gradient clipping
# ---------------------------------------------------------------------------------------------

def penalty(params: dict[str, np.ndarray], l1: float, l2: float) -> float:
    """l1*sum|w| + l2*sum w^2 over the given arrays, accumulated in float64."""
    return penalty_of(params, l1, l2, _sum_abs, _sum_squares)


def _sum_abs(a: np.ndarray) -> float:
    return float(np.sum(np.abs(a.reshape(-1)), dtype=np.float64))


def _sum_squares(a: np.ndarray) -> float:
    flat = a.reshape(-1)
    return float(np.einsum("i,i->", flat, flat, dtype=np.float64))


def penalty_of(params: dict, l1, l2, sum_abs, sum_squares) -> float:
    """penalty for any target, given its float64 sums of |w| and w^2 over an array."""
    l1, l2 = _number(l1, "l1"), _number(l2, "l2")
    total = 0.0
    for w in params.values():
        if l1:
            total += l1 * sum_abs(w)
        if l2:
            total += l2 * sum_squares(w)
    return total


def add_penalty_grads(grads: dict[str, np.ndarray], params: dict[str, np.ndarray], l1: float, l2: float) -> None:
    """grads[k] += l1*sign(w) + 2*l2*w, in place, for each k in params that has a gradient.

    sign(0) = 0, the subgradient torch's autograd gives |w| at 0.
    """
    for g, w, l1, l2 in penalty_grad_terms(grads, params, l1, l2):
        if l1:
            g += l1 * np.sign(w)
        if l2:
            g += (2.0 * l2) * w


def penalty_grad_terms(grads: dict, params: dict, l1, l2) -> list:
    """(gradient, parameter, l1, l2) for each parameter with a gradient (frozen ones have none),
    the weights checked: what add_penalty_grads adds to, on any target."""
    l1, l2 = _number(l1, "l1"), _number(l2, "l2")
    return [(grads[key], w, l1, l2) for key, w in params.items() if grads.get(key) is not None]


def clip_by_value(grads: dict[str, np.ndarray], value: float) -> None:
    """Clamp every gradient element to [-value, value], in place."""
    value = clip_threshold(value, "clip value")
    for g in grads.values():
        np.clip(g, -value, value, out=g)


def clip_threshold(value, what: str) -> float:
    """A clip value or norm: a number > 0."""
    value = _number(value, what)
    if value <= 0:
        raise ValueError(f"{what} must be > 0, got {value!r}")
    return value


def clip_by_global_norm(grads: dict[str, np.ndarray], max_norm: float) -> float:
    """Scale all gradients by max_norm/(norm + 1e-6) when that is < 1, in place; return the norm before.

    torch.nn.utils.clip_grad_norm_ semantics (norm: the 2-norm of all gradients
    together, accumulated here in float64). A non-finite norm is returned with
    the gradients untouched, so the caller can see it and skip the step.
    """
    def scale(g, coef):
        g *= coef
    return clip_by_global_norm_of(grads, max_norm, _sum_squares, scale)


def clip_by_global_norm_of(grads: dict, max_norm, sum_squares, scale) -> float:
    """clip_by_global_norm for any target, given its float64 sum of g^2 over an array and its
    in-place scaling of an array by a Python float."""
    max_norm = clip_threshold(max_norm, "clip norm")
    sq = 0.0
    for g in grads.values():
        sq += sum_squares(g)
    norm = math.sqrt(sq)
    coef = max_norm / (norm + _CLIP_NORM_EPS)
    if math.isfinite(norm) and coef < 1.0:
        for g in grads.values():
            scale(g, coef)
    return norm
