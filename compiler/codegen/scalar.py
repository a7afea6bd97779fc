"""Scalar semantics: LLVM types of the dtypes, and one scalar expression per elementwise op.

An elementwise op lowers to a loop nest whose body is `SCALAR_OPS[op](sc, *values)`: the
op on scalars, with no memory access. Keeping op semantics in pure expressions is what
later makes fusing chains of elementwise ops into one loop cheap.

Floating point follows numpy, not fast-math: no instruction carries nnan/ninf (NaN and
Inf propagate), and elementwise ops carry no flags at all, so +,-,*,/ round exactly as
numpy's do. Details:
- maximum/minimum use llvm.maximum/llvm.minimum, which propagate NaN as numpy.maximum
  does (llvm.maxnum would drop it). relu is maximum(x, 0), so relu(nan) = nan.
- comparisons are ordered (false on NaN) except `ne`, which is unordered (NaN != NaN).
- bool is an i8 holding 0 or 1; any non-zero byte reads as true.
- float -> int casts use llvm.fptosi.sat: defined for NaN and out-of-range values
  (numpy's result there is platform-defined; a plain fptosi would be poison).

Transcendentals:
- exp, log, log1p, tanh, sigmoid on float32/float64: inline branch-free expansions
  (compiler/codegen/vecmath.py: range reduction, a polynomial, 2^n by bit manipulation,
  selects for special values), within 2 ulp of the exact result. Unlike a libm call
  they vectorize, so elementwise loops over them become SIMD loops. `Scalar.intrinsic`
  routes "exp" and "log" there too, so reduction kernels (softmax, logsumexp) get them.
  PULLBACK_LIBM=1 in the environment selects the old path below instead (for
  comparison; the compile cache key does not include it, so use cache=False with it).
- sqrt, sin, cos, fabs, pow: LLVM intrinsics (llvm.sqrt ...). sqrt becomes an instruction;
  the rest lower to libm calls (sinf, sin, ...), correctly rounded to within 1 ulp.
- the old path: exp and log are LLVM intrinsics lowered to libm calls; tanh and log1p have
  no intrinsic, so libm's tanhf/tanh and log1pf/log1p; sigmoid is the stable formula of the
  reference (compiler/ops/elementwise.py): with e = exp(-|x|), 1/(1+e) for x >= 0 and
  e/(1+e) otherwise, so exp never overflows and both tails are accurate; NaN propagates.
  vecmath's sigmoid is the same formula on its exp.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from llvmlite import ir

from compiler.codegen import vecmath
from compiler.codegen.loops import I8

LLVM_TYPES: dict[str, ir.Type] = {
    "float32": ir.FloatType(), "float64": ir.DoubleType(), "int32": ir.IntType(32), "int64": ir.IntType(64),
    "bool": I8,
}
ITEMSIZE = {"float32": 4, "float64": 8, "int32": 4, "int64": 8, "bool": 1}
_SUFFIX = {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64", "bool": "i8"}
LIBM = {"tanh": ("tanhf", "tanh"), "log1p": ("log1pf", "log1p")}


def is_float(dtype: str) -> bool:
    return dtype in ("float32", "float64")


def function(module: ir.Module, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
    """The module's declaration of `name`, created on first use."""
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    return ir.Function(module, ir.FunctionType(ret, args), name=name)


@dataclass
class Scalar:
    """What a scalar rule needs: the builder, the module, operand dtypes and the result dtype."""

    b: ir.IRBuilder
    dtypes: tuple[str, ...]
    out_dtype: str
    attrs: dict

    @property
    def module(self) -> ir.Module:
        return self.b.module

    @property
    def dtype(self) -> str:
        return self.dtypes[0] if self.dtypes else self.out_dtype

    @property
    def type(self) -> ir.Type:
        return LLVM_TYPES[self.dtype]

    def const(self, value: float | int, dtype: str | None = None) -> ir.Constant:
        dtype = dtype or self.dtype
        if is_float(dtype):
            return ir.Constant(LLVM_TYPES[dtype], float(value))
        return ir.Constant(LLVM_TYPES[dtype], int(value))

    def intrinsic(self, name: str, *args: ir.Value, dtype: str | None = None) -> ir.Value:
        dtype = dtype or self.dtype
        if name in ("exp", "log") and is_float(dtype) and vecmath.enabled():
            return vecmath.FUNCTIONS[name](self.b, dtype, *args)  # inline, so callers' loops vectorize
        t = LLVM_TYPES[dtype]
        fn = function(self.module, f"llvm.{name}.{_SUFFIX[dtype]}", t, [t] * len(args))
        return self.b.call(fn, list(args))

    def libm(self, op: str, x: ir.Value) -> ir.Value:
        name = LIBM[op][0 if self.dtype == "float32" else 1]
        return self.b.call(function(self.module, name, self.type, [self.type]), [x])

    def truth(self, x: ir.Value) -> ir.Value:
        """An i1 from a bool byte."""
        return self.b.icmp_unsigned("!=", x, ir.Constant(I8, 0))

    def to_bool(self, bit: ir.Value) -> ir.Value:
        return self.b.zext(bit, I8)


Rule = Callable[..., ir.Value]
SCALAR_OPS: dict[str, Rule] = {}


def scalar(*names: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for name in names:
            SCALAR_OPS[name] = fn
        return fn

    return register


# ---------------------------------------------------------------------- math
def maximum(sc: Scalar, x: ir.Value, y: ir.Value) -> ir.Value:
    if is_float(sc.dtype):
        return sc.intrinsic("maximum", x, y)
    return sc.b.select(sc.b.icmp_signed(">", x, y), x, y)


def minimum(sc: Scalar, x: ir.Value, y: ir.Value) -> ir.Value:
    if is_float(sc.dtype):
        return sc.intrinsic("minimum", x, y)
    return sc.b.select(sc.b.icmp_signed("<", x, y), x, y)


def add(sc: Scalar, x: ir.Value, y: ir.Value, flags: tuple = ()) -> ir.Value:
    return sc.b.fadd(x, y, flags=flags) if is_float(sc.dtype) else sc.b.add(x, y)


def mul(sc: Scalar, x: ir.Value, y: ir.Value, flags: tuple = ()) -> ir.Value:
    return sc.b.fmul(x, y, flags=flags) if is_float(sc.dtype) else sc.b.mul(x, y)


def is_finite(sc: Scalar, x: ir.Value) -> ir.Value:
    return sc.b.fcmp_ordered("!=", sc.intrinsic("fabs", x), sc.const(float("inf")))


@scalar("neg")
def _neg(sc: Scalar, x: ir.Value) -> ir.Value:
    return sc.b.fneg(x) if is_float(sc.dtype) else sc.b.sub(sc.const(0), x)


for _name in ("sqrt", "sin", "cos"):
    scalar(_name)(lambda sc, x, _n=_name: sc.intrinsic(_n, x))


def _transcendental(name: str, old: Rule) -> Rule:
    def rule(sc: Scalar, x: ir.Value) -> ir.Value:
        if is_float(sc.dtype) and vecmath.enabled():
            return vecmath.FUNCTIONS[name](sc.b, sc.dtype, x)
        return old(sc, x)

    return rule


def _libm_sigmoid(sc: Scalar, x: ir.Value) -> ir.Value:
    b = sc.b
    e = sc.intrinsic("exp", b.fneg(sc.intrinsic("fabs", x)))
    denominator = b.fadd(sc.const(1.0), e)
    positive = b.fdiv(sc.const(1.0), denominator)
    negative = b.fdiv(e, denominator)
    return b.select(b.fcmp_ordered(">=", x, sc.const(0.0)), positive, negative)


for _name, _old in [("exp", lambda sc, x: sc.intrinsic("exp", x)), ("log", lambda sc, x: sc.intrinsic("log", x)),
                    ("tanh", lambda sc, x: sc.libm("tanh", x)), ("log1p", lambda sc, x: sc.libm("log1p", x)),
                    ("sigmoid", _libm_sigmoid)]:
    scalar(_name)(_transcendental(_name, _old))


@scalar("relu")
def _relu(sc: Scalar, x: ir.Value) -> ir.Value:
    return maximum(sc, x, sc.const(0))


@scalar("abs")
def _abs(sc: Scalar, x: ir.Value) -> ir.Value:
    if is_float(sc.dtype):
        return sc.intrinsic("fabs", x)
    return sc.b.select(sc.b.icmp_signed("<", x, sc.const(0)), sc.b.sub(sc.const(0), x), x)


@scalar("sign")
def _sign(sc: Scalar, x: ir.Value) -> ir.Value:
    b = sc.b
    zero, one, minus = sc.const(0), sc.const(1), sc.const(-1)
    if is_float(sc.dtype):
        # NaN and +-0 fall through to x itself, as numpy's sign returns them
        inner = b.select(b.fcmp_ordered("<", x, zero), minus, x)
        return b.select(b.fcmp_ordered(">", x, zero), one, inner)
    return b.select(b.icmp_signed(">", x, zero), one, b.select(b.icmp_signed("<", x, zero), minus, zero))


@scalar("square")
def _square(sc: Scalar, x: ir.Value) -> ir.Value:
    return mul(sc, x, x)


@scalar("add")
def _add(sc: Scalar, x: ir.Value, y: ir.Value) -> ir.Value:
    return add(sc, x, y)


@scalar("add_n")
def _add_n(sc: Scalar, *xs: ir.Value) -> ir.Value:
    total = xs[0]
    for x in xs[1:]:  # left to right, as the reference
        total = add(sc, total, x)
    return total


@scalar("sub")
def _sub(sc: Scalar, x: ir.Value, y: ir.Value) -> ir.Value:
    return sc.b.fsub(x, y) if is_float(sc.dtype) else sc.b.sub(x, y)


@scalar("mul")
def _mul(sc: Scalar, x: ir.Value, y: ir.Value) -> ir.Value:
    return mul(sc, x, y)


@scalar("div")
def _div(sc: Scalar, x: ir.Value, y: ir.Value) -> ir.Value:
    return sc.b.fdiv(x, y)


@scalar("pow")
def _pow(sc: Scalar, x: ir.Value, y: ir.Value) -> ir.Value:
    return sc.intrinsic("pow", x, y)


scalar("maximum")(maximum)
scalar("minimum")(minimum)

_COMPARE = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


def _comparison(op: str) -> Rule:
    def rule(sc: Scalar, x: ir.Value, y: ir.Value) -> ir.Value:
        if is_float(sc.dtype):
            bit = (sc.b.fcmp_unordered if op == "ne" else sc.b.fcmp_ordered)(_COMPARE[op], x, y)
        elif sc.dtype == "bool":
            bit = sc.b.icmp_unsigned(_COMPARE[op], sc.b.zext(sc.truth(x), I8), sc.b.zext(sc.truth(y), I8))
        else:
            bit = sc.b.icmp_signed(_COMPARE[op], x, y)
        return sc.to_bool(bit)

    return rule


for _op in _COMPARE:
    SCALAR_OPS[_op] = _comparison(_op)


@scalar("logical_and")
def _and(sc: Scalar, x: ir.Value, y: ir.Value) -> ir.Value:
    return sc.to_bool(sc.b.and_(sc.truth(x), sc.truth(y)))


@scalar("logical_or")
def _or(sc: Scalar, x: ir.Value, y: ir.Value) -> ir.Value:
    return sc.to_bool(sc.b.or_(sc.truth(x), sc.truth(y)))


@scalar("logical_not")
def _not(sc: Scalar, x: ir.Value) -> ir.Value:
    return sc.to_bool(sc.b.not_(sc.truth(x)))


@scalar("where")
def _where(sc: Scalar, c: ir.Value, x: ir.Value, y: ir.Value) -> ir.Value:
    return sc.b.select(sc.truth(c), x, y)


@scalar("stop_gradient", "copy")
def _identity(sc: Scalar, x: ir.Value) -> ir.Value:
    return x


@scalar("cast")
def _cast(sc: Scalar, x: ir.Value) -> ir.Value:
    return convert(sc.b, x, sc.dtype, sc.out_dtype)


def convert(b: ir.IRBuilder, x: ir.Value, source: str, target: str) -> ir.Value:
    """numpy's astype on one scalar."""
    if source == target:
        return x
    to = LLVM_TYPES[target]
    if target == "bool":
        if is_float(source):
            bit = b.fcmp_unordered("!=", x, ir.Constant(x.type, 0.0))  # NaN is truthy
        else:
            bit = b.icmp_unsigned("!=", x, ir.Constant(x.type, 0))
        return b.zext(bit, I8)
    if source == "bool":
        bit = b.icmp_unsigned("!=", x, ir.Constant(I8, 0))
        return b.uitofp(bit, to) if is_float(target) else b.zext(bit, to)
    if is_float(source) and is_float(target):
        return b.fpext(x, to) if target == "float64" else b.fptrunc(x, to)
    if is_float(target):
        return b.sitofp(x, to)
    if is_float(source):
        name = f"llvm.fptosi.sat.{_SUFFIX[target]}.{_SUFFIX[source]}"
        return b.call(function(b.module, name, to, [x.type]), [x])
    return b.sext(x, to) if to.width > x.type.width else b.trunc(x, to)
