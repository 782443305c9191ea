"""The memory planner (runtime/memory.py) and the executor's planned arena.

The plans are checked by `assert_valid`, which shares no code with the planner:
it recomputes every storage's lifetime from the instruction list and compares
every pair of storages (live at one instruction and overlapping in bytes is an
error unless it is an allowed in-place write). Then whole networks run planned
and unplanned and must agree bit for bit.
"""

from __future__ import annotations

import glob
import itertools

import numpy as np
import pytest

import netspec
from netspec.lower.program import Instr, Phase, Program, TensorSpec
from netspec.runtime.cpu import TARGET as CPU
from netspec.runtime.memory import plan_memory
from netspec.runtime.program import Executor, KernelFailure

INPLACE = CPU.capabilities.inplace
ALIGN = CPU.capabilities.align


# ---------------------------------------------------------------- the independent checker

def _root(name, aliases):
    while name in aliases:
        name = aliases[name]
    return name


def storage_lifetimes(program, phase, keep=()):
    """{root tensor: (first, last)} from the instruction list: written (or fed, at 0) to
    last read through itself or an alias; phase outputs and `keep` to the end."""
    ph = program.phases[phase]
    n = len(ph.instrs)
    al = ph.aliases
    persistent = {t.name for t in program.tensors.values() if t.kind in ("param", "state", "const")}
    fed = set(program.inputs.values()) | ({program.target} if phase != "infer" and program.target else set())
    first, last = {}, {}
    for i, ins in enumerate(ph.instrs):
        for t in [*ins.inputs, *ins.outputs]:
            if t is None or _root(t, al) in persistent:
                continue
            r = _root(t, al)
            last[r] = max(last.get(r, i), i)
            if t in ins.outputs:
                first.setdefault(r, i)
    for t in (*fed, *ph.outputs.values(), *keep):
        r = _root(t, al)
        if r in persistent or (t in keep and t not in last and t not in first):
            continue
        if t in fed:
            first[r] = 0
        if t in ph.outputs.values() or t in keep:
            last[r] = n - 1
        last.setdefault(r, first.get(r, 0))
    for r in last:
        assert r in first, f"{r} is read before anything writes it"
    return {r: (first[r], last[r]) for r in last}


def _inplace_ok(program, phase, plan, i, donor, taker) -> bool:
    """taker is written over donor at instruction i, as the plan says and the target's
    in-place rules allow."""
    ins = program.phases[phase].instrs[i]
    al = program.phases[phase].aliases
    recorded = [(o, x) for o, x in plan.inplace.get(i, []) if o == taker and _root(x, al) == donor]
    if not recorded:
        return False
    for out_pos, in_pos in INPLACE.get(ins.kernel, ()):
        if ins.outputs[out_pos] != taker:
            continue
        at = [p for p, x in enumerate(ins.inputs) if x is not None and _root(x, al) == donor]
        return bool(at) and all(p in in_pos for p in at)
    return False


def assert_valid(program, phase, plan, keep=()):
    """No two storages live at one instruction share a byte, except an allowed in-place write;
    every planned tensor fits the arena, aligned, with its own size; aliases share their root."""
    ph = program.phases[phase]
    al = ph.aliases
    life = storage_lifetimes(program, phase, keep)
    roots = sorted(life)
    assert set(roots) <= set(plan.tensors), set(roots) - set(plan.tensors)
    for name, t in plan.tensors.items():
        spec = program.tensors[name]
        assert t.nbytes == spec.size(plan.batch) * np.dtype(spec.dtype).itemsize, name
        assert t.offset % ALIGN == 0 and 0 <= t.offset and t.offset + t.nbytes <= plan.arena_bytes, name
        if name in al:
            assert t.offset == plan.tensors[_root(name, al)].offset, name
    first = np.array([life[r][0] for r in roots])
    last = np.array([life[r][1] for r in roots])
    lo = np.array([plan.tensors[r].offset for r in roots])
    hi = lo + np.array([plan.tensors[r].nbytes for r in roots])
    # every pair at once: live together and overlapping in bytes
    both = ((first[:, None] <= last[None, :]) & (first[None, :] <= last[:, None])
            & (lo[:, None] < hi[None, :]) & (lo[None, :] < hi[:, None]))
    for a, b in zip(*np.nonzero(np.triu(both, k=1))):
        ra, rb = roots[a], roots[b]
        # legal only as a hand-over: one dies at i, the other is written at i in its place
        (fa, la), (fb, lb) = life[ra], life[rb]
        ok = ((la == fb and _inplace_ok(program, phase, plan, la, ra, rb))
              or (lb == fa and _inplace_ok(program, phase, plan, lb, rb, ra)))
        assert ok, f"{phase}: {ra} {life[ra]} and {rb} {life[rb]} overlap in bytes"
    for i, pairs in plan.inplace.items():
        kernel = ph.instrs[i].kernel
        assert kernel in INPLACE, f"in place in {kernel}, which is not allowed"
    assert plan.arena_bytes >= plan.lower_bound_bytes


def assert_valid_every_pair(program, phase, plan):
    """The same rule, by a plain loop over every pair of planned storages (small programs)."""
    life = storage_lifetimes(program, phase)
    for ra, rb in itertools.combinations(sorted(life), 2):
        ta, tb = plan.tensors[ra], plan.tensors[rb]
        (fa, la), (fb, lb) = life[ra], life[rb]
        live_together = fa <= lb and fb <= la
        share = ta.offset < tb.offset + tb.nbytes and tb.offset < ta.offset + ta.nbytes
        if live_together and share:
            assert ((la == fb and _inplace_ok(program, phase, plan, la, ra, rb))
                    or (lb == fa and _inplace_ok(program, phase, plan, lb, rb, ra))), (ra, rb)


# ---------------------------------------------------------------- a tiny hand-made program

def _tiny() -> Program:
    """x -> dense -> relu -> (sigmoid, add) -> tanh = out; a 3-input add whose third input
    dies there; a copy (prelu with slope 1: not allowed in place); an alias."""
    p = Program("tiny", "float32")
    T = p.tensors

    def t(name, shape, kind="act", batched=True, dtype="float32"):
        T[name] = TensorSpec(name, shape, dtype, kind, batched)
    t("x", (4,), "input")
    t("w", (8, 4), "param", batched=False)
    T["one"] = TensorSpec("one", (8,), "float32", "const", batched=False, value=1.0)
    for name in ("h", "r", "s", "u", "v", "c", "k", "out", "z", "zv"):
        t(name, (8,))
    p.inputs = {"x": "x"}
    p.outputs = {"out": "out", "z": "z"}
    instrs = [
        Instr("dense", ["x", "w", None], ["h"], {}, "h"),      # 0
        Instr("relu", ["h"], ["r"], {}, "r"),                  # 1: in place of h
        Instr("sigmoid", ["r"], ["s"], {}, "s"),               # 2: r is read later: not in place
        Instr("prelu", ["s", "one"], ["c"], {}, "c"),          # 3: a copy (slope 1): never in place
        Instr("add", ["r", "s"], ["u"], {}, "u"),              # 4: in place of r (position 0)
        Instr("add", ["u", "u", "c"], ["v"], {}, "v"),         # 5: c dies here but is input 2
        Instr("tanh", ["v"], ["out"], {}, "out"),              # 6: in place of v; a phase output
        Instr("relu", ["out"], ["k"], {}, "k"),                # 7: out lives on: not in place
        Instr("mul", ["k", "zv"], ["z"], {}, "z"),             # 8: zv (alias of u) dies here
    ]
    p.phases["infer"] = Phase("infer", instrs, {"out": "out", "z": "z"}, aliases={"zv": "u"})
    return p


def test_tiny_program_lifetimes_and_inplace():
    prog = _tiny()
    plan = plan_memory(prog, "infer", 3, CPU)
    life = {n: (t.first, t.last) for n, t in plan.tensors.items()}
    assert life == {"x": (0, 0), "h": (0, 1), "r": (1, 4), "s": (2, 4), "c": (3, 5),
                    "u": (4, 5), "zv": (4, 8), "v": (5, 6), "out": (6, 8), "k": (7, 8), "z": (8, 8)}
    assert "w" not in plan.tensors                       # parameters persist, unplanned
    assert plan.inplace == {1: [("r", "h")], 4: [("u", "r")], 6: [("out", "v")], 8: [("z", "k")]}
    off = {n: t.offset for n, t in plan.tensors.items()}
    assert off["h"] == off["r"] == off["u"] == off["zv"]      # relu, add in place; the alias
    assert off["out"] == off["v"]
    assert off["c"] != off["v"]                          # add's third input is never overwritten
    assert off["k"] != off["out"]                        # a phase output is never given away
    assert off["z"] == off["k"]                          # ... but may take a dying input's bytes
    assert plan.tensors["zv"].via == "alias of u" and plan.tensors["u"].via == "in place of r"
    assert_valid_every_pair(prog, "infer", plan)
    assert_valid(prog, "infer", plan)
    # the bound: at instruction 5, blocks h/r/u (live to 8 through zv), c and v: 3 x 96 bytes
    assert plan.lower_bound_bytes == 3 * 96 and plan.arena_bytes >= plan.lower_bound_bytes
    assert plan.naive_bytes == 9 * 96 + 48               # every tensor but the alias; x is (3, 4)
    plain = plan_memory(prog, "infer", 3, CPU, inplace=False)
    assert plain.inplace == {} and plain.lower_bound_bytes > plan.lower_bound_bytes
    assert_valid_every_pair(prog, "infer", plain)


def test_tiny_program_runs_the_same_planned_and_unplanned():
    prog = _tiny()
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((8, 4)).astype(np.float32)
    results = []
    for planned in (True, False):
        ex = Executor(prog, CPU, plan_memory=planned)
        ex.state["w"][...] = w
        bufs = ex.run("infer", {"x": x}, 3, check=True)
        results.append({k: bufs[k].copy() for k in ("out", "z")})
    h = np.maximum(x @ w.T, 0)
    s = 1 / (1 + np.exp(-h))
    u = h + s
    out = np.tanh(u + u + s)
    np.testing.assert_allclose(results[0]["out"], out, rtol=1e-5)
    np.testing.assert_allclose(results[0]["z"], np.maximum(out, 0) * u, rtol=1e-5)
    for k in results[0]:
        assert np.array_equal(results[0][k], results[1][k]), k


def test_a_phase_without_instructions():
    """An inference graph the passes reduced to a view of its input (x -> dropout -> y)."""
    p = Program("empty", "float32")
    p.tensors["x"] = TensorSpec("x", (5,), "float32", "input")
    p.tensors["y"] = TensorSpec("y", (5,), "float32", "act")
    p.inputs, p.outputs = {"x": "x"}, {"y": "y"}
    p.phases["infer"] = Phase("infer", [], {"y": "y"}, aliases={"y": "x"})
    plan = plan_memory(p, "infer", 2, CPU)
    assert plan.arena_bytes == 64 and plan.lower_bound_bytes == 40
    assert plan.tensors["y"].offset == plan.tensors["x"].offset
    out = Executor(p, CPU).run("infer", {"x": np.arange(10.0).reshape(2, 5)}, 2, check=True)["y"]
    assert np.array_equal(out, np.arange(10.0).reshape(2, 5))


def test_an_activation_whose_backward_reads_x_is_not_written_over_x_in_training():
    """silu's backward reads its input (the ISA's grad_reads "x"): in training x lives until
    then and silu's forward takes its own buffer, while relu's (backward from its output)
    writes over its input; in inference both write over their inputs. Planned runs equal
    unplanned ones bit for bit."""
    spec = "network n() {\n input x: 6\n x -> dense(5) -> silu -> dense(4) -> relu -> dense(3) -> out\n}"
    net = netspec.loads(spec)
    prog = net.program(passes=[])

    def over_input(phase):
        """{activation kernel: whether its output is planned over its input}"""
        plan = plan_memory(prog, phase, 3, CPU)
        assert_valid(prog, phase, plan)
        return {ins.kernel: (ins.outputs[0], ins.inputs[0]) in plan.inplace.get(i, [])
                for i, ins in enumerate(prog.phases[phase].instrs) if ins.kernel in ("silu", "relu")}
    assert over_input("train") == {"silu": False, "relu": True}
    assert over_input("infer") == {"silu": True, "relu": True}
    train = prog.phases["train"].instrs
    silu = next(i for i in train if i.kernel == "silu")
    assert next(i for i in train if i.kernel == "silu_bwd").inputs[1] == silu.inputs[0]
    rng = np.random.default_rng(2)
    x, t = rng.standard_normal((3, 6)).astype(np.float32), rng.standard_normal((3, 3)).astype(np.float32)
    runs = [net.compile(seed=4, passes=[], plan_memory=planned).loss_and_grads(x, t)
            for planned in (True, False)]
    (loss0, g0), (loss1, g1) = runs
    assert loss0 == loss1 and all(np.array_equal(g0[k], g1[k]) for k in g1)


# ---------------------------------------------------------------- every spec

SPECS = sorted(glob.glob("specs/*.net"))


@pytest.mark.parametrize("spec", SPECS)
def test_every_spec_plans_without_overlap(spec):
    prog = netspec.load(spec).program()       # planning allocates nothing: full-size inputs
    for phase in prog.phases:
        for batch in (1, 3):
            plan = plan_memory(prog, phase, batch, CPU)
            assert_valid(prog, phase, plan)
            assert plan.overlaps() == []
            assert plan.lower_bound_bytes <= plan.arena_bytes
            # the targets: inference within 1.2x of the bound, training within 1.1x
            # of the saved activations plus the largest transient
            if phase == "train":
                assert plan.arena_bytes <= 1.1 * (plan.saved_bytes + plan.transient_bytes)
            assert plan.arena_bytes <= (1.2 if phase == "infer" else 1.15) * plan.lower_bound_bytes


def test_plan_report_and_json():
    prog = netspec.load("specs/lenet5.net", classes=10).program()
    plan = plan_memory(prog, "train", 256, CPU)
    text = plan.text()
    assert "planned peak" in text and "naive sum" in text and "lower bound" in text
    # c1's tanh output, kept for the backward pass (c1, its tanh, s2 and the tanh after it are
    # one fused group, named tanh1; the saved tensor is the pool's input)
    assert "saved for backward" in text and "tanh1:pool_input" in text
    js = plan.to_json()
    assert js["arena_bytes"] == plan.arena_bytes and len(js["tensors"]) == len(plan.tensors)
    row = next(r for r in js["tensors"] if r["name"] == "c1")
    assert set(row) >= {"slot", "offset", "bytes", "first", "last"}
    assert "saved for backward" not in plan_memory(prog, "infer", 256, CPU).text()


# ---------------------------------------------------------------- whole networks, bit for bit

NETS = {
    "lenet5": ("specs/lenet5.net", {"classes": 10}, 4),
    "resnet34": ("specs/resnet34.net", {"classes": 10, "input_shape": (3, 64, 64)}, 2),
    "googlenet": ("specs/googlenet.net", {"classes": 10}, 1),
    "autoencoder": ("specs/autoencoder.net", {}, 3),
    "fashion_cnn": ("specs/fashion_cnn.net", {}, 5),        # dropout: y in place, the mask not
}


def _data(net, batch, model):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((batch, *net.graph.node(net.graph.inputs[0]).shape)).astype(np.float32)
    out_shape = net.graph.node(net.graph.outputs[0]).shape
    if model.program.loss_name == "sparse_categorical_crossentropy":
        return x, rng.integers(0, out_shape[0], batch)
    return x, rng.uniform(0, 1, (batch, *out_shape)).astype(np.float32)


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n == "lenet5" else pytest.mark.slow)
                                  for n in sorted(NETS)])      # whole networks: 6-9 s each
def test_planned_equals_unplanned_bit_for_bit(name):
    path, kw, batch = NETS[name]
    net = netspec.load(path, **kw)
    runs = []
    for planned in (True, False):
        model = net.compile(plan_memory=planned, warmup=False)
        x, y = _data(net, batch, model)
        out = model(x)
        loss, grads = model.loss_and_grads(x, y, check=planned)
        again = model(x)                    # after the step: running statistics moved
        runs.append((out, loss, {k: v.copy() for k, v in grads.items()}, again,
                     {k: v.copy() for k, v in model.params.items()}))
        if planned:
            bufs = model.executor.buffers("train", batch)
            plan = model.executor.memory_plan("train", batch)
            assert_valid(model.program, "train", plan)
            assert all(bufs[t].base is not None for t in plan.tensors)    # views of the arena
    (o1, l1, g1, a1, p1), (o2, l2, g2, a2, p2) = runs
    assert np.array_equal(o1, o2) and l1 == l2 and np.array_equal(a1, a2)
    assert set(g1) == set(g2) and all(np.array_equal(g1[k], g2[k]) for k in g1)
    assert all(np.array_equal(p1[k], p2[k]) for k in p1)


def test_outputs_survive_until_the_next_run():
    net = netspec.load("specs/lenet5.net", classes=10)
    model = net.compile(warmup=False)
    x, y = _data(net, 8, model)
    loss, grads = model.loss_and_grads(x, y)
    kept = {k: v.copy() for k, v in grads.items()}
    model(x)                                 # another phase: another arena
    assert all(np.array_equal(grads[k], kept[k]) for k in kept)
    bufs = model.train_buffers(x, y)
    assert float(bufs[model.program.loss]) == loss


def test_keep_alive_keeps_an_intermediate():
    net = netspec.load("specs/lenet5.net", classes=10)
    ref = net.compile(warmup=False, plan_memory=False)
    x, y = _data(net, 4, ref)
    seen = []
    for keep in (False, True):
        model = net.compile(warmup=False)
        if keep:
            model.executor.keep_alive(["c1"])
        bufs = model.train_buffers(x, y)
        seen.append(bufs["c1"].copy())
        assert (model.executor.memory_plan("train", 4).tensors["c1"].last
                == len(model.program.phases["train"].instrs) - 1) == keep
    np.testing.assert_array_equal(ref.train_buffers(x, y)["c1"], seen[1])


# ---------------------------------------------------------------- check=True catches planner bugs

def _corrupted(model, phase, batch, corrupt):
    plan = model.executor.memory_plan(phase, batch)
    corrupt(plan)
    model.executor.memory_plan = lambda p, b: plan
    model.executor.release()


def test_check_catches_a_lifetime_cut_short():
    net = netspec.load("specs/lenet5.net", classes=10)
    model = net.compile(warmup=False)
    x, y = _data(net, 4, model)
    model.loss_and_grads(x, y, check=True)

    def cut(plan):    # tanh1 is saved for c3's weight gradient; pretend it dies at once
        b = plan.blocks[plan.tensors["tanh1"].block]
        b.last = b.first + 1
    _corrupted(model, "train", 4, cut)
    with pytest.raises(KernelFailure):
        model.loss_and_grads(x, y, check=True)


def test_check_catches_two_live_tensors_sharing_bytes():
    net = netspec.load("specs/lenet5.net", classes=10)
    model = net.compile(warmup=False)
    x, y = _data(net, 4, model)

    def clash(plan):  # the loss gradient put on top of tanh1, which is still needed
        a, b = plan.tensors["tanh1"], plan.tensors["d:output:loss"]
        assert a.first <= b.first and b.last < a.last and b.nbytes <= a.nbytes
        b.offset = plan.blocks[b.block].offset = a.offset
    _corrupted(model, "train", 4, clash)
    with pytest.raises(KernelFailure):
        model.loss_and_grads(x, y, check=True)
