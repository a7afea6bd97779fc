"""Branch-free exp, log, log1p, tanh and sigmoid as inline LLVM IR, so elementwise loops vectorize.

A call to libm's expf/tanhf in a loop body stops LLVM's loop vectorizer (there is no
vector variant to call), and the call itself dominates tanh/sigmoid-heavy steps. These
expansions use only arithmetic, llvm.fmuladd, bitcasts, integer shifts and selects, each
of which has a SIMD form, so `emit_elementwise`'s loops become vector loops.

Methods (the classic ones, as in Cephes/fdlibm/SLEEF; coefficients fitted for this file):
- exp: x = n ln2 + r with |r| <= ln2/2 (n by the round-to-integer shift trick, r by a
  Cody-Waite two-part ln2 whose high part has trailing zeros, so n * ln2_hi is exact);
  exp(r) = 1 + r + r^2 Q(r), with 1 + r split exactly into head + tail so the sum is
  rounded once; 2^n by building the exponent field, applied as two factors 2^(n//2)
  2^(n - n//2): both stay normal over the whole clamped input range, so overflow gives
  inf and denormal results come out right with no special case. Inputs are clamped
  (NaN passes through the ordered compares) to keep n small.
- expm1 (for tanh, x >= 0 only): 2^n expm1(r) + (2^n - 1), one rounding, no cancellation.
- tanh: below |x| = 0.55 (tanh < 1/2) an odd polynomial x + x^3 P(x^2); above,
  1 - 2 / (expm1(2|x|) + 2); |x| clamped where tanh rounds to 1; the sign by copysign.
- log: x = 2^k m with m in [sqrt(1/2), sqrt(2)) by integer arithmetic on the bits
  (denormals scaled by 2^p first); with f = m - 1, s = f / (2 + f):
  log(1 + f) = f - (f^2/2 - s (f^2/2 + R(s^2))) (fdlibm's form: the leading f is exact);
  result k ln2_hi + (... + k ln2_lo).
- log1p: the same on u = 1 + x, plus the rounding correction c/u with c = (1 + x) - u;
  when k == 0 it uses f = x itself, so tiny x is exact.
- sigmoid: the reference's stable form on e = exp(-|x|) (1/(1+e) or e/(1+e)), with one
  division, corrected for the rounding of 1 + e.

Special values are fixed with selects after the core (inf, NaN, 0, negative, -0).
Accuracy (tests/codegen/test_vecmath.py, against float64 / long double references), in
ulps, float32 and float64 alike, with or without FMA: exp 0.84, log 0.82, log1p 0.81,
tanh 1.45, sigmoid 1.83 (libm: tanhf 2.09; the old sigmoid on expf 2.14).

llvm.fmuladd lets the backend fuse multiply-adds where the CPU has FMA (vfmadd...); every
step is written to stay accurate when it does not (FUSED = False emits fmul + fadd, and
the tests run both). PULLBACK_LIBM=1 in the environment selects the old libm / LLVM
intrinsic path (read at IR emission; the compile cache key does not include it, so pass
cache=False or set PULLBACK_NO_CACHE=1 when comparing).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from llvmlite import ir

FUSED = True  # emit llvm.fmuladd (fused where the CPU has FMA); False: fmul + fadd


def enabled() -> bool:
    """False when PULLBACK_LIBM asks for the libm path (for comparisons and as an escape hatch)."""
    return os.environ.get("PULLBACK_LIBM", "").strip().lower() not in ("1", "true", "yes")


def _f(hex_text: str) -> float:
    return float.fromhex(hex_text)


@dataclass(frozen=True)
class _Format:
    """Constants of one floating-point format."""

    float_type: ir.Type
    int_type: ir.Type
    suffix: str
    mant_bits: int
    bias: int
    shift: float  # 1.5 * 2^mant_bits: adding it rounds to an integer in the low bits
    log2e: float
    ln2_hi: float  # trailing zero bits: k * ln2_hi is exact for every exponent k in range
    ln2_lo: float
    exp_lo: float  # exp clamps its input into [exp_lo, exp_hi]: below, the result is 0
    exp_hi: float  # (after rounding); above, inf; 2^(n/2) stays normal in between
    tanh_max: float  # tanh(x) rounds to 1 for x >= tanh_max
    min_normal: float
    exp_q: tuple[float, ...]  # Q(r) ~ (e^r - 1 - r) / r^2 on |r| <= 1.01 ln2/2
    log_w: tuple[float, ...]  # W(z) ~ (2 atanh(sqrt z) / sqrt z - 2) / z on z <= 1.01 (3 - 2 sqrt 2)^2
    tanh_p: tuple[float, ...]  # P(z) ~ (tanh(x) - x) / x^3, z = x^2 on |x| <= TANH_SMALL


# Coefficients: Chebyshev-node interpolation in exact rational arithmetic, rounded to the
# format. Fit errors (relative, in Q / W): exp float32 1.4e-7, float64 2.6e-16;
# log float32 3.0e-7, float64 5.3e-16; they enter the results scaled by <= 0.09 and
# <= 0.01, far below half an ulp.
F32 = _Format(
    ir.FloatType(), ir.IntType(32), "f32", 23, 127, 12582912.0, _f("0x1.715476p+0"),
    _f("0x1.62e400p-1"), _f("0x1.7f7d1cp-20"), -110.0, 100.0, 10.0, _f("0x1p-126"),
    exp_q=tuple(map(_f, ["0x1.000000p-1", "0x1.5554d8p-3", "0x1.555516p-5", "0x1.12106cp-7", "0x1.6d1606p-10"])),
    log_w=tuple(map(_f, ["0x1.55555cp-1", "0x1.997b96p-2", "0x1.2f013ep-2"])),
    tanh_p=tuple(map(_f, ["-0x1.555554p-2", "0x1.110feap-3", "-0x1.b9a044p-5", "0x1.5d220ep-6", "-0x1.b13538p-8"])),
)
F64 = _Format(
    ir.DoubleType(), ir.IntType(64), "f64", 52, 1023, 6755399441055744.0, _f("0x1.71547652b82fep+0"),
    _f("0x1.62e42fefa3800p-1"), _f("0x1.ef35793c76730p-45"), -760.0, 720.0, 20.0, _f("0x1p-1022"),
    exp_q=tuple(map(_f, [
        "0x1.0000000000001p-1", "0x1.5555555555556p-3", "0x1.5555555553b6cp-5", "0x1.1111111110918p-7",
        "0x1.6c16c1794e1dcp-10", "0x1.a01a01a83ba17p-13", "0x1.a019b621f9d08p-16", "0x1.71de0be2b5e96p-19",
        "0x1.2894f52583578p-22", "0x1.af3ce42b12b25p-26"])),
    log_w=tuple(map(_f, [
        "0x1.5555555555558p-1", "0x1.9999999994e76p-2", "0x1.2492492e6dfddp-2", "0x1.c71c6247410e3p-3",
        "0x1.7462e17b4cdd0p-3", "0x1.39f8963ccbdc2p-3", "0x1.2b9f7fb3de73fp-3"])),
    tanh_p=tuple(map(_f, [
        "-0x1.5555555555555p-2", "0x1.1111111111032p-3", "-0x1.ba1ba1b9fec84p-5", "0x1.664f487713373p-6",
        "-0x1.226e32f00cf0cp-7", "0x1.d6d339333f329p-9", "-0x1.7d97cfd138c28p-10", "0x1.34c5a8a996cd4p-11",
        "-0x1.ec1091436eb2ap-13", "0x1.64fd88e9900a4p-14", "-0x1.59a834187ce21p-16"])),
)
FORMATS = {"float32": F32, "float64": F64}
TANH_SMALL = 0.55  # below (tanh < 1/2), an odd polynomial; above, 1 - 2 / (expm1(2|x|) + 2)
# the bits of sqrt(1/2): log subtracts them before splitting exponent and mantissa, so m lands in [sqrt(1/2), sqrt(2))
_SQRT_HALF_BITS = {"float32": 0x3F3504F3, "float64": 0x3FE6A09E667F3BCD}


class _Emit:
    """Typed helpers over an IRBuilder for one format."""

    def __init__(self, b: ir.IRBuilder, dtype: str):
        self.b, self.fmt, self.dtype = b, FORMATS[dtype], dtype

    def c(self, value: float) -> ir.Constant:
        return ir.Constant(self.fmt.float_type, value)

    def i(self, value: int) -> ir.Constant:
        return ir.Constant(self.fmt.int_type, value)

    def call(self, name: str, *args: ir.Value) -> ir.Value:
        t = self.fmt.float_type
        module = self.b.module
        full = f"llvm.{name}.{self.fmt.suffix}"
        fn = module.globals.get(full) or ir.Function(module, ir.FunctionType(t, [t] * len(args)), name=full)
        return self.b.call(fn, list(args))

    def fma(self, x: ir.Value, y: ir.Value, z: ir.Value) -> ir.Value:
        if FUSED:
            return self.call("fmuladd", x, y, z)
        return self.b.fadd(self.b.fmul(x, y), z)

    def poly(self, x: ir.Value, coeffs: tuple[float, ...]) -> ir.Value:
        """Horner: coeffs[0] + coeffs[1] x + ..."""
        acc = self.c(coeffs[-1])
        for coefficient in reversed(coeffs[:-1]):
            acc = self.fma(acc, x, self.c(coefficient))
        return acc

    def bits(self, x: ir.Value) -> ir.Value:
        return self.b.bitcast(x, self.fmt.int_type)

    def from_bits(self, n: ir.Value) -> ir.Value:
        return self.b.bitcast(n, self.fmt.float_type)

    def pow2(self, n: ir.Value) -> ir.Value:
        """2^n for an integer n in the normal exponent range."""
        return self.from_bits(self.b.shl(self.b.add(n, self.i(self.fmt.bias)), self.i(self.fmt.mant_bits)))

    def int_to_float(self, n: ir.Value) -> ir.Value:
        """float(n) for |n| < 2^(mant_bits - 1), by the shift trick (no i64 -> f64 conversion needed)."""
        shift = self.c(self.fmt.shift)
        return self.b.fsub(self.from_bits(self.b.add(self.bits(shift), n)), shift)

    def clamp(self, x: ir.Value, lo: float | None, hi: float | None) -> ir.Value:
        """Ordered compares: NaN passes through unchanged."""
        if lo is not None:
            x = self.b.select(self.b.fcmp_ordered("<", x, self.c(lo)), self.c(lo), x)
        if hi is not None:
            x = self.b.select(self.b.fcmp_ordered(">", x, self.c(hi)), self.c(hi), x)
        return x

    def lt(self, x: ir.Value, value: float) -> ir.Value:
        return self.b.fcmp_ordered("<", x, self.c(value))

    def eq(self, x: ir.Value, value: float) -> ir.Value:
        return self.b.fcmp_ordered("==", x, self.c(value))


# ---------------------------------------------------------------- exp family
def _reduce_exp(e: _Emit, x: ir.Value) -> tuple[ir.Value, ir.Value]:
    """(n as an integer, r) with x = n ln2 + r, |r| <= ln2/2 (x already clamped)."""
    b, fmt = e.b, e.fmt
    shift = e.c(fmt.shift)
    z = b.fadd(b.fmul(x, e.c(fmt.log2e)), shift)  # rounds x/ln2 to an integer
    n_float = b.fsub(z, shift)
    n = b.sub(e.bits(z), e.bits(shift))
    r = e.fma(n_float, e.c(-fmt.ln2_hi), x)  # exact: n * ln2_hi has trailing zeros
    r = e.fma(n_float, e.c(-fmt.ln2_lo), r)
    return n, r


def _expm1_reduced(e: _Emit, r: ir.Value) -> ir.Value:
    """expm1(r) = r + r^2 Q(r) for |r| <= ln2/2."""
    return e.fma(e.b.fmul(r, r), e.poly(r, e.fmt.exp_q), r)


def exp(b: ir.IRBuilder, dtype: str, x: ir.Value) -> ir.Value:
    e = _Emit(b, dtype)
    fmt = e.fmt
    n, r = _reduce_exp(e, e.clamp(x, fmt.exp_lo, fmt.exp_hi))
    one = e.c(1.0)
    # exp(r) = 1 + r + r^2 Q(r) with 1 + r = head + tail exactly (Fast2Sum), so the sum is rounded once
    head = b.fadd(one, r)
    tail = e.fma(b.fmul(r, r), e.poly(r, fmt.exp_q), b.fadd(b.fsub(one, head), r))
    half = b.ashr(n, e.i(1))
    scale = e.pow2(half)
    # 2^h head + 2^h tail: both products exact, one rounding; times 2^(n-h) exact unless denormal
    return b.fmul(e.fma(scale, tail, b.fmul(scale, head)), e.pow2(b.sub(n, half)))


def _expm1_nonnegative(e: _Emit, x: ir.Value) -> ir.Value:
    """expm1(x) for 0 <= x <= 2 tanh_max (2^n stays normal)."""
    n, r = _reduce_exp(e, x)
    scale = e.pow2(n)
    return e.fma(scale, _expm1_reduced(e, r), e.b.fsub(scale, e.c(1.0)))  # scale * q is exact


def tanh(b: ir.IRBuilder, dtype: str, x: ir.Value) -> ir.Value:
    e = _Emit(b, dtype)
    a = e.clamp(e.call("fabs", x), None, e.fmt.tanh_max)
    em = _expm1_nonnegative(e, b.fadd(a, a))
    large = b.fsub(e.c(1.0), b.fdiv(e.c(2.0), b.fadd(em, e.c(2.0))))
    z = b.fmul(a, a)
    small = e.fma(b.fmul(a, z), e.poly(z, e.fmt.tanh_p), a)  # a + a^3 P(a^2)
    return e.call("copysign", b.select(e.lt(a, TANH_SMALL), small, large), x)


def sigmoid(b: ir.IRBuilder, dtype: str, x: ir.Value) -> ir.Value:
    e = _Emit(b, dtype)
    one = e.c(1.0)
    ex = exp(b, dtype, b.fneg(e.call("fabs", x)))
    d = b.fadd(one, ex)
    d_error = b.fadd(b.fsub(one, d), ex)  # 1 + ex = d + d_error exactly (Fast2Sum: 1 >= ex)
    nonnegative = b.fcmp_ordered(">=", x, e.c(0.0))
    q = b.fdiv(b.select(nonnegative, one, ex), d)
    # divide by d + d_error, not d: q (1 - d_error / d), with 1/d = q or 1 - q (q = ex/d)
    inverse_d = b.select(nonnegative, q, b.fsub(one, q))
    return e.fma(b.fneg(b.fmul(q, inverse_d)), d_error, q)


# ---------------------------------------------------------------- log family
def _split(e: _Emit, x: ir.Value) -> tuple[ir.Value, ir.Value]:
    """(k as an integer, m) with x = 2^k m, m in [sqrt(1/2), sqrt(2)); x positive and normal."""
    b, fmt = e.b, e.fmt
    offset = e.i(_SQRT_HALF_BITS[e.dtype])
    ix = b.sub(e.bits(x), offset)
    k = b.ashr(ix, e.i(fmt.mant_bits))
    m = e.from_bits(b.add(b.and_(ix, e.i((1 << fmt.mant_bits) - 1)), offset))
    return k, m


def _log1p_reduced(e: _Emit, f: ir.Value, k_float: ir.Value, low: ir.Value | None) -> ir.Value:
    """k ln2 + log(1 + f) (+ low, a small correction) for f in [sqrt(1/2) - 1, sqrt(2) - 1)."""
    b, fmt = e.b, e.fmt
    s = b.fdiv(f, b.fadd(e.c(2.0), f))
    z = b.fmul(s, s)
    big_r = b.fmul(z, e.poly(z, fmt.log_w))
    hfsq = b.fmul(b.fmul(e.c(0.5), f), f)
    tail = b.fmul(k_float, e.c(fmt.ln2_lo))
    if low is not None:
        tail = b.fadd(tail, low)
    tail = b.fadd(b.fmul(s, b.fadd(hfsq, big_r)), tail)
    return b.fsub(b.fmul(k_float, e.c(fmt.ln2_hi)), b.fsub(b.fsub(hfsq, tail), f))


def log(b: ir.IRBuilder, dtype: str, x: ir.Value) -> ir.Value:
    e = _Emit(b, dtype)
    fmt = e.fmt
    tiny = e.lt(x, fmt.min_normal)  # denormals: scale into the normal range first
    scaled = b.select(tiny, b.fmul(x, e.c(2.0 ** fmt.mant_bits)), x)
    k, m = _split(e, scaled)
    k = b.sub(k, b.select(tiny, e.i(fmt.mant_bits), e.i(0)))
    core = _log1p_reduced(e, b.fsub(m, e.c(1.0)), e.int_to_float(k), None)
    special = b.select(e.eq(x, 0.0), e.c(float("-inf")), b.select(e.lt(x, 0.0), e.c(float("nan")), x))
    ok = b.and_(b.fcmp_ordered(">", x, e.c(0.0)), e.lt(x, float("inf")))
    return b.select(ok, core, special)


def log1p(b: ir.IRBuilder, dtype: str, x: ir.Value) -> ir.Value:
    e = _Emit(b, dtype)
    one = e.c(1.0)
    u = b.fadd(one, x)
    k, m = _split(e, u)
    zero_k = b.icmp_signed("==", k, e.i(0))
    f = b.select(zero_k, x, b.fsub(m, one))  # k == 0: x itself is the exact f
    # (1 + x) - u, the rounding error of u, exactly
    # (Sterbenz: u - x is exact once x >= 1, u - 1 while x < 1)
    error = b.select(b.fcmp_ordered(">=", x, one), b.fsub(one, b.fsub(u, x)), b.fsub(x, b.fsub(u, one)))
    correction = b.select(zero_k, e.c(0.0), b.fdiv(error, u))
    core = _log1p_reduced(e, f, e.int_to_float(k), correction)
    special = b.select(e.eq(x, -1.0), e.c(float("-inf")), b.select(e.lt(x, -1.0), e.c(float("nan")), x))
    ok = b.and_(b.and_(b.fcmp_ordered(">", x, e.c(-1.0)), e.lt(x, float("inf"))), b.fcmp_unordered("!=", x, e.c(0.0)))
    return b.select(ok, core, special)  # x == +-0 returns x (keeps the sign)


FUNCTIONS = {"exp": exp, "log": log, "log1p": log1p, "tanh": tanh, "sigmoid": sigmoid}
