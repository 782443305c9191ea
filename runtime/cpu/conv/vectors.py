"""Element-wise loops of any length as explicit SIMD code (Numba intrinsics generating LLVM IR):
full vectors, then one masked vector for the tail. LLVM's own vectorised loops run short trip
counts, like a 28-wide output row, in their scalar remainder.

- `_vcopy`, `_vaxpy`, `_vmuladd`, `_vdot`: one vector loop each (direct.py, planar.py, the
  col2im of im2col.py, the restacked input of implicit.py);
- `_vconv`: a small 2-D correlation along one flat plane into up to 6 output planes at once,
  register-blocked over all taps (planar.py);
- `_planes_to_channels`: planes to channel-last order by vector shuffles (planar.py).
"""

from __future__ import annotations

import llvmlite.ir as ir
from numba import types
from numba.extending import intrinsic

from .codegen import _for, _nested_loops, _switch, _VecIR
from .config import _SHUFFLE_MAX_CHANNELS, _VCONV_BLOCKS


def _make_vloop(kind):
    """kind "copy":   d[d_off + i] = x[x_off + i]                   (i < n)
       kind "axpy":   d[d_off + i] += s * x[x_off + i]
       kind "muladd": d[d_off + i] += x[x_off + i] * z[z_off + i]
       kind "dot":    d[d_off + l] += sum over i = l (mod VL) of x[x_off + i] * z[z_off + i]
                      (l < VL: lane-wise partial sums, VL = one SIMD vector of the dtype)"""

    @intrinsic
    def vloop(typingctx, d, d_off, s, x, x_off, z, z_off, n):
        ip = types.intp
        sig = types.void(d, ip, d.dtype, x, ip, z, ip, ip)

        def codegen(context, builder, signature, args):
            d_arr, d_off, s, x_arr, x_off, z_arr, z_off, n = args
            g = _VecIR(context, builder, signature.args[0].dtype)
            isz, vl, vty, i64, zero, fma = g.isz, g.vl, g.vty, g.i64, g.zero, g.fma
            pd = g.ptr(d_arr, signature.args[0], d_off)
            px = g.ptr(x_arr, signature.args[3], x_off)
            pz = g.ptr(z_arr, signature.args[5], z_off)
            splat = g.splat(s)

            def step(i, acc, mask):
                """One vector at element i (masked when `mask` is not None); returns acc."""
                def load(p):
                    return g.load(p, i, mask)

                if kind == "copy":
                    new = load(px)
                elif kind == "axpy":
                    new = builder.call(fma, [splat, load(px), load(pd)])
                elif kind == "muladd":
                    new = builder.call(fma, [load(px), load(pz), load(pd)])
                else:
                    return builder.call(fma, [load(px), load(pz), acc])
                g.store(new, pd, i, mask)
                return acc

            # full vectors
            nfull = builder.sub(n, builder.srem(n, ir.Constant(i64, vl)))
            (acc_t,) = _for(builder, ir.Constant(i64, 0), nfull, vl, [zero],
                            lambda i, accs: [step(i, accs[0], None)])
            # the masked tail
            tail = builder.block
            rest = builder.sub(n, nfull)
            mask = g.tail_mask(rest)
            with builder.if_then(builder.icmp_signed(">", rest, ir.Constant(i64, 0))):
                acc_m = step(nfull, acc_t, mask)
                if kind == "dot":
                    tail_blk = builder.block
            if kind == "dot":
                total = builder.phi(vty)
                total.add_incoming(acc_t, tail)
                total.add_incoming(acc_m, tail_blk)
                p = g.vp(pd, ir.Constant(i64, 0))
                builder.store(builder.fadd(builder.load(p, align=isz), total), p, align=isz)
            return context.get_dummy_value()

        return sig, codegen

    return vloop


_vcopy = _make_vloop("copy")
_vaxpy = _make_vloop("axpy")
_vmuladd = _make_vloop("muladd")
_vdot = _make_vloop("dot")


def _emit_vconv(g, NO, unroll, args, argtys):
    """The code of _vconv for NO outputs, `unroll` vectors of each at a time (args, argtys:
    its arguments after NO and their Numba types)."""
    builder = g.builder
    (d_arr, d_off, d_step, s_arr, s_off, s_step, x_arr, x_off, x_step_h, x_step_w, th, tw,
     n) = args
    vl, i64, fma = g.vl, g.i64, g.fma
    pd = g.ptr(d_arr, argtys[0], d_off)
    ps = g.ptr(s_arr, argtys[3], s_off)
    px = g.ptr(x_arr, argtys[6], x_off)
    c0 = ir.Constant(i64, 0)
    dofs = [builder.mul(ir.Constant(i64, j), d_step) for j in range(NO)]

    def block(i, count, mask):
        """d[j, i : i + count*vl] += the taps (one vector, masked, when `mask` is given)."""
        def load(p, j):
            return g.load(p, j, mask)

        offs = [builder.add(i, ir.Constant(i64, u * vl)) for u in range(count)]
        doffs = [builder.add(dj, o) for dj in dofs for o in offs]   # (j, u) order
        acc0 = [load(pd, o) for o in doffs]

        def tap(_, a, b, accs):
            t = builder.add(builder.mul(a, tw), b)
            ts = builder.mul(t, s_step)
            xo = builder.add(builder.mul(a, x_step_h), builder.mul(b, x_step_w))
            xv = [load(px, builder.add(xo, o)) for o in offs]
            new = []
            for j in range(NO):
                sv = g.splat(builder.load(builder.gep(ps, [builder.add(ts, ir.Constant(i64, j))])))
                new += [builder.call(fma, [sv, v, acc])
                        for v, acc in zip(xv, accs[j * count:(j + 1) * count])]
            return new

        totals = _nested_loops(builder, th, tw, acc0, lambda a: None, tap)
        for o, total in zip(doffs, totals):
            g.store(total, pd, o, mask)

    def vector_loop(begin, end, count):
        """for i in range(begin, end, count*vl): block(i, count)."""
        def body(i, _):
            block(i, count, None)
            return []

        _for(builder, begin, end, count * vl, [], body)

    n_full = builder.sub(n, builder.srem(n, ir.Constant(i64, vl)))
    if unroll > 1:
        n_unrolled = builder.sub(n, builder.srem(n, ir.Constant(i64, unroll * vl)))
        vector_loop(c0, n_unrolled, unroll)
        vector_loop(n_unrolled, n_full, 1)
    else:
        vector_loop(c0, n_full, 1)
    rest = builder.sub(n, n_full)
    mask = g.tail_mask(rest)
    with builder.if_then(builder.icmp_signed(">", rest, c0)):
        block(n_full, 1, mask)


@intrinsic
def _vconv(typingctx, NO, d, d_off, d_step, s, s_off, s_step, x, x_off, x_step_h, x_step_w,
           th, tw, n):
    """d[d_off + j*d_step + i] += sum over a < th, b < tw of
           s[s_off + j + (a*tw + b)*s_step] * x[x_off + a*x_step_h + b*x_step_w + i]
    for j < NO, i < n: a small 2-D correlation along one flat plane into NO output planes at
    once, NO one of the block sizes of `_VCONV_BLOCKS` (nothing for another). Vectors of d
    are loaded and stored once for all th*tw taps, a block's vectors of each of the NO outputs
    at a time (NO*unroll independent FMA chains, every shifted vector of x loaded once for the
    NO outputs), then single vectors, then a masked tail."""
    ip = types.intp
    sig = types.void(ip, d, ip, ip, s, ip, ip, x, ip, ip, ip, ip, ip, ip)

    def codegen(context, builder, signature, args):
        g = _VecIR(context, builder, signature.args[1].dtype)
        unroll = dict(_VCONV_BLOCKS)
        _switch(builder, args[0], unroll,
                lambda NO: _emit_vconv(g, NO, unroll[NO], args[1:], signature.args[1:]))
        return context.get_dummy_value()

    return sig, codegen


def _emit_interleave(g, O, args, argtys):
    """The code of _planes_to_channels for O planes (args, argtys: its arguments but O, and
    their Numba types)."""
    builder = g.builder
    d_arr, d_off, s_arr, s_off, s_step, n = args
    vl, i64, i32 = g.vl, g.i64, g.i32
    pd = g.ptr(d_arr, argtys[0], d_off)
    ps = g.ptr(s_arr, argtys[2], s_off)
    c0 = ir.Constant(i64, 0)
    soffs = [builder.mul(ir.Constant(i64, o), s_step) for o in range(O)]

    def chunk(i, rest):
        """Pixels i .. i + vl (only `rest` of them when rest is not None)."""
        mask = None if rest is None else g.tail_mask(rest)
        src = [g.load(ps, builder.add(so, i), mask) for so in soffs]
        for k in range(O):
            # lane e of output vector k: pixel (k*vl + e) // O, channel (k*vl + e) % O
            lanes = [((k * vl + e) % O, (k * vl + e) // O) for e in range(vl)]
            used = sorted({o for o, _ in lanes})
            vty_i = ir.VectorType(i32, vl)
            v = builder.shuffle_vector(src[used[0]], g.undef, ir.Constant(
                vty_i, [q if c == used[0] else 0 for c, q in lanes]))
            have = {used[0]}
            for o in used[1:]:      # fold in the other sources, placed lanes kept
                v = builder.shuffle_vector(v, src[o], ir.Constant(vty_i, [
                    vl + q if c == o else (e if c in have else 0)
                    for e, (c, q) in enumerate(lanes)]))
                have.add(o)
            off = builder.add(builder.mul(i, ir.Constant(i64, O)), ir.Constant(i64, k * vl))
            if rest is None:
                g.store(v, pd, off)
            else:                       # the first rest*O - k*vl lanes
                left = builder.sub(builder.mul(rest, ir.Constant(i64, O)),
                                   ir.Constant(i64, k * vl))
                with builder.if_then(builder.icmp_signed(">", left, c0)):
                    g.store(v, pd, off, g.tail_mask(left))

    n_full = builder.sub(n, builder.srem(n, ir.Constant(i64, vl)))

    def body(i, _):
        chunk(i, None)
        return []

    _for(builder, c0, n_full, vl, [], body)
    rest = builder.sub(n, n_full)
    with builder.if_then(builder.icmp_signed(">", rest, c0)):
        chunk(n_full, rest)


@intrinsic
def _planes_to_channels(typingctx, d, d_off, s, s_off, s_step, n, O):
    """d[d_off + i*O + o] = s[s_off + o*s_step + i] for i < n, o < O (2 <= O <=
    _SHUFFLE_MAX_CHANNELS; nothing for another O): O planes to channel-last order, vl pixels
    at a time (O vector loads, O vector stores, the lanes moved by shuffles), then a masked
    tail."""
    ip = types.intp
    sig = types.void(d, ip, s, ip, ip, ip, ip)

    def codegen(context, builder, signature, args):
        g = _VecIR(context, builder, signature.args[0].dtype)
        _switch(builder, args[6], range(2, _SHUFFLE_MAX_CHANNELS + 1),
                lambda O: _emit_interleave(g, O, args[:6], signature.args[:6]))
        return context.get_dummy_value()

    return sig, codegen
