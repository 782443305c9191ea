"""Expressions -> values: the pure part of the language, evaluated (never run as Python).

Values are numbers, strings, booleans, tuples, symbols (bare names such as `same` or `relu`
used as attribute values), tensors (a node's output) and settings calls in the train section
(`sgd(lr=0.1)`); values.py defines them. Arithmetic stays within the integer limit and
finite floats; each expression is a step of the elaboration's work (limits.py).

An expression may also apply layers: a chain (`x -> conv(8, 3)`), a call of an op or block,
an operator between tensors (`a + b`: the op that claims it, Op.infix). Those are the elaborator's (elaborate.py, a subclass), which
says which names are layers (`is_layer`) and builds their nodes.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

from . import ast as A
from ..errors import Pos, SpecError, did_you_mean
from ..ops import Op, format_shape, infix_op
from ..ops.base import channels, is_sequence
from .limits import Work, number_too_large
from .parser import MAX_INT
from .values import BUILTINS, SettingCall, Symbol, Tensor, plain, show

TENSOR_ATTRS = ("channels", "features", "height", "width", "tokens", "shape", "rank")


@dataclass
class Binding:
    value: object
    pos: Pos | None
    used: bool = False
    kind: str = "value"  # value | input | param


class Scope:
    """Names visible in a network or block body, and the outputs it declares.

    (Node naming lives on the elaborator: block frames plus assignment sub-scopes.)
    """

    def __init__(self, kind: str, name: str):
        self.kind = kind              # 'network' | 'block'
        self.name = name
        self.vars: dict[str, Binding] = {}
        self.outputs: list[Tensor] = []


class Evaluator:
    """Evaluates expressions in a Scope, counting each one as a step of `work`."""

    def __init__(self, work: Work):
        self.work = work

    # -- the layers an expression may apply: the elaborator's
    def is_layer(self, name: str) -> bool:
        """Whether `name` is an op or a block (a call of it applies a layer)."""
        raise NotImplementedError

    def eval_chain(self, e: A.Chain, scope: Scope):
        raise NotImplementedError

    def call(self, name: str, inputs: list, args: list, scope: Scope, label: str | None, pos):
        raise NotImplementedError

    def apply_infix(self, op: Op, tensors: list[Tensor], pos: Pos | None) -> Tensor:
        """The op's node over the tensors (`a + b`: add)."""
        raise NotImplementedError

    def unknown_layer(self, name: str, pos, scope: Scope) -> SpecError:
        raise NotImplementedError

    # -- expressions
    def eval(self, e, scope: Scope, settings: bool = False):
        self.work.step(e)
        t = type(e)
        if t is A.Const:
            if type(e.value) is int and e.value > MAX_INT:   # a literal: 10000000000000000000
                raise number_too_large(e.value, e.pos)
            return e.value
        if t is A.Name:
            return self.lookup(e, scope)
        if t is A.Chain:
            return self.eval_chain(e, scope)
        if t is A.Call:
            return self.eval_call(e, scope, settings)
        if t is A.Binary:
            return self.eval_binary(e, scope, settings)
        if t is A.Unary:
            v = self.eval(e.operand, scope, settings)
            if e.op == "not":
                return not self.truth(v, e.operand, scope)
            self.number(v, e.operand, scope, f"unary {e.op}")
            return -v if e.op == "-" else +v
        if t is A.Ternary:
            cond = self.truth(self.eval(e.cond, scope, settings), e.cond, scope)
            return self.eval(e.then if cond else e.orelse, scope, settings)
        if t is A.TupleExpr or t is A.ListExpr:
            return tuple(self.eval(x, scope, settings) for x in e.items)
        if t is A.GetAttr:
            return self.eval_getattr(e, scope)
        if t is A.ShapeLit:
            return e.dims
        raise SpecError(f"unexpected expression {t.__name__}", pos_of(e))  # pragma: no cover

    def lookup(self, e: A.Name, scope: Scope):
        b = scope.vars.get(e.id)
        if b is not None:
            b.used = True
            return b.value
        return Symbol(e.id, e.pos)

    def undefined(self, sym: Symbol, scope: Scope) -> SpecError:
        return SpecError(f"undefined name '{sym.name}'", sym.pos,
                         hint=did_you_mean(sym.name, scope.vars))

    def number(self, v, expr, scope: Scope, what: str):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            if isinstance(v, Symbol):
                raise self.undefined(v, scope)
            hint = None
            if isinstance(v, Tensor):
                hint = "tensors can be added (a + b); to repeat a layer write `-> layer * n`"
            raise SpecError(f"{what} needs a number, got {show(v)}", pos_of(expr), hint=hint)
        return v

    def truth(self, v, expr, scope: Scope) -> bool:
        if not isinstance(v, bool):
            if isinstance(v, Symbol):
                raise self.undefined(v, scope)
            raise SpecError(f"a condition must be true or false, got {show(v)}", pos_of(expr))
        return v

    def eval_getattr(self, e: A.GetAttr, scope: Scope):
        v = self.eval(e.value, scope)
        if isinstance(v, Symbol):
            raise self.undefined(v, scope)
        if not isinstance(v, Tensor):
            raise SpecError(f"'.{e.name}' needs a tensor, got {show(v)}", e.pos)
        s = v.shape
        if e.name in ("channels", "features"):
            return channels(s)
        if e.name in ("height", "width"):
            if len(s) != 3:
                raise SpecError(f"'.{e.name}' needs a feature map C@HxW, got {format_shape(s)}", e.pos)
            return s[1] if e.name == "height" else s[2]
        if e.name == "tokens":
            if not is_sequence(s):
                raise SpecError(f"'.tokens' needs a sequence TxF, got {format_shape(s)}", e.pos)
            return s[0]
        if e.name == "shape":
            return tuple(s)
        if e.name == "rank":
            return len(s)
        raise SpecError(f"a tensor has no '.{e.name}'", e.pos,
                        hint=did_you_mean(e.name, TENSOR_ATTRS) or
                        f"shape queries: {', '.join('.' + a for a in TENSOR_ATTRS)}")

    _ARITH = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
              "//": operator.floordiv, "%": operator.mod}
    _COMPARE = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
                ">": operator.gt, ">=": operator.ge}

    def eval_binary(self, e: A.Binary, scope: Scope, settings: bool):
        if e.op == "and":
            return self.truth(self.eval(e.left, scope, settings), e.left, scope) and \
                self.truth(self.eval(e.right, scope, settings), e.right, scope)
        if e.op == "or":
            return self.truth(self.eval(e.left, scope, settings), e.left, scope) or \
                self.truth(self.eval(e.right, scope, settings), e.right, scope)
        op = infix_op(e.op)
        if op is not None:
            return self.eval_infix(op, e, scope, settings)
        left = self.eval(e.left, scope, settings)
        right = self.eval(e.right, scope, settings)
        if e.op in self._COMPARE:
            for v in (left, right):
                if isinstance(v, Tensor):
                    raise SpecError("tensors cannot be compared; compare their shapes "
                                    "(x.channels, x.height, x.shape)", e.pos)
            left, right = plain(left), plain(right)
            try:
                return self._COMPARE[e.op](left, right)
            except TypeError:
                raise SpecError(f"cannot compare {show(left)} {e.op} {show(right)}", e.pos) from None
        return self.arith(e.op, left, right, e.left, e.right, e, scope)

    def eval_infix(self, op: Op, e: A.Binary, scope: Scope, settings: bool):
        """`a + b + c` (an operator an op claims, Op.infix): of numbers, arithmetic left to
        right; of tensors, the op's node over all of them (an op of any number of inputs) or
        nested nodes left to right. A chain is evaluated in linear time, however long."""
        operands = flatten_chain(e)
        values = [self.eval(x, scope, settings) for x in operands]
        if not any(isinstance(v, Tensor) for v in values):
            total = values[0]
            for v, x in zip(values[1:], operands[1:]):
                total = self.arith(e.op, total, v, operands[0], x, e, scope)
            return total
        for v, x in zip(values, operands):
            if not isinstance(v, Tensor):
                if isinstance(v, Symbol):
                    raise self.undefined(v, scope)
                raise SpecError(f"cannot {op.name} a tensor and {show(v)}", pos_of(x))
        if op.max_inputs is None:
            return self.apply_infix(op, values, e.pos)
        total = values[0]
        for v in values[1:]:
            total = self.apply_infix(op, [total, v], e.pos)
        return total

    def arith(self, op, left, right, lexpr, rexpr, e, scope):
        self.number(left, lexpr, scope, f"'{op}'")
        self.number(right, rexpr, scope, f"'{op}'")
        if op in ("/", "//", "%") and right == 0:
            raise SpecError("division by zero", e.pos)
        result = self._ARITH[op](left, right)
        if isinstance(result, float) and not math.isfinite(result):
            raise SpecError("arithmetic overflow", e.pos)
        if isinstance(result, int) and abs(result) > MAX_INT:
            raise number_too_large(result, e.pos)
        return result

    def eval_call(self, e: A.Call, scope: Scope, settings: bool):
        if self.is_layer(e.name):
            return self.call(e.name, [], e.args, scope, None, e.pos)
        if e.name in BUILTINS:
            args = [self.eval(a.value, scope) for a in e.args]
            if any(a.name for a in e.args):
                raise SpecError(f"{e.name}() takes no keyword arguments", e.pos)
            try:
                result = BUILTINS[e.name](*args)
            except (TypeError, ValueError, OverflowError):
                raise SpecError(f"bad arguments to {e.name}(): "
                                f"{', '.join(show(a) for a in args)}", e.pos) from None
            if isinstance(result, int) and abs(result) > MAX_INT:   # int(1e30)
                raise number_too_large(result, e.pos)
            return result
        if settings:
            args, kwargs = [], []
            for a in e.args:
                v = self.eval(a.value, scope, settings=True)
                if a.name is None:
                    args.append(v)
                else:
                    kwargs.append((a.name, v))
            return SettingCall(e.name, tuple(args), tuple(kwargs), e.pos)
        raise self.unknown_layer(e.name, e.pos, scope)


def flatten_chain(e: A.Binary):
    """a + b + c (parsed ((a + b) + c)) -> [a, b, c], in linear time: the operands of a chain
    of e's operator."""
    rights, operator_ = [], e.op
    while isinstance(e, A.Binary) and e.op == operator_:
        rights.append(e.right)
        e = e.left
    return [e, *reversed(rights)]


def pos_of(e):
    return getattr(e, "pos", None)
