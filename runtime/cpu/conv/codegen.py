"""Codegen-time helpers of the SIMD intrinsics (microkernel.py, vectors.py): plain Python that
runs while Numba lowers an intrinsic, so nothing of it is left at run time. One SIMD vector
type of a dtype with the LLVM intrinsics over it, counted loops built from phi nodes (their
loop-carried values, the accumulators, stay in registers), a switch over a small integer, and
the address of an array element as a typed pointer."""

from __future__ import annotations

import llvmlite.ir as ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .config import _VBYTES


class _VecIR:
    """One SIMD vector type of `dtype` (`_VBYTES` wide), the LLVM intrinsics over it, and the
    usual address and broadcast idioms."""

    def __init__(self, context, builder, dtype):
        self.context, self.builder = context, builder
        self.fty = context.get_value_type(dtype)
        self.isz = isz = context.get_abi_sizeof(self.fty)
        self.vl = vl = _VBYTES // isz
        self.vty = vty = ir.VectorType(self.fty, vl)
        self.i64, self.i32 = i64, i32 = ir.IntType(64), ir.IntType(32)
        self.sfx = f"v{vl}{'f32' if isz == 4 else 'f64'}"
        self.zero = ir.Constant(vty, [0.0] * vl)
        self.undef = ir.Constant(vty, ir.Undefined)
        self.bcast = ir.Constant(ir.VectorType(i32, vl), [0] * vl)   # shuffle mask: lane 0
        self.align = ir.Constant(i32, isz)
        self.lanes = ir.Constant(ir.VectorType(i64, vl), list(range(vl)))

    def _declare(self, name, ret, params):
        return cgutils.get_or_insert_function(self.builder.module,
                                              ir.FunctionType(ret, params), name)

    @property
    def fma(self):
        vty = self.vty
        return self._declare(f"llvm.fma.{self.sfx}", vty, [vty, vty, vty])

    @property
    def mload(self):
        vty, mty = self.vty, ir.VectorType(ir.IntType(1), self.vl)
        return self._declare(f"llvm.masked.load.{self.sfx}.p0{self.sfx}", vty,
                             [vty.as_pointer(), self.i32, mty, vty])

    @property
    def mstore(self):
        vty, mty = self.vty, ir.VectorType(ir.IntType(1), self.vl)
        return self._declare(f"llvm.masked.store.{self.sfx}.p0{self.sfx}", ir.VoidType(),
                             [vty, vty.as_pointer(), self.i32, mty])

    def ptr(self, arr, aty, off):
        """The address of arr[off] (arr: the value of a 1-D array of Numba type aty)."""
        data = cgutils.create_struct_proxy(aty)(self.context, self.builder, value=arr).data
        return self.builder.gep(data, [off])

    def vp(self, p, i):
        """p + i as a pointer to one vector."""
        return self.builder.bitcast(self.builder.gep(p, [i]), self.vty.as_pointer())

    def splat(self, x, vty=None):
        """A vector (of type vty, default the float vector) with x in every lane."""
        builder, vty = self.builder, vty or self.vty
        undef = ir.Constant(vty, ir.Undefined)
        return builder.shuffle_vector(
            builder.insert_element(undef, x, ir.Constant(self.i32, 0)), undef, self.bcast)

    def tail_mask(self, rest):
        """The lane mask of the first `rest` lanes."""
        return self.builder.icmp_signed(
            "<", self.lanes, self.splat(rest, ir.VectorType(self.i64, self.vl)))

    def load(self, p, i, mask=None):
        """The vector at p + i (masked lanes read as zero when `mask` is given)."""
        if mask is None:
            return self.builder.load(self.vp(p, i), align=self.isz)
        return self.builder.call(self.mload, [self.vp(p, i), self.align, mask, self.zero])

    def store(self, v, p, i, mask=None):
        """Store vector v at p + i (only the lanes of `mask` when it is given)."""
        if mask is None:
            self.builder.store(v, self.vp(p, i), align=self.isz)
        else:
            self.builder.call(self.mstore, [v, self.vp(p, i), self.align, mask])


def _open_loop(builder, entry, start, values):
    """Begin the body of a counted loop built from phi nodes, at the builder's position (the
    loop's first block): the counter, from `start`, and one phi per loop-carried value, from
    `values`, both flowing in from the block `entry`; returns (counter, phis)."""
    counter = builder.phi(start.type)
    counter.add_incoming(start, entry)
    phis = []
    for value in values:
        phi = builder.phi(value.type)
        phi.add_incoming(value, entry)
        phis.append(phi)
    return counter, phis


def _close_loop(builder, counter, phis, values, limit, again, exit_block, step=1):
    """End one iteration of a loop begun by _open_loop: counter + step and the phis' new
    `values` flow in from the current block; branch to `again` while the counter is below
    `limit`, else to `exit_block`; `step`: an int, or a value of the counter's type."""
    block = builder.block
    if isinstance(step, int):
        step = ir.Constant(counter.type, step)
    nxt = builder.add(counter, step)
    counter.add_incoming(nxt, block)
    for phi, value in zip(phis, values):
        phi.add_incoming(value, block)
    builder.cbranch(builder.icmp_signed("<", nxt, limit), again, exit_block)


def _exit_values(builder, entry, values, latch, new):
    """Phis, at the builder's position after a loop, of the loop-carried values: `values`
    when the loop was skipped (from `entry`), their last versions `new` from `latch`."""
    out = []
    for value, last in zip(values, new):
        phi = builder.phi(value.type)
        phi.add_incoming(value, entry)
        phi.add_incoming(last, latch)
        out.append(phi)
    return out


def _for(builder, begin, end, step, values, body):
    """for i in range(begin, end, step): values = body(i, values) -- a loop of phi nodes over
    the loop-carried `values` (a list; body returns their new versions), skipped when begin
    >= end. Returns the values after the loop."""
    entry = builder.block
    loop = builder.append_basic_block("for.body")
    after = builder.append_basic_block("for.end")
    builder.cbranch(builder.icmp_signed("<", begin, end), loop, after)
    builder.position_at_end(loop)
    i, phis = _open_loop(builder, entry, begin, values)
    new = body(i, phis)
    latch = builder.block
    _close_loop(builder, i, phis, new, end, loop, after, step=step)
    builder.position_at_end(after)
    return _exit_values(builder, entry, values, latch, new)


def _nested_loops(builder, n_outer, n_inner, values, outer, inner):
    """for a in range(n_outer): o = outer(a); for b in range(n_inner): values = inner(o, a, b,
    values) -- the loop-carried `values` (accumulators held in registers over the whole nest)
    flow through both loops as phi nodes; the nest is skipped when either count is not
    positive. Returns the values after it (the initial ones when it was skipped)."""
    c0 = ir.Constant(n_outer.type, 0)
    entry = builder.block
    head = builder.append_basic_block("nest.outer")
    body = builder.append_basic_block("nest.inner")
    latch = builder.append_basic_block("nest.outer_latch")
    done = builder.append_basic_block("nest.done")
    builder.cbranch(builder.and_(builder.icmp_signed(">", n_outer, c0),
                                 builder.icmp_signed(">", n_inner, c0)), head, done)
    builder.position_at_end(head)
    a, outer_values = _open_loop(builder, entry, c0, values)
    o = outer(a)
    builder.branch(body)
    builder.position_at_end(body)
    b, inner_values = _open_loop(builder, head, c0, outer_values)
    new = inner(o, a, b, inner_values)
    _close_loop(builder, b, inner_values, new, n_inner, body, latch)
    builder.position_at_end(latch)
    _close_loop(builder, a, outer_values, new, n_outer, head, done)
    builder.position_at_end(done)
    return _exit_values(builder, entry, values, latch, new)


def _switch(builder, selector, cases, emit):
    """Code for each value of `cases`, chosen by the run-time integer `selector` (nothing for
    another value): emit(value) generates the code of one case at the builder's position. A
    selector that is a constant where the intrinsic is used leaves one case after LLVM's
    simplification."""
    after = builder.append_basic_block("switch.after")
    switch = builder.switch(selector, after)
    for value in cases:
        block = builder.append_basic_block(f"switch.{value}")
        switch.add_case(ir.Constant(selector.type, value), block)
        builder.position_at_end(block)
        emit(value)
        builder.branch(after)
    builder.position_at_end(after)


@intrinsic
def _ptr(typingctx, arr, off):
    """The address of arr[off], as a typed pointer."""
    sig = types.CPointer(arr.dtype)(arr, types.intp)

    def codegen(context, builder, signature, args):
        data = cgutils.create_struct_proxy(signature.args[0])(context, builder, value=args[0])
        return builder.gep(data.data, [args[1]])

    return sig, codegen
