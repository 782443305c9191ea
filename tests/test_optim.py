"""netspec.runtime.optim: optimizers, schedules, penalties and clipping.

Three kinds of oracle: updates written out by hand from the formulas (float64,
to 1e-12), PyTorch's optimizers / schedulers / clipping (float64 to 1e-12,
float32 to ~1e-6), and finite differences for the penalty gradients.
"""

import math
import tracemalloc

import numpy as np
import pytest
import torch

from netspec.lang import train_section
from netspec.runtime import optim
from netspec.runtime.checkpoint import load_arrays, save_arrays
from netspec.runtime.optim import (add_penalty_grads, clip_by_global_norm, clip_by_value, describe_schedule,
                                   make_optimizer, penalty, schedule_lr)

NAMES = list(optim.OPTIMIZERS)

# (our name, our kwargs, the same optimizer in torch; lr is set per step)
TORCH_CASES = [
    ("sgd", {}, lambda ps: torch.optim.SGD(ps, lr=0.0, foreach=False)),
    ("sgd", {"momentum": 0.5, "nesterov": True},
     lambda ps: torch.optim.SGD(ps, lr=0.0, momentum=0.5, nesterov=True, foreach=False)),
    ("momentum", {}, lambda ps: torch.optim.SGD(ps, lr=0.0, momentum=0.9, foreach=False)),
    ("nesterov", {"momentum": 0.8},
     lambda ps: torch.optim.SGD(ps, lr=0.0, momentum=0.8, nesterov=True, foreach=False)),
    ("adagrad", {}, lambda ps: torch.optim.Adagrad(ps, lr=0.0, eps=1e-7, foreach=False)),
    ("adagrad", {"epsilon": 1e-2}, lambda ps: torch.optim.Adagrad(ps, lr=0.0, eps=1e-2, foreach=False)),
    ("rmsprop", {}, lambda ps: torch.optim.RMSprop(ps, lr=0.0, alpha=0.9, eps=1e-7, foreach=False)),
    ("rmsprop", {"rho": 0.5, "epsilon": 1e-3},
     lambda ps: torch.optim.RMSprop(ps, lr=0.0, alpha=0.5, eps=1e-3, foreach=False)),
    ("adam", {}, lambda ps: torch.optim.Adam(ps, lr=0.0, betas=(0.9, 0.999), eps=1e-7, foreach=False)),
    # beta1 <= 0.5 takes lerp's other formula
    ("adam", {"beta1": 0.3, "beta2": 0.9, "epsilon": 1e-3},
     lambda ps: torch.optim.Adam(ps, lr=0.0, betas=(0.3, 0.9), eps=1e-3, foreach=False)),
    ("nadam", {}, lambda ps: torch.optim.NAdam(ps, lr=0.0, betas=(0.9, 0.999), eps=1e-7, foreach=False)),
    ("nadam", {"beta1": 0.4, "beta2": 0.95, "epsilon": 1e-4},
     lambda ps: torch.optim.NAdam(ps, lr=0.0, betas=(0.4, 0.95), eps=1e-4, foreach=False)),
]
CASE_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'defaults'}" for n, kw, _ in TORCH_CASES]
SHAPES = {"c1.weight": (4, 3, 2, 2), "c1.bias": (4,), "d.weight": (5, 3), "d.bias": (1,)}


@pytest.fixture
def torch_dtype():
    """Run torch with a default dtype (NAdam keeps mu_product in the default dtype); restore it after."""
    saved = torch.get_default_dtype()
    yield lambda dt: torch.set_default_dtype(torch.float64 if dt == np.float64 else torch.float32)
    torch.set_default_dtype(saved)


def _params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}


def _grads(rng, dtype, names=SHAPES):
    return {k: rng.standard_normal(SHAPES[k]).astype(dtype) for k in names}


# ---------------------------------------------------------------------------------------------
# defaults agree with the spec's train section
# ---------------------------------------------------------------------------------------------

def test_optimizer_defaults_match_the_train_section():
    assert set(optim.OPTIMIZERS) == set(train_section.OPTIMIZERS)
    for name, (_, defaults, _) in optim.OPTIMIZERS.items():
        spec = {k: v for k, v in train_section.OPTIMIZERS[name].items() if k != "lr"}
        assert defaults == spec, name


def test_schedule_defaults_match_the_train_section():
    assert {n: d for n, (_, d) in optim.SCHEDULES.items()} == train_section.SCHEDULES


# ---------------------------------------------------------------------------------------------
# hand-computed updates: three steps on a 3-element parameter
# ---------------------------------------------------------------------------------------------

W0 = np.array([1.0, -2.0, 0.5])
G = [np.array([0.5, -1.0, 2.0]), np.array([-0.25, 0.5, 1.0]), np.array([1.0, 1.0, -1.0])]
LR = [0.1, 0.05, 0.2]


def _run(name, **kw):
    w = W0.copy()
    opt = make_optimizer(name, {"w": w}, **kw)
    out = []
    for g, lr in zip(G, LR):
        opt.step({"w": g}, lr)
        out.append(w.copy())
    assert opt.t == 3
    return out


def _close(got, want):
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_hand_sgd():
    w1 = np.array([1.0 - 0.1 * 0.5, -2.0 + 0.1 * 1.0, 0.5 - 0.1 * 2.0])      # [0.95, -1.9, 0.3]
    w2 = w1 - 0.05 * G[1]
    w3 = w2 - 0.2 * G[2]
    _close(_run("sgd"), [w1, w2, w3])
    np.testing.assert_allclose(w3, [0.7625, -2.125, 0.45], rtol=1e-14)


def test_hand_momentum():
    m = 0.9
    b1 = G[0]                       # first step: the buffer is the gradient
    b2 = m * b1 + G[1]
    b3 = m * b2 + G[2]
    w1 = W0 - 0.1 * b1
    w2 = w1 - 0.05 * b2
    w3 = w2 - 0.2 * b3
    _close(_run("momentum"), [w1, w2, w3])
    # the third buffer written out: 0.81*g1 + 0.9*g2 + g3
    np.testing.assert_allclose(b3, [0.81 * 0.5 - 0.9 * 0.25 + 1, -0.81 + 0.45 + 1, 1.62 + 0.9 - 1])


def test_hand_nesterov():
    m = 0.7
    b1 = G[0]
    b2 = m * b1 + G[1]
    b3 = m * b2 + G[2]
    w1 = W0 - 0.1 * (G[0] + m * b1)
    w2 = w1 - 0.05 * (G[1] + m * b2)
    w3 = w2 - 0.2 * (G[2] + m * b3)
    _close(_run("nesterov", momentum=m), [w1, w2, w3])
    _close(_run("sgd", momentum=m, nesterov=True), [w1, w2, w3])


def test_hand_adagrad():
    eps = 1e-7
    s1 = G[0] ** 2
    s2 = s1 + G[1] ** 2
    s3 = s2 + G[2] ** 2
    w1 = W0 - 0.1 * G[0] / (np.sqrt(s1) + eps)           # first step: lr * g/|g|
    w2 = w1 - 0.05 * G[1] / (np.sqrt(s2) + eps)
    w3 = w2 - 0.2 * G[2] / (np.sqrt(s3) + eps)
    _close(_run("adagrad"), [w1, w2, w3])
    np.testing.assert_allclose(w1, W0 - 0.1 * np.sign(G[0]), atol=1e-7)


def test_hand_rmsprop():
    rho, eps = 0.8, 1e-6
    v1 = (1 - rho) * G[0] ** 2
    v2 = rho * v1 + (1 - rho) * G[1] ** 2
    v3 = rho * v2 + (1 - rho) * G[2] ** 2
    w1 = W0 - 0.1 * G[0] / (np.sqrt(v1) + eps)
    w2 = w1 - 0.05 * G[1] / (np.sqrt(v2) + eps)
    w3 = w2 - 0.2 * G[2] / (np.sqrt(v3) + eps)
    _close(_run("rmsprop", rho=rho, epsilon=eps), [w1, w2, w3])


def test_hand_adam():
    b1, b2, eps = 0.9, 0.999, 1e-7
    m, v, ws, w = np.zeros(3), np.zeros(3), [], W0.copy()
    for n, (g, lr) in enumerate(zip(G, LR), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** n), v / (1 - b2 ** n)
        w = w - lr * m_hat / (np.sqrt(v_hat) + eps)
        ws.append(w)
    _close(_run("adam"), ws)
    # the first Adam step is lr * g / (|g| + eps), about lr * sign(g)
    np.testing.assert_allclose(ws[0], W0 - 0.1 * G[0] / (np.abs(G[0]) + eps), rtol=1e-12)


def test_hand_nadam():
    b1, b2, eps, psi = 0.9, 0.999, 1e-7, 0.004
    mu = [b1 * (1 - 0.5 * 0.96 ** (n * psi)) for n in range(1, 5)]   # mu_1 .. mu_4
    m, v, ws, w, prod = np.zeros(3), np.zeros(3), [], W0.copy(), 1.0
    for n, (g, lr) in enumerate(zip(G, LR), start=1):
        prod *= mu[n - 1]
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        denom = np.sqrt(v / (1 - b2 ** n)) + eps
        w = w - lr * (1 - mu[n - 1]) / (1 - prod) * g / denom - lr * mu[n] / (1 - prod * mu[n]) * m / denom
        ws.append(w)
    _close(_run("nadam"), ws)
    # step 1 written out: denom = |g1| + eps, m1 = 0.1 g1
    d = np.abs(G[0]) + eps
    w1 = W0 - 0.1 * G[0] / d - 0.1 * mu[1] / (1 - mu[0] * mu[1]) * 0.1 * G[0] / d
    np.testing.assert_allclose(ws[0], w1, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# parity with torch.optim
# ---------------------------------------------------------------------------------------------

def _torch_run(factory, params, grad_seq, lrs):
    """torch's optimizer over copies of params; a name absent from a step's grads has grad None."""
    tp = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    opt = factory(list(tp.values()))
    for grads, lr in zip(grad_seq, lrs):
        for k, p in tp.items():
            p.grad = torch.tensor(grads[k]) if k in grads else None
        opt.param_groups[0]["lr"] = lr
        opt.step()
    return {k: p.detach().numpy() for k, p in tp.items()}


def _our_run(name, kw, params, grad_seq, lrs):
    ours = {k: v.copy() for k, v in params.items()}
    opt = make_optimizer(name, ours, **kw)
    for grads, lr in zip(grad_seq, lrs):
        opt.step(grads, lr)
    return ours


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-6)], ids=["f64", "f32"])
@pytest.mark.parametrize("name,kw,factory", TORCH_CASES, ids=CASE_IDS)
def test_torch_parity(name, kw, factory, dtype, tol, torch_dtype):
    torch_dtype(dtype)
    rng = np.random.default_rng(1)
    params = _params(dtype)
    grad_seq = [_grads(rng, dtype) for _ in range(10)]
    lrs = list(rng.uniform(0.001, 0.1, size=10))
    want = _torch_run(factory, params, grad_seq, lrs)
    ours = _our_run(name, kw, params, grad_seq, lrs)
    for k in params:
        assert ours[k].dtype == dtype
        np.testing.assert_allclose(ours[k], want[k], rtol=tol, atol=tol, err_msg=k)
        assert not np.allclose(ours[k], params[k]), "the parameters moved"


@pytest.mark.parametrize("name,kw,factory", TORCH_CASES, ids=CASE_IDS)
def test_torch_parity_partly_frozen(name, kw, factory, torch_dtype):
    """A parameter frozen for some steps counts only its own steps, as in torch (bias correction, mu)."""
    torch_dtype(np.float64)
    rng = np.random.default_rng(2)
    params = _params(np.float64)
    grad_seq = [_grads(rng, np.float64, [k for k in SHAPES if not (k == "d.weight" and i < 4)
                                         and not (k == "c1.bias" and 3 <= i < 6)])
                for i in range(9)]
    lrs = list(rng.uniform(0.001, 0.1, size=9))
    want = _torch_run(factory, params, grad_seq, lrs)
    ours = _our_run(name, kw, params, grad_seq, lrs)
    for k in params:
        np.testing.assert_allclose(ours[k], want[k], rtol=1e-12, atol=1e-12, err_msg=k)


# ---------------------------------------------------------------------------------------------
# state: resume is bit-identical; frozen parameters stay put
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("via", [None, ".safetensors", ".npz"])
@pytest.mark.parametrize("name", NAMES)
def test_resume_bit_identical(name, via, tmp_path):
    kw = {"momentum": 0.5} if name == "sgd" else {}
    rng = np.random.default_rng(3)
    # c1.bias is frozen for the first two steps, so its step count lags the others
    grad_seq = [_grads(rng, np.float32 if i % 2 else np.float64,
                       [k for k in SHAPES if not (k == "c1.bias" and i < 2)]) for i in range(10)]
    lrs = list(rng.uniform(0.001, 0.1, size=10))

    def fresh():
        params = _params(np.float64)
        params["d.weight"] = params["d.weight"].astype(np.float32)     # one float32 parameter
        return params, make_optimizer(name, params, **kw)

    pa, a = fresh()
    for i in range(5):
        a.step(grad_seq[i], lrs[i])
    saved, saved_t = a.state_arrays(), a.t
    for i in range(5, 10):
        a.step(grad_seq[i], lrs[i])

    pb0, b0 = fresh()
    for i in range(5):
        b0.step(grad_seq[i], lrs[i])
    state, t = b0.state_arrays(), b0.t
    assert t == saved_t == 5
    assert state.keys() == saved.keys() and all(np.array_equal(state[k], saved[k]) for k in state)
    if via:
        save_arrays(tmp_path / f"opt{via}", {**state, **{f"param/{k}": v for k, v in pb0.items()}})
        loaded, _ = load_arrays(tmp_path / f"opt{via}")
        state = {k: v for k, v in loaded.items() if not k.startswith("param/")}
        pb0 = {k[len("param/"):]: v for k, v in loaded.items() if k.startswith("param/")}
    pb, b = fresh()
    for k in pb:
        pb[k][...] = pb0[k]
    b.load_state(state, t)
    for i in range(5, 10):
        b.step(grad_seq[i], lrs[i])

    assert a.t == b.t == 10
    for k in pa:
        assert np.array_equal(pa[k], pb[k]), k
    sa, sb = a.state_arrays(), b.state_arrays()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and np.array_equal(sa[k], sb[k]), k


def test_state_slots_names_and_dtypes():
    params = {"c1.weight": np.zeros((2, 3), np.float32), "c1.bias": np.zeros(2)}
    expect = {"sgd": set(), "momentum": {"momentum"}, "nesterov": {"momentum"}, "adagrad": {"sum"},
              "rmsprop": {"square_avg"}, "adam": {"exp_avg", "exp_avg_sq", "step"},
              "nadam": {"exp_avg", "exp_avg_sq", "step", "mu_product"}}
    for name, slots in expect.items():
        state = make_optimizer(name, params).state_arrays()
        assert set(state) == {f"{p}.{s}" for p in params for s in slots}, name
        for key, arr in state.items():
            param, slot = key.rsplit(".", 1)
            if slot in ("step", "mu_product"):
                assert arr.shape == (1,) and arr.dtype == (np.int64 if slot == "step" else np.float64)
            else:
                assert arr.shape == params[param].shape and arr.dtype == params[param].dtype, key
    assert make_optimizer("sgd", params, momentum=0.9).state_arrays().keys() == \
        {"c1.weight.momentum", "c1.bias.momentum"}


def test_state_arrays_are_copies():
    w = np.ones(3)
    opt = make_optimizer("adam", {"w": w})
    opt.step({"w": np.ones(3)}, 0.1)
    state = opt.state_arrays()
    before = {k: v.copy() for k, v in state.items()}
    opt.step({"w": np.ones(3)}, 0.1)
    assert all(np.array_equal(state[k], before[k]) for k in state)


@pytest.mark.parametrize("name", NAMES)
def test_frozen_parameter_unchanged(name):
    params = _params(np.float64)
    frozen = params["c1.weight"].copy()
    opt = make_optimizer(name, params)
    slots_before = {k: v for k, v in opt.state_arrays().items() if k.startswith("c1.weight.")}
    rng = np.random.default_rng(4)
    for _ in range(3):
        opt.step(_grads(rng, np.float64, ["c1.bias", "d.weight", "d.bias"]), 0.05)
    assert np.array_equal(params["c1.weight"], frozen)
    assert not np.array_equal(params["d.weight"], _params(np.float64)["d.weight"])
    slots_after = opt.state_arrays()
    assert all(np.array_equal(slots_after[k], v) for k, v in slots_before.items())


def test_grads_not_modified():
    params = _params(np.float64)
    grads = _grads(np.random.default_rng(5), np.float64)
    copies = {k: g.copy() for k, g in grads.items()}
    for name in NAMES:
        make_optimizer(name, params).step(grads, 0.1)
    assert all(np.array_equal(grads[k], copies[k]) for k in grads)


@pytest.mark.parametrize("name", NAMES)
def test_step_allocates_no_parameter_sized_arrays(name):
    params = {"w": np.ones(250_000), "b": np.ones(1000, np.float32)}      # w: 2 MB
    grads = {"w": np.full(250_000, 0.5), "b": np.full(1000, 0.5, np.float32)}
    opt = make_optimizer(name, params)
    opt.step(grads, 0.01)
    tracemalloc.start()
    try:
        opt.step(grads, 0.01)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100_000, f"{name} step allocated {peak} bytes"


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------

def test_unknown_optimizer_names_the_choices():
    with pytest.raises(ValueError, match="unknown optimizer 'adamw'.*adam, nadam"):
        make_optimizer("adamw", {"w": np.zeros(2)})


@pytest.mark.parametrize("name,kw,match", [
    ("adam", {"momentum": 0.9}, "'adam' has no argument 'momentum'.*beta1, beta2, epsilon"),
    ("sgd", {"lr": 0.1}, "no argument 'lr'.*lr is given per step"),
    ("nesterov", {"nesterov": False}, "'nesterov' has no argument 'nesterov'.*momentum"),
    ("rmsprop", {"beta1": 0.9}, "its arguments: rho, epsilon"),
])
def test_unknown_kwarg(name, kw, match):
    with pytest.raises(ValueError, match=match):
        make_optimizer(name, {"w": np.zeros(2)}, **kw)


@pytest.mark.parametrize("name,kw,match", [
    ("adam", {"beta1": 1.0}, "beta1 must be a number >= 0 and < 1, got 1.0"),
    ("nadam", {"beta2": -0.1}, "beta2"),
    ("adagrad", {"epsilon": -1e-7}, "epsilon"),
    ("rmsprop", {"rho": float("nan")}, "rho"),
    ("momentum", {"momentum": -0.5}, "momentum"),
    ("sgd", {"nesterov": "yes"}, "nesterov must be true or false"),
    ("adam", {"epsilon": "small"}, "epsilon"),
])
def test_bad_hyperparameters(name, kw, match):
    with pytest.raises(ValueError, match=match):
        make_optimizer(name, {"w": np.zeros(2)}, **kw)


def test_bad_params_and_steps():
    with pytest.raises(ValueError, match="'w' must be a float32 or float64 array, got int64"):
        make_optimizer("sgd", {"w": np.zeros(2, np.int64)})
    ro = np.zeros(2)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        make_optimizer("sgd", {"w": ro})
    opt = make_optimizer("adam", {"w": np.zeros(2)})
    with pytest.raises(ValueError, match="unknown parameter 'v'"):
        opt.step({"v": np.zeros(2)}, 0.1)
    with pytest.raises(ValueError, match=r"'w' has shape \(3,\), parameter has \(2,\)"):
        opt.step({"w": np.zeros(3)}, 0.1)
    with pytest.raises(ValueError, match="learning rate"):
        opt.step({"w": np.zeros(2)}, -0.1)
    assert opt.t == 0


def test_load_state_errors():
    params = {"a.weight": np.zeros((2, 2)), "a.bias": np.zeros(2)}
    opt = make_optimizer("adam", params)
    good = opt.state_arrays()
    missing = {k: v for k, v in good.items() if k != "a.bias.exp_avg_sq"}
    with pytest.raises(ValueError, match="lacks 1 slot.*a.bias.exp_avg_sq"):
        opt.load_state(missing, 3)
    with pytest.raises(ValueError, match=r"'a.weight.exp_avg' has shape \(4,\), expected \(2, 2\)"):
        opt.load_state({**good, "a.weight.exp_avg": np.zeros(4)}, 3)
    with pytest.raises(ValueError, match="does not: a.weight.momentum"):
        opt.load_state({**good, "a.weight.momentum": np.zeros((2, 2))}, 3)
    with pytest.raises(ValueError, match="step count"):
        opt.load_state(good, -1)
    with pytest.raises(ValueError, match="lacks"):       # a momentum checkpoint into adam
        opt.load_state(make_optimizer("momentum", params).state_arrays(), 3)
    # all or nothing: a failed load changed nothing
    bad = {k: np.ones_like(v) for k, v in good.items()}
    bad["a.bias.exp_avg"] = np.zeros(5)
    with pytest.raises(ValueError):
        opt.load_state(bad, 7)
    assert opt.t == 0 and all(np.array_equal(v, good[k]) for k, v in opt.state_arrays().items())


# ---------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,kw,step,epoch,want", [
    ("constant", {}, 0, 0, 0.1),
    ("constant", {}, 12345, 40, 0.1),
    ("power", {"decay_steps": 100}, 0, 0, 0.1),
    ("power", {"decay_steps": 100}, 100, 0, 0.05),
    ("power", {"decay_steps": 100}, 300, 0, 0.025),
    ("power", {"decay_steps": 100, "power": 2.0}, 100, 0, 0.025),
    ("power", {"decay_steps": 100, "power": 0.5}, 300, 0, 0.05),
    ("exponential", {"decay_steps": 1000}, 0, 0, 0.1),
    ("exponential", {"decay_steps": 1000}, 1000, 3, 0.01),
    ("exponential", {"decay_steps": 1000}, 2000, 3, 0.001),
    ("exponential", {"decay_steps": 1000}, 500, 0, 0.1 * math.sqrt(0.1)),
    ("exponential", {"decay_steps": 10, "rate": 0.5}, 30, 0, 0.0125),
    ("piecewise", {"epochs": [30, 60], "lr": [0.5, 0.05, 0.005]}, 0, 0, 0.5),
    ("piecewise", {"epochs": [30, 60], "lr": [0.5, 0.05, 0.005]}, 999, 29, 0.5),
    ("piecewise", {"epochs": [30, 60], "lr": [0.5, 0.05, 0.005]}, 0, 30, 0.05),
    ("piecewise", {"epochs": [30, 60], "lr": [0.5, 0.05, 0.005]}, 0, 59, 0.05),
    ("piecewise", {"epochs": [30, 60], "lr": [0.5, 0.05, 0.005]}, 0, 60, 0.005),
    ("piecewise", {"epochs": (5,), "lr": (0.2, 0.02)}, 0, 100, 0.02),
    ("polynomial", {"decay_steps": 100}, 0, 0, 0.1),
    ("polynomial", {"decay_steps": 100}, 50, 0, 0.05005),
    ("polynomial", {"decay_steps": 100}, 100, 0, 0.0001),
    ("polynomial", {"decay_steps": 100}, 250, 0, 0.0001),
    ("polynomial", {"decay_steps": 100, "power": 2.0}, 50, 0, 0.025075),
    ("polynomial", {"decay_steps": 100, "end_lr": 0.0, "power": 0.5}, 75, 0, 0.05),
    # decay_steps left out: the whole run (total_steps=1000)
    ("exponential", {}, 1000, 0, 0.01),
    ("exponential", {"decay_steps": None}, 500, 0, 0.1 * math.sqrt(0.1)),
    ("power", {}, 1000, 0, 0.05),
    ("polynomial", {"end_lr": 0.0}, 500, 0, 0.05),
])
def test_schedule_hand_values(name, kw, step, epoch, want):
    got = schedule_lr(name, 0.1, step=step, epoch=epoch, total_steps=1000, **kw)
    assert isinstance(got, float)
    assert got == pytest.approx(want, rel=1e-12, abs=0)


def _torch_lrs(make_sched, n, base_lr=0.1):
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=base_lr)
    sched = make_sched(opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("gamma", [0.9, 0.5])
def test_schedule_exponential_vs_torch(gamma):
    want = _torch_lrs(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=gamma), 25)
    got = [schedule_lr("exponential", 0.1, k, 0, 25, decay_steps=1, rate=gamma) for k in range(25)]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_schedule_piecewise_vs_torch_multistep():
    want = _torch_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[3, 7], gamma=0.1), 12)
    got = [schedule_lr("piecewise", 0.1, 0, e, 12, epochs=[3, 7], lr=[0.1, 0.01, 0.001]) for e in range(12)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[2] == 0.1 and got[3] == 0.01 and got[7] == 0.001


@pytest.mark.parametrize("power", [1.0, 2.0, 0.5])
def test_schedule_polynomial_vs_torch(power):
    T = 8
    want = _torch_lrs(lambda o: torch.optim.lr_scheduler.PolynomialLR(o, total_iters=T, power=power), 12)
    got = [schedule_lr("polynomial", 0.1, k, 0, 100, decay_steps=T, end_lr=0.0, power=power) for k in range(12)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert got[T:] == [0.0] * (12 - T)


@pytest.mark.parametrize("name,kw,match", [
    ("piecewise", {}, "piecewise' needs both epochs.*lr.*piecewise\\(epochs=\\[30, 60\\]"),
    ("piecewise", {"epochs": [30]}, "needs both"),
    ("piecewise", {"epochs": [30, 60], "lr": [0.1, 0.01]}, "one more lr than epoch boundaries: 2 boundaries, 2"),
    ("piecewise", {"epochs": [60, 30], "lr": [0.1, 0.01, 0.001]}, "boundaries must increase"),
    ("piecewise", {"epochs": [30, 30], "lr": [0.1, 0.01, 0.001]}, "boundaries must increase"),
    ("piecewise", {"epochs": ["a"], "lr": [0.1, 0.01]}, "epoch boundary"),
    ("exponential", {"decay_steps": 0}, "decay_steps must be > 0"),
    ("power", {"decay_steps": -5}, "decay_steps"),
    ("polynomial", {"decay_step": 100}, "'polynomial' has no argument 'decay_step'.*decay_steps, end_lr, power"),
    ("cosine", {}, "unknown schedule 'cosine'.*constant, power, exponential, piecewise, polynomial"),
])
def test_schedule_errors(name, kw, match):
    with pytest.raises(ValueError, match=match):
        schedule_lr(name, 0.1, 0, 0, 100, **kw)


def test_schedule_whole_run_needs_total_steps():
    with pytest.raises(ValueError, match="decay_steps is left out.*total_steps is 0"):
        schedule_lr("exponential", 0.1, 0, 0, 0)
    assert schedule_lr("exponential", 0.1, 0, 0, 0, decay_steps=10) == 0.1


@pytest.mark.parametrize("name,kw,want", [
    ("constant", {}, "constant"),
    ("exponential", {"decay_steps": 1000}, "exponential: lr x 0.1 every 1000 steps"),
    ("exponential", {"rate": 0.5}, "exponential: lr x 0.5 over the whole run"),
    ("power", {"decay_steps": 100, "power": 0.5}, "power: lr / (1 + step/100)^0.5"),
    ("piecewise", {"epochs": [30, 60], "lr": [0.1, 0.01, 0.001]},
     "piecewise: 0.1 until epoch 30, 0.01 until epoch 60, then 0.001"),
    ("polynomial", {"decay_steps": 5000}, "polynomial: lr -> 0.0001 over 5000 steps (power 1)"),
])
def test_describe_schedule(name, kw, want):
    assert describe_schedule(name, **kw) == want


# ---------------------------------------------------------------------------------------------
# penalties and clipping
# ---------------------------------------------------------------------------------------------

def test_penalty_hand_value():
    params = {"a": np.array([1.0, -2.0, 0.5]), "b": np.array([[3.0]], np.float32)}
    assert penalty(params, 0.1, 0.01) == pytest.approx(0.1 * 6.5 + 0.01 * 14.25, rel=1e-15)
    assert penalty(params, 0.0, 0.0) == 0.0
    assert penalty(params, 1.0, 0.0) == 6.5 and penalty(params, 0.0, 1.0) == 14.25


def test_penalty_accumulates_in_float64():
    w = np.full(1 << 20, 0.1, np.float32)        # float32 running sums would drift
    exact = float(np.float32(0.1)) * (1 << 20)
    assert penalty({"w": w}, 1.0, 0.0) == pytest.approx(exact, rel=1e-12)
    assert penalty({"w": w}, 0.0, 1.0) == pytest.approx(float(np.float32(0.1)) ** 2 * (1 << 20), rel=1e-12)


@pytest.mark.parametrize("l1,l2", [(0.01, 0.0), (0.0, 0.02), (0.03, 0.05)])
def test_penalty_grads_vs_finite_differences(l1, l2):
    rng = np.random.default_rng(6)
    params = {}
    for k, s in {"a": (3, 4), "b": (5,)}.items():
        w = rng.uniform(0.2, 2.0, size=s) * rng.choice([-1.0, 1.0], size=s)     # away from 0 for |w|
        params[k] = w
    base = {k: rng.standard_normal(w.shape) for k, w in params.items()}
    grads = {k: g.copy() for k, g in base.items()}
    add_penalty_grads(grads, params, l1, l2)
    h = 1e-6
    for k, w in params.items():
        fd = np.empty_like(w)
        for i in np.ndindex(w.shape):
            old = w[i]
            w[i] = old + h
            up = penalty(params, l1, l2)
            w[i] = old - h
            down = penalty(params, l1, l2)
            w[i] = old
            fd[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(grads[k] - base[k], fd, rtol=1e-6, atol=1e-8)


def test_penalty_grads_skip_frozen_and_sign_at_zero():
    params = {"a": np.array([0.0, 2.0, -1.0]), "frozen": np.ones(2)}
    grads = {"a": np.zeros(3)}
    add_penalty_grads(grads, params, 0.5, 0.25)
    np.testing.assert_array_equal(grads["a"], [0.0, 0.5 + 1.0, -0.5 - 0.5])
    assert set(grads) == {"a"}


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-6)], ids=["f64", "f32"])
@pytest.mark.parametrize("max_norm", [0.5, 3.0, 100.0])
def test_clip_by_global_norm_vs_torch(max_norm, dtype, tol):
    rng = np.random.default_rng(7)
    grads = {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}
    tensors = [torch.tensor(g.copy()) for g in grads.values()]
    for t in tensors:
        t.requires_grad_(False)
    params = [torch.zeros(t.shape, dtype=t.dtype, requires_grad=True) for t in tensors]
    for p, t in zip(params, tensors):
        p.grad = t
    want_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=False))
    norm = clip_by_global_norm(grads, max_norm)
    assert norm == pytest.approx(want_norm, rel=tol)
    for g, p in zip(grads.values(), params):
        assert g.dtype == dtype
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=tol, atol=tol)
    scaled = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values()))
    assert scaled == pytest.approx(min(norm, max_norm), rel=1e-5)


def test_clip_by_global_norm_non_finite_left_alone():
    grads = {"a": np.array([1.0, np.inf]), "b": np.array([3.0])}
    assert clip_by_global_norm(grads, 1.0) == math.inf
    np.testing.assert_array_equal(grads["a"], [1.0, np.inf])
    assert math.isnan(clip_by_global_norm({"a": np.array([np.nan])}, 1.0))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_clip_by_value_vs_torch(dtype):
    rng = np.random.default_rng(8)
    grads = {k: (3 * rng.standard_normal(s)).astype(dtype) for k, s in SHAPES.items()}
    params = [torch.zeros(g.shape, dtype=torch.float64 if dtype == np.float64 else torch.float32,
                          requires_grad=True) for g in grads.values()]
    for p, g in zip(params, grads.values()):
        p.grad = torch.tensor(g.copy())
    torch.nn.utils.clip_grad_value_(params, 1.5, foreach=False)
    clip_by_value(grads, 1.5)
    for g, p in zip(grads.values(), params):
        np.testing.assert_array_equal(g, p.grad.numpy())
    assert max(np.abs(g).max() for g in grads.values()) == 1.5


@pytest.mark.parametrize("fn,arg", [(clip_by_value, 0.0), (clip_by_value, -1.0),
                                    (clip_by_global_norm, 0.0), (clip_by_global_norm, float("inf"))])
def test_clip_bad_threshold(fn, arg):
    with pytest.raises(ValueError, match="clip"):
        fn({"a": np.ones(2)}, arg)
