"""Random well-typed programs over every op family, for the differential fuzzer (test_fuzz.py).

A program is a list of steps `(kind, i, j, k)` drawn by hypothesis: `kind` names an entry
of KINDS, the ints pick operands (counted back from the newest value, so small ints build
deep chains and shrink well) and parameters (axes, strides, exponents...). `Builder` runs
the steps inside `compiler.trace` over a pool of values that starts with the inputs:
every step adds one value, reusing earlier ones (fan-out), and the `matmul_w` / `conv`
steps reuse the same weight inputs W, K, Kd (tied weights). Every step succeeds: an
operand that does not fit is replaced by one that does, never skipped.

Each float value carries an interval [lo, hi] that bounds it, so the builder keeps values
finite without looking at them: `log`, `sqrt`, `div`, `pow` get their raw form when the
interval is in the op's safe domain and a wrapper (`log(x*x + 0.5)`) otherwise; values
are rescaled by a constant before they could overflow (`exp` sees |x| <= 3).

Kinks and ties (relu/abs/sign at 0, maximum/minimum and comparisons at equality, max/min
reductions and max_pool2d at a tie for the top, casts to int at integers) are recorded
as *probes*: `margins()` evaluates them in float64 and a test rejects examples whose
distance to a kink is below a threshold, so central differences are valid and float32 /
optimized evaluations take the same branch as the oracle. Operands that may hold exact
ties (outputs of relu, broadcast_to, take, pad...) get a distinct-valued constant added
first, so structural ties do not make every such example get rejected.

`program_fn(program, seed, dtype, mode)` is the traceable function: mode "loss" returns
a scalar (the weighted sum of every sink value, for value_and_grad), "forward" returns
(loss, chosen intermediates including int/bool ones), "probes" the kink operands.
Also here: `poison` (NaN/inf/signed-zero inputs), `sample_combo` (op samples chained into
one loss) and `matmul_inputs` (products of random shapes and operand layouts).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

import numpy as np

import compiler
from compiler import Spec, ops
from compiler.ops import conv, gather
from compiler.ops.accumulate import add_n
from compiler.ops.fusion import fusion
from compiler.ops.implicit import fixed_point
from compiler.ops.tensor import Tensor, apply

# ---------------------------------------------------------------------------- inputs
# Parameters (argument 0, differentiated) and data (argument 1). Size-1 dims and a 0-d
# value for broadcasting; W, K, Kd are the tied weights of matmul_w and conv steps.
PARAMS: list[tuple[str, tuple[int, ...]]] = [
    ("a", (2, 3)), ("b", (3,)), ("c", (2, 1)), ("s", ()), ("e", (1, 3)),
    ("W", (3, 3)), ("img", (2, 3, 4, 4)), ("K", (3, 3, 2, 2)), ("Kd", (3, 1, 2, 2)),
    ("h", (3, 17)),  # long enough rows for vector loops and their remainders
]
PARAM_INDEX = {name: i for i, (name, _) in enumerate(PARAMS)}
DATA_FLOAT_SHAPE = (2, 3)
DATA_IDX_SIZE = 4

MAX_SIZE = 192  # no value grows beyond this many elements
LIMIT = 20.0  # values whose bound exceeds this are rescaled before use
SMOOTH_KINDS = [
    "neg", "exp", "log", "log1p", "sqrt", "tanh", "sigmoid", "sin", "cos", "square", "pow_lit",
    "add", "sub", "mul", "div", "pow", "const",
    "transpose", "reshape", "broadcast_to", "squeeze", "expand_dims", "slice", "pad", "take",
    "concatenate", "scatter_add", "segment_sum",
    "sum", "mean", "logsumexp", "softmax", "log_softmax",
    "matmul", "matmul_w", "conv2d", "avg_pool2d", "add_n", "fixed_point", "fusion",
]
KINK_KINDS = ["relu", "abs", "sign", "maximum", "minimum", "compare", "where", "logical", "max", "min", "max_pool2d",
              "max_pool2d_grad", "to_int", "int_op", "int_cmp", "int_to_float"]
# Differentiable programs only: central differences cannot see these gradients.
NONDIFF_KINDS = ["stop_gradient", "cast_roundtrip"]
FD_KINDS = SMOOTH_KINDS + KINK_KINDS
ALL_KINDS = FD_KINDS + NONDIFF_KINDS

Step = tuple  # (kind, i, j, k)


def input_values(seed: int, dtype: str = "float64") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(params, data) for a program: uniform in [-1.5, 1.5], int indices in [-6, 6)."""
    rng = np.random.default_rng(seed)
    params = [rng.uniform(-1.5, 1.5, size=shape).astype(dtype) for _, shape in PARAMS]
    data = [rng.uniform(-1.5, 1.5, size=DATA_FLOAT_SHAPE).astype(dtype),
            rng.integers(-6, 6, size=DATA_IDX_SIZE).astype(np.int32)]
    return params, data


SPECIALS = (np.nan, np.inf, -np.inf, 0.0, -0.0)


def poison(params: list[np.ndarray], data: list[np.ndarray], seed: int) -> tuple[list, list]:
    """Copies with a few elements of some float inputs set to NaN, +-inf or a signed zero."""
    rng = np.random.default_rng(seed)
    out = []
    for array in params + data:
        array = array.copy()
        if array.dtype.kind == "f" and rng.random() < 0.5:
            flat = array.reshape(-1)
            for index in rng.choice(flat.size, size=min(flat.size, int(rng.integers(1, 3))), replace=False):
                flat[index] = SPECIALS[int(rng.integers(0, len(SPECIALS)))]
        out.append(array)
    return out[:len(params)], out[len(params):]


# ----------------------------------------------------------------------------- values
@dataclass
class Val:
    t: Tensor
    lo: float
    hi: float
    ties: bool = False  # may hold exact ties or zeros (broadcast copies, relu zeros, pads...)
    is_input: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        return self.t.shape

    @property
    def ndim(self) -> int:
        return self.t.ndim

    @property
    def size(self) -> int:
        return int(np.prod(self.t.shape, dtype=np.int64))

    @property
    def mag(self) -> float:
        return max(abs(self.lo), abs(self.hi))


@dataclass
class Probe:
    kind: str  # zero | tie | int | reduce_max | reduce_min | pool
    tensors: list[Tensor]
    attrs: dict = field(default_factory=dict)


def _bshape(*shapes: tuple[int, ...]) -> tuple[int, ...] | None:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        return None


def _mul_bounds(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    corners = [x * y for x in a for y in b]
    return min(corners), max(corners)


def _square_bounds(lo: float, hi: float) -> tuple[float, float]:
    if lo <= 0.0 <= hi:
        return 0.0, max(lo * lo, hi * hi)
    return min(lo * lo, hi * hi), max(lo * lo, hi * hi)


@lru_cache(maxsize=None)
def _factorizations(size: int, rank: int) -> tuple[tuple[int, ...], ...]:
    if rank == 0:
        return ((),) if size == 1 else ()
    out = []
    for d in range(1, size + 1):
        if size % d == 0:
            out.extend((d,) + rest for rest in _factorizations(size // d, rank - 1))
    return tuple(out)


def reshape_targets(size: int) -> list[tuple[int, ...]]:
    targets = [s for rank in range(0, 5) for s in _factorizations(size, rank)]
    return targets


# ---------------------------------------------------------------------------- builder
class Builder:
    """Runs a program's steps on traced tensors; see the module doc."""

    def __init__(self, seed: int, dtype: str, params: list[Tensor], data: list[Tensor]) -> None:
        self.seed = seed
        self.dtype = dtype
        self.pool: list[Val] = [Val(t, -1.5, 1.5, is_input=True) for t in params]
        self.pool.append(Val(data[0], -1.5, 1.5, is_input=True))
        self.idx = data[1]
        self.W = self.pool[PARAM_INDEX["W"]]
        self.K = self.pool[PARAM_INDEX["K"]]
        self.Kd = self.pool[PARAM_INDEX["Kd"]]
        self.bias = self.pool[PARAM_INDEX["b"]]
        self.ints: list[Val] = []
        self.bools: list[Tensor] = []
        self.used: set[int] = set()  # ids of Tensors read by some step
        self.probes: list[Probe] = []
        self.rng = np.random.default_rng(0)

    # -------------------------------------------------------------- helpers
    def const(self, array: np.ndarray) -> Tensor:
        return ops.constant(np.asarray(array, dtype=self.dtype))

    def pick(self, i: int, pred: Callable[[Val], bool] | None = None) -> Val | None:
        """The i-th newest value satisfying pred (None if none does); it is marked used."""
        cands = [v for v in reversed(self.pool) if pred is None or pred(v)]
        if not cands:
            return None
        v = cands[i % len(cands)]
        self.used.add(v.t.id)
        return v

    def partner(self, a: Val, j: int, same_shape: bool = False) -> Val:
        """A value that broadcasts with `a` (result at most MAX_SIZE elements); may be `a` itself."""
        def fits(v: Val) -> bool:
            if same_shape or a.size >= MAX_SIZE:
                return v.shape == a.shape
            shape = _bshape(a.shape, v.shape)
            return shape is not None and int(np.prod(shape, dtype=np.int64)) <= MAX_SIZE
        found = self.pick(j, fits)
        if found is None:
            self.used.add(a.t.id)
            return a
        return found

    def tame(self, v: Val, limit: float = LIMIT) -> Val:
        """v rescaled by a constant so |v| <= limit (by its bound)."""
        if v.mag <= limit:
            return v
        scale = limit / v.mag * 0.75
        return Val(v.t * scale, v.lo * scale, v.hi * scale, v.ties)

    def jitter(self, v: Val, force: bool = False) -> Val:
        """v plus distinct positive constants when it may hold exact ties or zeros."""
        if not (v.ties or force):
            return v
        size = max(v.size, 1)
        # distinct (>= 0.012 apart), and not the same set twice: two jitters of one value never tie
        offsets = (self.rng.permutation(size) + 0.5 + 0.4 * self.rng.random(size)) * 0.02
        offsets = offsets.reshape(v.shape)
        return Val(v.t + self.const(offsets), v.lo + 0.01, v.hi + 0.02 * size, False)

    def push(self, t: Tensor, lo: float, hi: float, ties: bool = False) -> Val:
        if lo > hi:
            lo, hi = hi, lo
        v = Val(t, float(lo), float(hi), ties)
        self.pool.append(v)
        return v

    def probe(self, kind: str, *tensors: Tensor, **attrs: Any) -> None:
        self.probes.append(Probe(kind, list(tensors), attrs))

    # -------------------------------------------------------------- run
    def run(self, program: list[Step]) -> None:
        for index, (kind, i, j, k) in enumerate(program):
            self.rng = np.random.default_rng([self.seed, index, i, j, k])
            getattr(self, "op_" + kind)(i, j, k)

    def sinks(self) -> list[Val]:
        return [v for v in self.pool if not v.is_input and v.t.id not in self.used]

    def loss(self) -> Tensor:
        """Weighted sum of every float sink (random weights catch permuted cotangents)."""
        rng = np.random.default_rng([self.seed, 999])
        terms = []
        sinks = self.sinks() or [self.pool[-1]]
        for v in sinks:
            weights = rng.normal(size=v.shape)
            terms.append(ops.sum(v.t * self.const(weights)) * (1.0 / max(1.0, v.mag)))
        for v in self.ints:
            if v.t.id not in self.used:
                terms.append(ops.sum(ops.cast(v.t, self.dtype)) * 0.01)
        for t in self.bools:
            if t.id not in self.used:
                terms.append(ops.sum(ops.cast(t, self.dtype)) * 0.01)
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        return total

    def extras(self, mask: int) -> list[Tensor]:
        """Intermediates returned by the forward graph: sinks, int/bool values, masked others,
        and (by mask bits 26-29) outputs that alias: an input, a view of an input, a constant,
        and one value returned twice."""
        out = []
        for n, v in enumerate(self.pool):
            if v.is_input:
                continue
            if v.t.id not in self.used or (mask >> (n % 26)) & 1:
                out.append(v.t)
        out += [v.t for v in self.ints] + list(self.bools)
        if (mask >> 29) & 1:
            out.append(self.pool[PARAM_INDEX["a"]].t)
        if (mask >> 28) & 1:
            out.append(self.pool[PARAM_INDEX["W"]].t.T if mask & 1 else ops.reshape(self.pool[PARAM_INDEX["a"]].t, (3, 2)))
        if (mask >> 27) & 1:
            out.append(ops.full((2,), 1.5, self.dtype))
        if (mask >> 26) & 1 and out:
            out.append(out[0])
        return out

    # ================================================================ unary elementwise
    def op_neg(self, i: int, j: int, k: int) -> None:
        v = self.pick(i)
        self.push(-v.t, -v.hi, -v.lo, v.ties)

    def op_exp(self, i: int, j: int, k: int) -> None:
        v = self.tame(self.pick(i), 3.0)
        self.push(ops.exp(v.t), math.exp(v.lo), math.exp(v.hi))

    def op_log(self, i: int, j: int, k: int) -> None:
        v = self.tame(self.pick(i))
        if v.lo > 0.05:
            self.push(ops.log(v.t), math.log(v.lo), math.log(v.hi))
        else:  # log(x*x + 0.5)
            lo, hi = _square_bounds(v.lo, v.hi)
            self.push(ops.log(ops.square(v.t) + 0.5), math.log(lo + 0.5), math.log(hi + 0.5))

    def op_log1p(self, i: int, j: int, k: int) -> None:
        v = self.tame(self.pick(i))
        if v.lo > -0.9:
            self.push(ops.log1p(v.t), math.log1p(v.lo), math.log1p(v.hi))
        else:
            lo, hi = _square_bounds(v.lo, v.hi)
            self.push(ops.log1p(v.t * v.t), math.log1p(lo), math.log1p(hi))

    def op_sqrt(self, i: int, j: int, k: int) -> None:
        v = self.tame(self.pick(i))
        if v.lo > 0.05:
            self.push(ops.sqrt(v.t), math.sqrt(v.lo), math.sqrt(v.hi))
        else:
            lo, hi = _square_bounds(v.lo, v.hi)
            self.push(ops.sqrt(ops.square(v.t) + 0.25), math.sqrt(lo + 0.25), math.sqrt(hi + 0.25))

    def op_tanh(self, i: int, j: int, k: int) -> None:
        v = self.pick(i)
        self.push(ops.tanh(v.t), math.tanh(v.lo), math.tanh(v.hi), v.ties)

    def op_sigmoid(self, i: int, j: int, k: int) -> None:
        v = self.pick(i)
        sig = lambda x: 1.0 / (1.0 + math.exp(-max(min(x, 700.0), -700.0)))  # noqa: E731
        self.push(ops.sigmoid(v.t), sig(v.lo), sig(v.hi), v.ties)

    def op_sin(self, i: int, j: int, k: int) -> None:
        v = self.tame(self.pick(i))
        self.push(ops.sin(v.t), -1.0, 1.0, v.ties)

    def op_cos(self, i: int, j: int, k: int) -> None:
        v = self.tame(self.pick(i))
        self.push(ops.cos(v.t), -1.0, 1.0, v.ties)

    def op_square(self, i: int, j: int, k: int) -> None:
        v = self.tame(self.pick(i), 10.0)
        self.push(ops.square(v.t), *_square_bounds(v.lo, v.hi), ties=True)  # x and -x square alike

    def op_pow_lit(self, i: int, j: int, k: int) -> None:
        v = self.tame(self.pick(i), 4.0)
        exponent = [2.0, 3.0, 0.5, 1.5, -1.0, -0.5][k % 6]
        if exponent in (2.0, 3.0):
            base, lo, hi = v.t, v.lo, v.hi
        elif v.lo > 0.1:
            base, lo, hi = v.t, v.lo, v.hi
        else:  # a positive base
            s_lo, s_hi = _square_bounds(v.lo, v.hi)
            base, lo, hi = ops.square(v.t) + 0.5, s_lo + 0.5, s_hi + 0.5
        if exponent == 3.0:
            bounds = (lo ** 3, hi ** 3)
        elif exponent == 2.0:
            bounds = _square_bounds(lo, hi)
        else:
            bounds = (lo ** exponent, hi ** exponent)
        self.push(base ** exponent, min(bounds), max(bounds), v.ties)

    def op_relu(self, i: int, j: int, k: int) -> None:
        v = self.jitter(self.pick(i))
        self.probe("zero", v.t)
        self.push(ops.relu(v.t), max(v.lo, 0.0), max(v.hi, 0.0), True)

    def op_abs(self, i: int, j: int, k: int) -> None:
        v = self.jitter(self.pick(i))
        self.probe("zero", v.t)
        lo = 0.0 if v.lo <= 0.0 <= v.hi else min(abs(v.lo), abs(v.hi))
        self.push(ops.abs(v.t), lo, v.mag, True)

    def op_sign(self, i: int, j: int, k: int) -> None:
        v = self.jitter(self.pick(i))
        self.probe("zero", v.t)
        # sign(x) * x keeps a gradient path (and is |x|); plain sign(x) is piecewise constant
        out = ops.sign(v.t) * v.t if k % 2 else ops.sign(v.t)
        self.push(out, -v.mag, v.mag, True)

    # ================================================================ binary elementwise
    def _literal(self, k: int) -> float:
        return [0.5, -1.25, 2.0, 0.75][k % 4]

    def op_add(self, i: int, j: int, k: int) -> None:
        a = self.pick(i)
        if k % 5 == 0:
            c = self._literal(k // 5)
            self.push(c + a.t if k % 2 else a.t + c, a.lo + c, a.hi + c, a.ties)
            return
        b = self.partner(a, j)
        self.push(a.t + b.t, a.lo + b.lo, a.hi + b.hi, a.ties or b.ties)

    def op_sub(self, i: int, j: int, k: int) -> None:
        a = self.pick(i)
        if k % 5 == 0:
            c = self._literal(k // 5)
            self.push(c - a.t, c - a.hi, c - a.lo, a.ties)
            return
        b = self.partner(a, j)
        self.push(a.t - b.t, a.lo - b.hi, a.hi - b.lo, True if a is b else a.ties or b.ties)

    def op_mul(self, i: int, j: int, k: int) -> None:
        a = self.tame(self.pick(i), 8.0)
        if k % 5 == 0:
            c = self._literal(k // 5)
            self.push(a.t * c, *sorted((a.lo * c, a.hi * c)), ties=a.ties)
            return
        b = self.tame(self.partner(a, j), 8.0)
        self.push(a.t * b.t, *_mul_bounds((a.lo, a.hi), (b.lo, b.hi)), ties=a.ties or b.ties)

    def _away_from_zero(self, v: Val) -> tuple[Tensor, float, float]:
        """v itself when its bound excludes (-0.1, 0.1), else x*x + 0.5."""
        if v.lo > 0.1 or v.hi < -0.1:
            return v.t, v.lo, v.hi
        lo, hi = _square_bounds(v.lo, v.hi)
        return ops.square(v.t) + 0.5, lo + 0.5, hi + 0.5

    def op_div(self, i: int, j: int, k: int) -> None:
        a = self.tame(self.pick(i), 8.0)
        b = self.tame(self.partner(a, j), 8.0)
        den, lo, hi = self._away_from_zero(b)
        inv = (1.0 / hi, 1.0 / lo)
        if k % 4 == 0:  # a literal numerator
            self.push(1.5 / den, *_mul_bounds((1.5, 1.5), inv))
            return
        self.push(a.t / den, *_mul_bounds((a.lo, a.hi), inv), ties=a.ties or b.ties)

    def op_pow(self, i: int, j: int, k: int) -> None:
        a = self.tame(self.pick(i), 4.0)
        b = self.partner(a, j)
        if a.lo > 0.1:
            base, blo, bhi = a.t, a.lo, a.hi
        else:
            s_lo, s_hi = _square_bounds(a.lo, a.hi)
            base, blo, bhi = ops.square(a.t) + 0.5, s_lo + 0.5, s_hi + 0.5
        logs = (math.log(blo), math.log(bhi))
        budget = 3.0 / max(abs(logs[0]), abs(logs[1]), 1e-3)
        e = self.tame(b, min(budget, 2.0))
        corners = [math.exp(x * y) for x in logs for y in (e.lo, e.hi)]
        self.push(base ** e.t, min(corners), max(corners), a.ties or b.ties)

    def op_maximum(self, i: int, j: int, k: int) -> None:
        self._extremum(i, j, ops.maximum, max)

    def op_minimum(self, i: int, j: int, k: int) -> None:
        self._extremum(i, j, ops.minimum, min)

    def _extremum(self, i: int, j: int, fn: Callable, pick: Callable) -> None:
        a = self.pick(i)
        b = self.partner(a, j)
        b = self.jitter(b, force=b is a or a.ties or b.ties)
        self.probe("tie", a.t, b.t)
        self.push(fn(a.t, b.t), pick(a.lo, b.lo), pick(a.hi, b.hi), True)

    def op_const(self, i: int, j: int, k: int) -> None:
        a = self.tame(self.pick(i))
        c = float(self.rng.uniform(0.5, 1.5))
        offsets = self.rng.uniform(-0.5, 0.5, size=a.shape)
        self.push(a.t * ops.full(a.shape, c, self.dtype) + self.const(offsets), a.lo * c - 0.5, a.hi * c + 0.5, a.ties)

    # ================================================================ comparisons, select, ints
    def _compare(self, a: Val, j: int, k: int, b: Val | None = None) -> Tensor:
        b = self.partner(a, j) if b is None else b
        b = self.jitter(b, force=b is a or a.ties or b.ties)
        self.probe("tie", a.t, b.t)
        fn = [ops.less, ops.less_equal, ops.greater, ops.greater_equal][k % 4]
        cond = fn(a.t, b.t)
        self.bools.append(cond)
        return cond

    def op_compare(self, i: int, j: int, k: int) -> None:
        """lt/le/gt/ge of two floats; used as a 0/1 mask on a float value."""
        a = self.pick(i)
        cond = self._compare(a, j, k)
        x = self.pick(j, lambda v: _bshape(v.shape, cond.shape) == cond.shape)
        if x is not None:
            self.used.add(cond.id)
            self.push(ops.cast(cond, self.dtype) * x.t, min(x.lo, 0.0), max(x.hi, 0.0), True)

    def op_where(self, i: int, j: int, k: int) -> None:
        x = self.pick(i)
        y = self.partner(x, j)
        shape = _bshape(x.shape, y.shape)
        cond = None
        if self.bools and k % 3:
            fitting = [c for c in reversed(self.bools) if _bshape(c.shape, shape) == shape]
            if fitting:
                cond = fitting[k % len(fitting)]
                self.used.add(cond.id)
        if cond is None:
            other = self.pick(j // 3 + 1, lambda v: _bshape(v.shape, shape) == shape)
            cond = self._compare(other, k // 3, k, b=self.partner(other, k // 3, same_shape=True))
            self.used.add(cond.id)
        if k % 7 == 0:  # a scalar branch, as in leaky relu
            self.push(ops.where(cond, x.t, 0.1 * x.t), min(x.lo, 0.1 * x.lo), max(x.hi, 0.1 * x.hi), True)
            return
        self.push(ops.where(cond, x.t, y.t), min(x.lo, y.lo), max(x.hi, y.hi), True)

    def op_logical(self, i: int, j: int, k: int) -> None:
        if len(self.bools) < 2:
            self._compare(self.pick(i), j, k)
            self._compare(self.pick(i + 1), j + 1, k + 1)
        a = self.bools[-1 - i % len(self.bools)]
        others = [b for b in reversed(self.bools) if b is a or _bshape(a.shape, b.shape) is not None
                  and np.prod(_bshape(a.shape, b.shape)) <= MAX_SIZE]
        b = others[j % len(others)]
        self.used.update((a.id, b.id))
        out = [ops.logical_and(a, b), ops.logical_or(a, b), ops.logical_not(a)][k % 3]
        self.bools.append(out)
        if k % 2:  # as a mask on a float value
            x = self.pick(j, lambda v: _bshape(v.shape, out.shape) is not None
                          and np.prod(_bshape(v.shape, out.shape)) <= MAX_SIZE)
            if x is not None:
                self.used.add(out.id)
                self.push(x.t * ops.cast(out, self.dtype), min(x.lo, 0.0), max(x.hi, 0.0), True)

    def op_to_int(self, i: int, j: int, k: int) -> None:
        v = self.jitter(self.tame(self.pick(i), 4.0))
        scaled = v.t * 2.5
        self.probe("int", scaled)
        dtype = "int32" if k % 3 else "int64"
        self.ints.append(Val(ops.cast(scaled, dtype), math.trunc(v.lo * 2.5), math.trunc(v.hi * 2.5), True))

    def _int_val(self, i: int) -> Val:
        if not self.ints:
            self.op_to_int(i, 0, 1)
        v = self.ints[-1 - i % len(self.ints)]
        self.used.add(v.t.id)
        return v

    def op_int_op(self, i: int, j: int, k: int) -> None:
        a = self._int_val(i)
        choice = k % 8
        if choice < 4:
            fits = [v for v in reversed(self.ints) if v is a or v.t.dtype == a.t.dtype and _bshape(a.shape, v.shape) is not None
                    and np.prod(_bshape(a.shape, v.shape)) <= MAX_SIZE]
            b = fits[j % len(fits)]
            self.used.add(b.t.id)
            if a.mag * max(b.mag, 1) > 1e5:
                choice = 4
            else:
                fn, bounds = [
                    (lambda x, y: x + y, (a.lo + b.lo, a.hi + b.hi)),
                    (lambda x, y: x * y, _mul_bounds((a.lo, a.hi), (b.lo, b.hi))),
                    (ops.maximum, (max(a.lo, b.lo), max(a.hi, b.hi))),
                    (ops.minimum, (min(a.lo, b.lo), min(a.hi, b.hi))),
                ][choice]
                self.ints.append(Val(fn(a.t, b.t), *bounds, ties=True))
                return
        if choice == 4:
            self.ints.append(Val(-a.t, -a.hi, -a.lo, True))
        elif choice == 5:
            self.ints.append(Val(ops.abs(a.t), 0, a.mag, True))
        elif choice == 6 and a.ndim:
            axis = j % a.ndim
            fn = [ops.sum, ops.max, ops.min][j % 3]
            n = a.shape[axis]
            bounds = (min(a.lo * n, a.lo), max(a.hi * n, a.hi)) if fn is ops.sum else (a.lo, a.hi)
            self.ints.append(Val(fn(a.t, axis=axis, keepdims=bool(k % 2)), *bounds, ties=True))
        else:
            lo, hi = _square_bounds(a.lo, a.hi)
            self.ints.append(Val(ops.square(a.t) if a.mag < 1e3 else a.t, lo, hi, True))

    def op_int_cmp(self, i: int, j: int, k: int) -> None:
        a = self._int_val(i)
        fits = [v for v in reversed(self.ints) if v is a or v.t.dtype == a.t.dtype and _bshape(a.shape, v.shape) is not None
                and np.prod(_bshape(a.shape, v.shape)) <= MAX_SIZE]
        b = fits[j % len(fits)]
        self.used.add(b.t.id)
        fn = [ops.equal, ops.not_equal, ops.less, ops.greater_equal][k % 4]
        self.bools.append(fn(a.t, b.t))

    def op_int_to_float(self, i: int, j: int, k: int) -> None:
        a = self._int_val(i)
        scale = 1.0 / max(1.0, a.mag)
        f = ops.cast(a.t, self.dtype) * scale
        if k % 2:  # mixed into a float value that carries gradient
            x = self.pick(j, lambda v: _bshape(v.shape, a.shape) is not None
                          and np.prod(_bshape(v.shape, a.shape)) <= MAX_SIZE)
            if x is not None:
                self.push(x.t * f, *_mul_bounds((x.lo, x.hi), (a.lo * scale, a.hi * scale)), ties=True)
                return
        self.push(f, a.lo * scale, a.hi * scale, True)

    def op_stop_gradient(self, i: int, j: int, k: int) -> None:
        v = self.pick(i)
        self.push(v.t * ops.stop_gradient(v.t) if k % 2 else ops.stop_gradient(v.t),
                  *(_square_bounds(v.lo, v.hi) if k % 2 else (v.lo, v.hi)), ties=v.ties)

    def op_cast_roundtrip(self, i: int, j: int, k: int) -> None:
        """Through the other float dtype and back. In float32, x*2 - 1 is exact or correctly
        rounded in both engines; a float32 tanh would differ by an ulp, beyond float64 tolerance."""
        v = self.pick(i)
        if self.dtype == "float64":
            out = ops.cast(ops.cast(v.t, "float32") * 2.0 - 1.0, "float64")
            self.push(out, 2 * v.lo - 1.0, 2 * v.hi - 1.0, v.ties)
        else:
            self.push(ops.cast(ops.tanh(ops.cast(v.t, "float64")), "float32"), math.tanh(v.lo), math.tanh(v.hi), v.ties)

    # ================================================================ shape ops
    def op_transpose(self, i: int, j: int, k: int) -> None:
        v = self.pick(i)
        if v.ndim < 2:
            self.push(ops.transpose(v.t), v.lo, v.hi, v.ties)
            return
        perms = list(itertools.permutations(range(v.ndim)))
        perm = perms[1 + j % (len(perms) - 1)]
        out = v.t.T if (k % 3 == 0 and v.ndim == 2) else ops.transpose(v.t, perm)
        self.push(out, v.lo, v.hi, v.ties)

    def op_reshape(self, i: int, j: int, k: int) -> None:
        v = self.pick(i)
        targets = [s for s in reshape_targets(v.size) if s != v.shape]
        target = targets[j % len(targets)] if targets else v.shape
        if k % 4 == 0 and target:
            target = tuple(-1 if n == k % len(target) else d for n, d in enumerate(target))
        self.push(ops.reshape(v.t, target), v.lo, v.hi, v.ties)

    def op_broadcast_to(self, i: int, j: int, k: int) -> None:
        v = self.pick(i, lambda v: v.size * 2 <= MAX_SIZE)
        if v is None:
            v = self.pick(i)
            self.push(ops.broadcast_to(v.t, v.shape), v.lo, v.hi, v.ties)
            return
        shape = [d if d != 1 or (j >> n) & 1 == 0 else 2 + (k >> n) % 2 for n, d in enumerate(v.shape)]
        if k % 2 or v.ndim == 0 or shape == list(v.shape):
            shape = [2 + j % 2] + shape
        if np.prod(shape) > MAX_SIZE:
            shape = list(v.shape)
        self.push(ops.broadcast_to(v.t, tuple(shape)), v.lo, v.hi, True)

    def op_squeeze(self, i: int, j: int, k: int) -> None:
        v = self.pick(i, lambda v: 1 in v.shape)
        if v is None:
            return self.op_expand_dims(i, j, k)
        ones = [n for n, d in enumerate(v.shape) if d == 1]
        out = ops.squeeze(v.t) if k % 3 == 0 else ops.squeeze(v.t, ones[j % len(ones)] - (v.ndim if k % 2 else 0))
        self.push(out, v.lo, v.hi, v.ties)

    def op_expand_dims(self, i: int, j: int, k: int) -> None:
        v = self.pick(i, lambda v: v.ndim < 4)
        if v is None:
            return self.op_reshape(i, j, k)
        axis = j % (v.ndim + 1) - (v.ndim + 1 if k % 2 else 0)
        out = v.t[None] if k % 5 == 0 else ops.expand_dims(v.t, axis)
        self.push(out, v.lo, v.hi, v.ties)

    def op_slice(self, i: int, j: int, k: int) -> None:
        v = self.pick(i, lambda v: v.ndim >= 1 and v.size > 1)
        if v is None:
            v = self.pick(i)
            self.push(v.t[None] if v.ndim == 0 else v.t[...], v.lo, v.hi, v.ties)
            return
        index: list[Any] = []
        dropped = False
        for n in v.shape:
            choice = int(self.rng.integers(0, 7))
            if choice == 0 or n == 1 and choice != 5:
                index.append(slice(None))
            elif choice == 1:
                start = int(self.rng.integers(0, n))
                index.append(slice(start, int(self.rng.integers(start + 1, n + 1))))
            elif choice == 2:
                index.append(slice(int(self.rng.integers(0, n)), None, 2))
            elif choice == 3:
                index.append(slice(None, None, -1))
            elif choice == 4:
                index.append(slice(int(self.rng.integers(0, n)), None, -int(self.rng.integers(1, 3))))
            elif choice == 5 and not dropped:
                dropped = True
                index.append(int(self.rng.integers(-n, n)))
            else:
                index.append(slice(-n + int(self.rng.integers(0, n)), None))
        if k % 4 == 0:
            index.insert(int(self.rng.integers(0, len(index) + 1)), None)
        if k % 6 == 1:
            index = [Ellipsis] + index[1:]
        self.push(v.t[tuple(index)], v.lo, v.hi, v.ties)

    def op_pad(self, i: int, j: int, k: int) -> None:
        v = self.pick(i, lambda v: 1 <= v.ndim and v.size * 2 <= MAX_SIZE)
        if v is None:
            return self.op_slice(i, j, k)
        value = [0.0, 0.5, -1.0][j % 3]
        low = tuple(int(x) for x in self.rng.integers(0, 3, size=v.ndim))
        high = tuple(int(x) for x in self.rng.integers(0, 2, size=v.ndim))
        interior = tuple(int(x) for x in self.rng.integers(0, 2, size=v.ndim)) if k % 3 == 0 else (0,) * v.ndim
        size = np.prod([lo + hi + d + max(d - 1, 0) * it for lo, hi, d, it in zip(low, high, v.shape, interior)])
        if size > MAX_SIZE:  # one element on one side of the last axis
            low, high, interior = (0,) * (v.ndim - 1) + (1,), (0,) * v.ndim, (0,) * v.ndim
        if any(interior):  # interior padding (as the gradient of a strided slice makes)
            out = apply("pad", v.t, low=low, high=high, interior=interior, value=value)
        else:
            out = ops.pad(v.t, tuple(zip(low, high)), value)
        self.push(out, min(v.lo, value), max(v.hi, value), True)

    def op_take(self, i: int, j: int, k: int) -> None:
        v = self.pick(i, lambda v: v.ndim >= 1 and v.size * 2 <= MAX_SIZE)
        if v is None:
            v = self.pick(i, lambda v: v.ndim >= 1)
        if v is None:
            return self.op_expand_dims(i, j, k)
        axis = j % v.ndim
        n = v.shape[axis]
        if k % 3 == 0:  # traced indices: negative count from the end, out of range are clipped
            out = ops.take(v.t, self.idx, axis=axis)
        elif k % 3 == 1:
            shape = [(3,), (2, 2), ()][k // 3 % 3]
            out = ops.take(v.t, self.rng.integers(-n, n, size=shape), axis=axis - (v.ndim if k % 2 else 0))
        else:  # numpy indexing with an int array
            out = v.t[(slice(None),) * axis + (self.rng.integers(-n, n, size=(3,)),)]
        self.push(out, v.lo, v.hi, True)

    def op_concatenate(self, i: int, j: int, k: int) -> None:
        a = self.pick(i, lambda v: v.ndim >= 1)
        if k % 3 == 0:  # stack
            b = self.partner(a, j, same_shape=True)
            if a.size * 2 <= MAX_SIZE:
                axis = j % (a.ndim + 1)
                self.push(ops.stack([a.t, b.t], axis=axis), min(a.lo, b.lo), max(a.hi, b.hi), True)
                return
        axis = j % a.ndim

        def fits(v: Val) -> bool:
            return v.ndim == a.ndim and all(d == e for n, (d, e) in enumerate(zip(v.shape, a.shape)) if n != axis)
        parts = [a]
        for m in range(1 + k % 3):
            p = self.pick(j + m, fits)
            if sum(x.size for x in parts) + p.size <= MAX_SIZE:
                parts.append(p)
        self.push(ops.concatenate([p.t for p in parts], axis=axis),
                  min(p.lo for p in parts), max(p.hi for p in parts), True)

    def op_scatter_add(self, i: int, j: int, k: int) -> None:
        u = self.pick(i, lambda v: v.ndim >= 1)
        axis = j % u.ndim
        m = u.shape[axis]
        size = 2 + k % 3
        if u.size // m * size > MAX_SIZE:
            size = 1
        indices = self.rng.integers(-1, size + 1, size=(m,))  # out of range: dropped
        out = apply("scatter_add", u.t, ops.constant(indices.astype(np.int32)), axis=axis, size=size)
        self.push(out, min(0.0, u.lo * m), max(0.0, u.hi * m), True)

    def op_segment_sum(self, i: int, j: int, k: int) -> None:
        u = self.pick(i, lambda v: v.ndim >= 1)
        prefix = 2 if (k % 2 and u.ndim >= 2) else 1
        rows = int(np.prod(u.shape[:prefix]))
        num = 2 + j % 3
        ids = self.rng.integers(-1, num + 1, size=u.shape[:prefix]).astype(np.int32)
        out = gather.segment_sum(u.t, ids if k % 3 else ops.constant(ids), num)
        self.push(out, min(0.0, u.lo * rows), max(0.0, u.hi * rows), True)

    # ================================================================ reductions
    def _axes(self, v: Val, j: int) -> tuple[int, ...] | None:
        if v.ndim == 0 or j % 5 == 0:
            return None
        mask = j % (2 ** v.ndim)
        axes = tuple(n for n in range(v.ndim) if (mask >> n) & 1)
        return axes or (v.ndim - 1,)

    def _reduced_count(self, v: Val, axes: tuple[int, ...] | None) -> int:
        if axes is None:
            return v.size
        return int(np.prod([v.shape[a] for a in axes]))

    def _neg_axes(self, v: Val, axes: tuple[int, ...] | None, k: int) -> Any:
        if axes is None or k % 3:
            return axes
        return tuple(a - v.ndim for a in axes) if len(axes) > 1 else axes[0] - v.ndim

    def op_sum(self, i: int, j: int, k: int) -> None:
        v = self.pick(i)
        axes = self._axes(v, j)
        n = self._reduced_count(v, axes)
        self.push(ops.sum(v.t, axis=self._neg_axes(v, axes, k), keepdims=bool(k % 2)),
                  min(v.lo * n, v.lo), max(v.hi * n, v.hi), v.ties)

    def op_mean(self, i: int, j: int, k: int) -> None:
        v = self.pick(i)
        axes = self._axes(v, j)
        out = v.t.mean(axis=axes, keepdims=bool(k % 2)) if k % 3 == 0 else ops.mean(v.t, axis=axes, keepdims=bool(k % 2))
        self.push(out, v.lo, v.hi, v.ties)

    def _extreme_reduce(self, i: int, j: int, k: int, which: str) -> None:
        v = self.jitter(self.pick(i), force=True)
        axes = self._axes(v, j)
        self.probe("reduce_" + which, v.t, axes=axes)
        fn = ops.max if which == "max" else ops.min
        self.push(fn(v.t, axis=self._neg_axes(v, axes, k), keepdims=bool(k % 2)), v.lo, v.hi, True)

    def op_max(self, i: int, j: int, k: int) -> None:
        self._extreme_reduce(i, j, k, "max")

    def op_min(self, i: int, j: int, k: int) -> None:
        self._extreme_reduce(i, j, k, "min")

    def op_logsumexp(self, i: int, j: int, k: int) -> None:
        v = self.tame(self.pick(i))
        axes = self._axes(v, j)
        n = self._reduced_count(v, axes)
        self.push(ops.logsumexp(v.t, axis=axes, keepdims=bool(k % 2)), v.lo, v.hi + math.log(n))

    def op_softmax(self, i: int, j: int, k: int) -> None:
        v = self.tame(self.pick(i, lambda v: v.ndim >= 1) or self.pick(i))
        if v.ndim == 0:
            v = Val(v.t[None], v.lo, v.hi)
        axis = j % v.ndim - (v.ndim if k % 2 else 0)
        self.push(ops.softmax(v.t, axis=axis), 0.0, 1.0, v.ties or v.shape[axis] == 1)

    def op_log_softmax(self, i: int, j: int, k: int) -> None:
        v = self.tame(self.pick(i, lambda v: v.ndim >= 1) or self.pick(i))
        if v.ndim == 0:
            v = Val(v.t[None], v.lo, v.hi)
        axis = j % v.ndim
        n = v.shape[axis]
        self.push(ops.log_softmax(v.t, axis=axis), v.lo - v.hi - math.log(n), 0.0, v.ties or n == 1)

    # ================================================================ matmul, conv
    def op_matmul_w(self, i: int, j: int, k: int) -> None:
        """The tied weight W (3, 3) applied again: v @ W, W @ v or tanh(v @ W + b)."""
        v = self.tame(self.pick(i, lambda v: v.ndim >= 1 and v.shape[-1] == 3 and v.size * 3 <= MAX_SIZE * 3), 5.0)
        self.used.add(self.W.t.id)
        bound = 3 * v.mag * self.W.mag
        if k % 3 == 0 and v.ndim <= 2 and v.shape[0] == 3:
            self.push(self.W.t @ v.t, -bound, bound, v.ties)
        elif k % 3 == 1:
            self.used.add(self.bias.t.id)
            self.push(ops.tanh(v.t @ self.W.t + self.bias.t), -1.0, 1.0, v.ties)
        else:
            self.push(v.t @ self.W.t, -bound, bound, v.ties)

    def op_matmul(self, i: int, j: int, k: int) -> None:
        a = self.tame(self.pick(i, lambda v: v.ndim >= 1), 5.0)
        n = a.shape[-1]

        def fits(v: Val) -> bool:
            if v.ndim == 0 or (v.shape[-2] if v.ndim >= 2 else v.shape[0]) != n:
                return False
            try:
                batch = _bshape(a.shape[:-2], v.shape[:-2])
            except IndexError:
                batch = ()
            if batch is None:
                return False
            rows = a.shape[-2] if a.ndim >= 2 else 1
            cols = v.shape[-1] if v.ndim >= 2 else 1
            return int(np.prod(batch)) * rows * cols <= MAX_SIZE
        b = self.pick(j, fits)
        if b is None or k % 4 == 0:  # a Gram matrix a @ a^T (or a . a for vectors)
            other = ops.swapaxes(a.t, -1, -2) if a.ndim >= 2 else a.t
            bound = n * a.mag * a.mag
            self.push(a.t @ other if k % 2 else ops.matmul(a.t, other), -bound, bound, a.ties)
            return
        b = self.tame(b, 5.0)
        bound = n * a.mag * b.mag
        self.push(ops.dot(a.t, b.t) if k % 5 == 1 and a.ndim <= 2 else a.t @ b.t, -bound, bound, a.ties or b.ties)

    def _image(self, i: int, channels: int | None = 3, min_hw: int = 2) -> Val:
        def fits(v: Val) -> bool:
            return (v.ndim == 4 and (channels is None or v.shape[1] == channels)
                    and v.shape[2] >= min_hw and v.shape[3] >= min_hw)
        found = self.pick(i, fits)
        if found is None:
            found = self.pool[PARAM_INDEX["img"]]
            self.used.add(found.t.id)
        return self.tame(found, 4.0)

    def op_conv2d(self, i: int, j: int, k: int) -> None:
        x = self._image(i, 3, 1)
        depthwise = k % 3 == 2
        w = self.Kd if depthwise else self.K
        self.used.add(w.t.id)
        h = min(x.shape[2], x.shape[3])
        stride = 1 + j % 2
        padding = (j >> 1) % 2 if max(x.shape[2], x.shape[3]) < 5 else 0
        dilation = 2 if (j >> 2) % 2 and h + 2 * padding >= 3 else 1
        if h + 2 * padding < dilation + 1:
            padding = 1
        bias = self.bias.t if k % 2 else None
        if bias is not None:
            self.used.add(self.bias.t.id)
        out = conv.conv2d(x.t, w.t, bias, stride=stride, padding=padding, dilation=dilation,
                          groups=3 if depthwise else 1)
        bound = (1 if depthwise else 3) * 4 * x.mag * w.mag + (self.bias.mag if bias is not None else 0.0)
        self.push(out, -bound, bound, x.ties)

    def op_avg_pool2d(self, i: int, j: int, k: int) -> None:
        x = self._image(i, None, 2)
        stride = 1 + j % 2
        padding = k % 2
        self.push(conv.avg_pool2d(x.t, 2, stride=stride, padding=padding), min(x.lo, 0.0), max(x.hi, 0.0), x.ties)

    def op_max_pool2d(self, i: int, j: int, k: int) -> None:
        x = self.jitter(self._image(i, None, 2), force=True)
        kernel = (2, 2) if k % 3 else (3, 2)
        stride = (1 + j % 2, 1 + (j >> 1) % 2)
        padding = (k % 2, (k >> 1) % 2)
        if x.shape[2] + 2 * padding[0] < kernel[0]:
            padding = (1, padding[1])
        self.probe("pool", x.t, kernel=kernel, stride=stride, padding=padding)
        self.push(conv.max_pool2d(x.t, kernel, stride=stride, padding=padding), x.lo, x.hi, True)

    def op_max_pool2d_grad(self, i: int, j: int, k: int) -> None:
        """The pool's VJP op applied directly (its own VJP is max_pool2d_select)."""
        x = self.jitter(self._image(i, None, 2), force=True)
        attrs = conv._pool_args(2, 1 + j % 2, k % 2, "fuzz")
        pooled = conv.max_pool2d(x.t, **{"kernel_size": attrs["kernel"], "stride": attrs["stride"],
                                         "padding": attrs["padding"]})
        g = self.pick(j, lambda v: v.shape == pooled.shape)
        g = self.tame(g, 4.0) if g is not None else Val(ops.tanh(pooled), -1.0, 1.0)
        self.probe("pool", x.t, **attrs)
        bound = 4 * g.mag
        self.push(apply("max_pool2d_grad", x.t, g.t, **attrs), -bound, bound, True)

    # ================================================================ accumulate, implicit, fusion
    def op_add_n(self, i: int, j: int, k: int) -> None:
        a = self.pick(i)
        parts = [a] + [self.partner(a, j + m, same_shape=True) for m in range(1 + k % 3)]
        self.push(add_n(*(p.t for p in parts)), sum(p.lo for p in parts), sum(p.hi for p in parts),
                  any(p.ties for p in parts))

    def op_fixed_point(self, i: int, j: int, k: int) -> None:
        """z = 0.5 tanh(z) sigmoid(w) + c: a contraction, so it converges from any z0."""
        c = self.tame(self.pick(i), 3.0)
        w = self.pick(j, lambda v: _bshape(v.shape, c.shape) == c.shape)
        tol = 1e-13 if self.dtype == "float64" else 1e-5

        def cell(z, c, w):  # noqa: ANN001, ANN202
            return 0.5 * ops.tanh(z) * ops.sigmoid(w) + c
        z0 = ops.zeros_like(c.t) if k % 2 else c.t
        self.push(fixed_point(cell, z0, c.t, w.t, tol=tol, max_iter=400), c.lo - 0.5, c.hi + 0.5, c.ties or w.ties)

    def op_fusion(self, i: int, j: int, k: int) -> None:
        """A `fusion` op applied directly (the fuse pass makes them too, at opt_level 2)."""
        x = self.tame(self.pick(i), 4.0)
        y = self.pick(j, lambda v: _bshape(v.shape, x.shape) == x.shape)
        specs = (Spec(x.shape, self.dtype), Spec(y.shape, self.dtype))
        if k % 2 == 0:
            body = compiler.trace(lambda x, y: ops.tanh(x + y) * 0.5 - ops.square(x), *specs, name="fuzz_loop")
            lo = -0.5 - x.mag * x.mag
            self.push(fusion(body, x.t, y.t, kind="loop"), lo, 0.5, x.ties or y.ties)
            return
        axis = j % x.ndim if x.ndim else None
        reducer = [ops.sum, ops.mean, ops.max, ops.min][k // 2 % 4]
        if reducer in (ops.max, ops.min):  # a tie-free operand: x * tanh(y) plus distinct constants
            which = "max" if reducer is ops.max else "min"
            offsets = self.const((self.rng.permutation(max(x.size, 1)) + 0.5).reshape(x.shape) * 0.02)
            self.probe("reduce_" + which, x.t * ops.tanh(y.t) + offsets, axes=None if axis is None else (axis,))
            specs = specs + (Spec(x.shape, self.dtype),)
            body = compiler.trace(lambda x, y, o: reducer(x * ops.tanh(y) + o, axis=axis), *specs, name="fuzz_reduce")
            self.push(fusion(body, x.t, y.t, offsets, kind="reduce"), -x.mag - 0.02 * x.size, x.mag + 0.02 * x.size,
                      True)
            return
        body = compiler.trace(lambda x, y: reducer(x * ops.tanh(y), axis=axis), *specs, name="fuzz_reduce")
        n = x.size if axis is None else x.shape[axis]
        bound = x.mag * n + 0.02 * x.size
        self.push(fusion(body, x.t, y.t, kind="reduce"), -bound, bound, True)


# ---------------------------------------------------------------------------- programs
def program_fn(program: list[Step], seed: int, dtype: str, mode: str, mask: int = 0,
               sink: dict | None = None) -> Callable:
    """The traceable fn(params, data) of a program; `sink['builder']` receives the Builder."""
    def fn(params, data):  # noqa: ANN001, ANN202
        builder = Builder(seed, dtype, params, data)
        builder.run(program)
        if sink is not None:
            sink["builder"] = builder
        if mode == "loss":
            return builder.loss()
        if mode == "forward":
            return (builder.loss(), tuple(builder.extras(mask)))
        if mode == "probes":
            return tuple(t for p in builder.probes for t in p.tensors) or (builder.loss(),)
        raise ValueError(mode)
    return fn


def trace_program(program: list[Step], seed: int, dtype: str, mode: str, mask: int = 0,
                  sink: dict | None = None) -> compiler.Graph:
    params, data = input_values(seed, dtype)
    return compiler.trace(program_fn(program, seed, dtype, mode, mask, sink), params, data, name=f"fuzz_{mode}")


def margins(program: list[Step], seed: int) -> float:
    """The smallest distance, relative to max(1, |operand|), of any kink operand to its kink
    (evaluated in float64 by the interpreter); inf if the program has no kinks."""
    sink: dict = {}
    graph = trace_program(program, seed, "float64", "probes", sink=sink)
    probes = sink["builder"].probes
    if not probes:
        return math.inf
    params, data = input_values(seed, "float64")
    values = list(compiler.evaluate(graph, params, data))
    smallest = math.inf
    for p in probes:
        arrays = [np.asarray(values.pop(0), np.float64) for _ in p.tensors]
        smallest = min(smallest, _margin(p, arrays))
    return smallest


def _relative(gap: np.ndarray, scale: np.ndarray) -> float:
    if gap.size == 0:
        return math.inf
    return float(np.min(gap / np.maximum(1.0, np.abs(scale))))


def _top_gap(groups: np.ndarray, which: str) -> float:
    """groups: (G, n) -> the smallest gap between the top two (max) or bottom two (min)."""
    if groups.shape[-1] < 2 or groups.size == 0:
        return math.inf
    s = np.sort(groups, axis=-1)
    gap = s[:, -1] - s[:, -2] if which == "max" else s[:, 1] - s[:, 0]
    edge = s[:, -1] if which == "max" else s[:, 0]
    finite = np.isfinite(gap)
    if not finite.any():
        return math.inf
    return _relative(gap[finite], edge[finite])


def _margin(p: Probe, arrays: list[np.ndarray]) -> float:
    if any(not np.all(np.isfinite(a)) for a in arrays):
        return 0.0
    if p.kind == "zero":
        return _relative(np.abs(arrays[0]), np.zeros(1))
    if p.kind == "tie":
        a, b = np.broadcast_arrays(*arrays)
        return _relative(np.abs(a - b), np.maximum(np.abs(a), np.abs(b)))
    if p.kind == "int":  # trunc jumps at every nonzero integer
        x = arrays[0]
        nearest = np.round(x)
        gap = np.where(nearest == 0, 1.0 - np.abs(x), np.abs(x - nearest))
        return _relative(gap, x)
    if p.kind.startswith("reduce_"):
        x = arrays[0]
        axes = p.attrs["axes"]
        axes = tuple(range(x.ndim)) if axes is None else axes
        rest = [n for n in range(x.ndim) if n not in axes]
        groups = np.transpose(x, rest + list(axes)).reshape(int(np.prod([x.shape[n] for n in rest])), -1)
        return _top_gap(groups, p.kind[len("reduce_"):])
    if p.kind == "pool":
        x = arrays[0]
        (kh, kw), (sh, sw), (ph, pw) = p.attrs["kernel"], p.attrs["stride"], p.attrs["padding"]
        xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
        view = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
        return _top_gap(view.reshape(-1, kh * kw), "max")
    raise ValueError(p.kind)


def all_kinds_program(kinds: list[str] | None = None) -> list[Step]:
    """A deterministic program with every kind three times (different parameters)."""
    kinds = ALL_KINDS if kinds is None else kinds
    program = []
    for rep in range(3):
        for n, kind in enumerate(kinds):
            program.append((kind, (n + rep) % 4, (n + 2 * rep) % 6, rep + 3 * (n % 5)))
    for kind, choices in (("compare", 4), ("int_cmp", 4), ("logical", 3)):  # each variant of these
        program += [(kind, k, k, k) for k in range(choices) if kind in kinds]
    return program


# ---------------------------------------------------------------------------- sample combos
@dataclass
class Combo:
    """Several op samples in one graph: sample outputs feed later samples' inputs (fan-out)."""
    picked: list  # Samples, possibly repeated (a repeat shares its inputs: tied weights)
    fn: Callable
    params: list[np.ndarray]
    data: list[np.ndarray]
    differentiable: bool


LINK = 0.01  # later samples see their own arguments shifted by LINK * tanh(earlier outputs)


def sample_combo(samples: list, dtype: str, seed: int) -> Combo:
    """Compose `samples` into one loss.

    Float argument x of sample m becomes x + LINK * tanh(weighted sum of the outputs of
    samples 0..m-1): one scalar shift, so distinct values stay distinct and away-from-kink
    values stay away (every sample keeps its arguments >= 0.01 from kinks). A sample
    picked twice reads the same inputs. Int/bool arguments are data.
    """
    rng = np.random.default_rng(seed)
    unique: list = []
    for s in samples:
        if all(s is not u for u in unique):
            unique.append(s)
    floats, others = [], []
    slots = {}  # id(sample) -> list of ("p", index) or ("d", index)
    for s in unique:
        slot = []
        for a in s.args:
            a = np.asarray(a)
            if a.dtype.kind == "f":
                slot.append(("p", len(floats)))
                floats.append(a.astype(dtype))
            else:
                slot.append(("d", len(others)))
                others.append(a)
        slots[id(s)] = slot
    weights = {}

    def fn(params, data):  # noqa: ANN001, ANN202
        link = None
        total = None
        outs = []
        for m, s in enumerate(samples):
            call = []
            for kind, index in slots[id(s)]:
                x = params[index] if kind == "p" else data[index]
                if kind == "p" and link is not None:
                    x = x + LINK * ops.tanh(link)
                call.append(x)
            out = s.fn(*call)
            if out.dtype == "bool":
                out = ops.cast(out, dtype)
            if out.dtype != dtype:
                out = ops.cast(out, dtype)
            key = (m, out.shape)
            if key not in weights:
                weights[key] = rng.normal(size=out.shape)
            term = ops.sum(out * ops.constant(weights[key].astype(dtype)))
            outs.append(out)
            total = term if total is None else total + term
            # the next samples see this one's output (it fans out to every later sample)
            link = term * 0.1 if link is None else link + term * 0.1
        return total

    differentiable = all(s.differentiable for s in samples) and bool(floats)
    return Combo(samples, fn, floats, others, differentiable)


# ---------------------------------------------------------------------------- matmul layouts
MATMUL_LAYOUTS = ("contiguous", "transposed", "strided", "vector")


def matmul_inputs(cases: list[tuple], dtype: str, seed: int) -> tuple[Callable, list[np.ndarray]]:
    """fn(params) -> loss of several products with the given shapes and operand layouts.

    A case is (m, k, n, a_layout, b_layout, batch): a transposed operand is stored the other
    way round and swapaxes'd, a strided one is every other column of a wider input, a
    vector one drops the m (or n) axis. batch: 0 none, 1 on A only, 2 on both, 3 broadcast.
    """
    rng = np.random.default_rng(seed)
    arrays: list[np.ndarray] = []
    plans = []
    for m, k, n, a_layout, b_layout, batch in cases:
        a_batch = {0: (), 1: (2,), 2: (2,), 3: (2, 1)}[batch]
        b_batch = {0: (), 1: (), 2: (2,), 3: (3,)}[batch]
        specs = []
        for layout, batch_shape, rows, cols in (("a", a_batch, m, k), ("b", b_batch, k, n)):
            kind = a_layout if layout == "a" else b_layout
            if kind == "vector":
                shape = (cols,) if layout == "a" else (rows,)
            elif kind == "transposed":
                shape = batch_shape + (cols, rows)
            elif kind == "strided":
                shape = batch_shape + (rows, 2 * cols)
            else:
                shape = batch_shape + (rows, cols)
            specs.append((kind, len(arrays)))
            arrays.append(rng.uniform(-1.0, 1.0, size=shape).astype(dtype))
        plans.append(specs)
    weights: dict = {}

    def view(x: Tensor, kind: str) -> Tensor:
        if kind == "transposed":
            return ops.swapaxes(x, -1, -2)
        if kind == "strided":
            return x[..., ::2]
        return x

    def fn(params):  # noqa: ANN001, ANN202
        total = None
        for n, ((a_kind, a), (b_kind, b)) in enumerate(plans):
            out = view(params[a], a_kind) @ view(params[b], b_kind)
            if n not in weights:
                weights[n] = rng.normal(size=out.shape)
            term = ops.sum(out * ops.constant(weights[n].astype(dtype)))
            total = term if total is None else total + term
        return total

    return fn, arrays
