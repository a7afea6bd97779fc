"""The inline transcendentals (compiler/codegen/vecmath.py): accuracy, special values, vectorization.

Accuracy is measured in ulps of the exact result's binade (denormal ulp below the normal
range) over random bit patterns (every exponent and sign), dense sweeps of each function's
interesting range, small magnitudes and the denormal neighbourhood. References: numpy in
float64 for float32 results, numpy in long double (x87, 64-bit mantissa) for float64 results.
Bounds hold with and without FMA contraction (vecmath.FUSED = False emits fmul + fadd, as a
host without FMA would); measured maxima are about exp 0.83, log 0.82, log1p 0.81,
tanh 1.45, sigmoid 1.83 ulp (glibc: tanhf 2.09, the same sigmoid formula on expf 2.14).
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import compiler
from compiler import Spec, ops
from compiler.codegen import assembly, compile as compile_graph, vecmath

OPS = {"exp": ops.exp, "log": ops.log, "log1p": ops.log1p, "tanh": ops.tanh, "sigmoid": ops.sigmoid}
MAX_ULP = {"exp": 1.5, "log": 1.5, "log1p": 1.5, "tanh": 2.0, "sigmoid": 2.5}
RANGES = {  # (float32, float64) dense sweeps: the whole finite-result range and a bit beyond
    "exp": ((-110, 95), (-760, 720)), "log": ((0, 4), (0, 4)), "log1p": ((-1, 4), (-1, 4)),
    "tanh": ((-12, 12), (-22, 22)), "sigmoid": ((-110, 30), (-760, 50)),
}


@pytest.fixture(autouse=True)
def _vecmath_on(monkeypatch):
    monkeypatch.delenv("PULLBACK_LIBM", raising=False)


def compiled(op: str, dtype: str, n: int):
    graph = compiler.trace(lambda x: OPS[op](x), Spec((n,), dtype), name=f"{op}_{dtype}")
    return compile_graph(graph, cache=False)


def reference(op: str, x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        wide = x.astype(np.float64 if x.dtype == np.float32 else np.longdouble)
        if op == "sigmoid":
            e = np.exp(-np.abs(wide))
            return np.where(wide >= 0, 1 / (1 + e), e / (1 + e))
        return getattr(np, op)(wide)


def ulp_errors(got: np.ndarray, exact: np.ndarray) -> np.ndarray:
    info = np.finfo(got.dtype)
    with np.errstate(all="ignore"):
        exponent = np.floor(np.log2(np.maximum(np.abs(exact), info.tiny)))
        ulp = np.ldexp(np.ones_like(exact), (exponent - info.nmant).astype(int))
        errors = np.abs(got.astype(exact.dtype) - exact) / ulp
        rounded = exact.astype(got.dtype)
    special = ~np.isfinite(rounded)  # inf or nan: must match exactly
    same = (got == rounded) | (np.isnan(got) & np.isnan(rounded))
    return np.where(special | np.isnan(got), np.where(same, 0.0, np.inf), errors)


def sample(op: str, dtype: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "float32":
        patterns = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    else:
        patterns = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True).view(np.float64)
    lo, hi = RANGES[op][dtype == "float64"]
    dense = rng.uniform(lo, hi, n)
    small = rng.uniform(-1, 1, n) * 10.0 ** rng.uniform(-40 if dtype == "float32" else -310, 0, n)
    denormal = rng.uniform(-4, 4, n // 8) * np.finfo(dtype).tiny
    with np.errstate(invalid="ignore"):  # NaN bit patterns
        return np.concatenate([patterns, dense.astype(dtype), small.astype(dtype), denormal.astype(dtype)])


@pytest.mark.parametrize("fused", [True, False], ids=["fma", "no-fma"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", sorted(OPS))
def test_max_ulp_error(op, dtype, fused, monkeypatch):
    monkeypatch.setattr(vecmath, "FUSED", fused)
    n = (250_000 if dtype == "float32" else 60_000) // (1 if fused else 4)
    x = sample(op, dtype, n)
    with np.errstate(all="ignore"):
        got = compiled(op, dtype, x.size)(x)
    errors = ulp_errors(got, reference(op, x))
    i = int(np.argmax(errors))
    assert errors[i] <= MAX_ULP[op], f"{op}({x[i]!r}) = {got[i]!r}, exact {reference(op, x[i:i + 1])[0]!r}"


INF, NAN = float("inf"), float("nan")
SPECIAL = {  # op: [(x, float32 result, float64 result)], compared exactly, sign of zero included.
    # "d" / "-d": a denormal input (a quarter of the smallest normal); "x": the result is the input itself
    "exp": [(-INF, 0, 0), (INF, INF, INF), (NAN, NAN, NAN), (0.0, 1, 1), (-0.0, 1, 1), ("d", 1, 1),
            (89.0, INF, np.exp(89.0)), (710.0, INF, INF), (-104.0, 0, "skip"), (-746.0, 0, 0), (-1e30, 0, 0),
            (1e30, INF, INF)],
    "log": [(0.0, -INF, -INF), (-0.0, -INF, -INF), (-1.0, NAN, NAN), (-INF, NAN, NAN), (INF, INF, INF),
            (NAN, NAN, NAN), (1.0, 0, 0), ("-d", NAN, NAN)],
    "log1p": [(-1.0, -INF, -INF), (-2.0, NAN, NAN), (-INF, NAN, NAN), (INF, INF, INF), (NAN, NAN, NAN),
              (0.0, "x", "x"), (-0.0, "x", "x"), (1e-30, "x", "x"), (-1e-30, "x", "x"), ("d", "x", "x"),
              ("-d", "x", "x")],
    "tanh": [(0.0, "x", "x"), (-0.0, "x", "x"), (INF, 1, 1), (-INF, -1, -1), (NAN, NAN, NAN), (20.0, 1, 1),
             (-30.0, -1, -1), (1e-30, "x", "x"), ("d", "x", "x"), ("-d", "x", "x"), (1e30, 1, 1)],
    "sigmoid": [(0.0, 0.5, 0.5), (-0.0, 0.5, 0.5), (INF, 1, 1), (-INF, 0, 0), (NAN, NAN, NAN), (100.0, 1, 1),
                (-200.0, 0, "skip"), (-800.0, 0, 0), (1e-30, 0.5, 0.5), ("d", 0.5, 0.5)],
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", sorted(OPS))
def test_special_values(op, dtype):
    denormal = np.finfo(dtype).tiny / 4
    xs, expected = [], []
    for x, r32, r64 in SPECIAL[op]:
        result = r32 if dtype == "float32" else r64
        if result == "skip":
            continue
        x = {"d": denormal, "-d": -denormal}.get(x, x)
        xs.append(x)
        expected.append(x if result == "x" else result)
    x, expected = np.array(xs, dtype), np.array(expected, dtype)
    got = compiled(op, dtype, x.size)(x)
    np.testing.assert_array_equal(got, expected, err_msg=f"{op} {dtype} at {x}")
    signed = ~np.isnan(expected)
    np.testing.assert_array_equal(np.signbit(got[signed]), np.signbit(expected[signed]), err_msg=f"{op} {dtype} at {x}")


def test_exp_into_the_denormal_range():
    x = np.linspace(-104, -87, 100_001, dtype=np.float32)  # results straddle the normal/denormal boundary
    got = compiled("exp", "float32", x.size)(x)
    assert ulp_errors(got, reference("exp", x)).max() <= 1.0
    assert np.all(np.diff(got) >= 0)  # monotonic, no gaps where the scaling changes


def test_tanh_and_log1p_are_relatively_accurate_near_zero():
    x = np.concatenate([np.geomspace(1e-38, 1e-2, 20_000), -np.geomspace(1e-38, 1e-2, 20_000)]).astype(np.float32)
    for op in ("tanh", "log1p"):
        got = compiled(op, "float32", x.size)(x)
        rel = np.abs(got.astype(np.float64) / reference(op, x) - 1)
        assert rel.max() <= 2 * 2.0 ** -24, op


# A direct call (small code model) or the address load before an indirect one (large model).
LIBM_CALL = re.compile(r"(?:\bcall\w*\s+\*?|\bmovabsq\s+\$)(expf?|logf?|log1pf?|tanhf?)(@PLT|@GOT)?\b", re.M)
PACKED_MATH = re.compile(r"\b(v?(fmadd\w*|mul|add|sub)p[sd])\s.*%[xyz]mm", re.M)


@pytest.mark.parametrize("op", ["exp", "tanh", "sigmoid", "log"])
def test_elementwise_loop_vectorizes_without_libm_calls(op):
    graph = compiler.trace(lambda x: OPS[op](x), Spec((4096,), "float32"), name=op)
    text = assembly(graph)
    assert not LIBM_CALL.search(text), LIBM_CALL.search(text).group(0)
    assert PACKED_MATH.search(text), "no packed (SIMD) arithmetic in the elementwise loop"


def test_libm_switch_restores_the_calls(monkeypatch):
    monkeypatch.setenv("PULLBACK_LIBM", "1")
    graph = compiler.trace(lambda x: (ops.exp(x), ops.tanh(x)), Spec((4096,), "float32"), name="libm")
    calls = {m.group(1) for m in LIBM_CALL.finditer(assembly(graph))}
    assert calls == {"expf", "tanhf"}
    x = np.linspace(-5, 5, 4096, dtype=np.float32)
    e, t = compile_graph(graph, cache=False)(x)
    np.testing.assert_allclose(e, np.exp(x), rtol=1e-6)
    np.testing.assert_allclose(t, np.tanh(x), rtol=1e-6, atol=1e-7)
