"""Shape and indexing ops: shape rules, numpy references, error messages, front ends, VJPs."""
import numpy as np
import pytest

import compiler
from compiler import Spec, ops
from compiler.errors import ShapeError, TraceError
from compiler.ir.types import TensorType
from compiler.ops.registry import infer_type
from compiler.ops.tensor import apply
from tests.gradcheck import check_grad
from tests.ops.samples import ALL_SAMPLES  # noqa: F401 - before samples_shape: avoids an import cycle
from tests.ops.samples_shape import SAMPLES


def _arange(*shape, dtype="float64"):
    return np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)


def _run_op(op, arrays, **attrs):
    """Trace one IR op on `arrays` (type from its rule) and evaluate it with the reference."""
    graph = compiler.trace(lambda *xs: apply(op, *xs, **attrs), *arrays)
    return compiler.evaluate(graph, *arrays)


def _ops_in(graph):
    return [node.op for _, node in graph.nodes()]


def _clip_take(a, idx, axis):  # numpy's own clip mode, after counting negatives from the end
    n = a.shape[axis]
    return np.take(a, np.where(idx < 0, idx + n, idx), axis=axis, mode="clip")


def _loop_scatter_add(updates, idx, axis, size):
    out_shape = updates.shape[:axis] + (size,) + updates.shape[axis + idx.ndim:]
    out = np.zeros(out_shape, updates.dtype)
    for j in np.ndindex(*idx.shape):
        k = int(np.clip(idx[j] + size if idx[j] < 0 else idx[j], 0, size - 1))
        src = (slice(None),) * axis + j
        dst = (slice(None),) * axis + (k,)
        out[dst] += updates[src]
    return out


# --------------------------------------------------- IR ops against numpy
OP_CASES = [
    # (op, arrays, attrs, expected)
    ("transpose", [_arange(2, 3, 4)], {"perm": (2, 0, 1)}, np.transpose(_arange(2, 3, 4), (2, 0, 1))),
    ("transpose", [np.float64(3)], {"perm": ()}, np.float64(3)),
    ("transpose", [_arange(3, 1)], {"perm": (1, 0)}, _arange(3, 1).T),
    ("reshape", [_arange(2, 3)], {"shape": (3, 2)}, _arange(2, 3).reshape(3, 2)),
    ("reshape", [_arange(2, 3)], {"shape": (1, 6, 1)}, _arange(2, 3).reshape(1, 6, 1)),
    ("reshape", [np.float64(2)], {"shape": (1, 1)}, np.full((1, 1), 2.0)),
    ("reshape", [np.zeros((0, 3))], {"shape": (3, 0)}, np.zeros((3, 0))),
    ("broadcast_to", [_arange(3)], {"shape": (2, 3)}, np.broadcast_to(_arange(3), (2, 3))),
    ("broadcast_to", [np.float64(5)], {"shape": (2, 2)}, np.full((2, 2), 5.0)),
    ("broadcast_to", [_arange(3, 1)], {"shape": (4, 3, 5)}, np.broadcast_to(_arange(3, 1), (4, 3, 5))),
    ("broadcast_to", [np.zeros((0, 1))], {"shape": (0, 4)}, np.zeros((0, 4))),
    ("squeeze", [_arange(1, 3, 1)], {"axes": (0, 2)}, _arange(3)),
    ("squeeze", [_arange(1, 3, 1)], {"axes": (2,)}, _arange(1, 3)),
    ("squeeze", [_arange(1)], {"axes": (0,)}, np.float64(0)),
    ("squeeze", [_arange(2, 3)], {"axes": ()}, _arange(2, 3)),
    ("expand_dims", [_arange(3)], {"axes": (0, 2)}, _arange(3).reshape(1, 3, 1)),
    ("expand_dims", [np.float64(1)], {"axes": (0,)}, np.ones(1)),
    ("expand_dims", [_arange(2, 3)], {"axes": (1,)}, _arange(2, 3)[:, None]),
    ("slice", [_arange(5)], {"starts": (1,), "stops": (4,), "steps": (1,)}, _arange(5)[1:4]),
    ("slice", [_arange(5)], {"starts": (0,), "stops": (5,), "steps": (2,)}, _arange(5)[::2]),
    ("slice", [_arange(5)], {"starts": (0,), "stops": (6,), "steps": (2,)}, _arange(5)[::2]),  # loose stop
    ("slice", [_arange(5)], {"starts": (4,), "stops": (-1,), "steps": (-1,)}, _arange(5)[::-1]),
    ("slice", [_arange(5)], {"starts": (3,), "stops": (-1,), "steps": (-3,)}, _arange(5)[3::-3]),
    ("slice", [_arange(5)], {"starts": (0,), "stops": (0,), "steps": (1,)}, _arange(5)[:0]),
    ("slice", [_arange(5)], {"starts": (7,), "stops": (2,), "steps": (1,)}, np.zeros(0)),  # empty: unchecked
    ("slice", [_arange(3, 4)], {"starts": (2, 1), "stops": (-1, 4), "steps": (-2, 2)}, _arange(3, 4)[::-2, 1::2]),
    ("slice", [np.float64(2)], {"starts": (), "stops": (), "steps": ()}, np.float64(2)),
    ("slice", [np.zeros((0, 2))], {"starts": (0, 1), "stops": (0, 2), "steps": (1, 1)}, np.zeros((0, 1))),
    ("pad", [_arange(3)], {"low": (1,), "high": (2,), "interior": (0,), "value": 0.0}, np.pad(_arange(3), (1, 2))),
    ("pad", [_arange(3)], {"low": (0,), "high": (0,), "interior": (2,), "value": -1.0},
     np.array([0, -1, -1, 1, -1, -1, 2.0])),
    ("pad", [_arange(2, 2)], {"low": (1, 0), "high": (0, 1), "interior": (1, 1), "value": 9.0},
     np.array([[9, 9, 9, 9], [0, 9, 1, 9], [9, 9, 9, 9], [2, 9, 3, 9.0]])),
    ("pad", [np.zeros((0,))], {"low": (1,), "high": (1,), "interior": (3,), "value": 5.0}, np.full(2, 5.0)),
    ("pad", [np.float64(4)], {"low": (), "high": (), "interior": (), "value": 0.0}, np.float64(4)),
    ("pad", [np.arange(3, dtype=np.int32)], {"low": (1,), "high": (0,), "interior": (0,), "value": 7.0},
     np.array([7, 0, 1, 2], dtype=np.int32)),
    ("take", [_arange(4, 3), np.array([0, 2, 0], np.int32)], {"axis": 0}, _arange(4, 3)[[0, 2, 0]]),
    ("take", [_arange(2, 4, 3), np.array([[1, -1], [9, -9]], np.int64)], {"axis": 1},
     _clip_take(_arange(2, 4, 3), np.array([[1, -1], [9, -9]]), 1)),
    ("take", [_arange(2, 5), np.array(3, np.int32)], {"axis": 1}, _arange(2, 5)[:, 3]),
    ("take", [_arange(5), np.array([-1, -5, -6, 5], np.int32)], {"axis": 0}, np.array([4.0, 0, 0, 4])),
    ("take", [np.zeros((0, 2)), np.zeros((0,), np.int32)], {"axis": 0}, np.zeros((0, 2))),
    ("take", [np.array([True, False]), np.array([1, 1], np.int32)], {"axis": 0}, np.array([False, False])),
    ("scatter_add", [_arange(2, 5, 3), np.array([0, 3, 0, -1, 7], np.int32)], {"axis": 1, "size": 4},
     _loop_scatter_add(_arange(2, 5, 3), np.array([0, 3, 0, -1, 7]), 1, 4)),
    ("scatter_add", [_arange(2, 2), np.array([[2, 2], [0, 2]], np.int64)], {"axis": 0, "size": 3},
     _loop_scatter_add(_arange(2, 2), np.array([[2, 2], [0, 2]]), 0, 3)),
    ("scatter_add", [np.float64(2), np.array(1, np.int32)], {"axis": 0, "size": 3}, np.array([0, 2.0, 0])),
    ("scatter_add", [np.zeros((3, 0)), np.zeros((0,), np.int32)], {"axis": 1, "size": 0}, np.zeros((3, 0))),
    ("concatenate", [_arange(2, 3), _arange(2, 1)], {"axis": 1}, np.concatenate([_arange(2, 3), _arange(2, 1)], 1)),
    ("concatenate", [_arange(2), _arange(0), _arange(3)], {"axis": 0}, np.array([0, 1, 0, 1, 2.0])),
    ("concatenate", [_arange(2, 2)], {"axis": 0}, _arange(2, 2)),
]


@pytest.mark.parametrize("op, arrays, attrs, expected", OP_CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_op_rule_and_reference_match_numpy(op, arrays, attrs, expected):
    result = _run_op(op, arrays, **attrs)
    assert result.shape == np.shape(expected)
    assert result.dtype == np.asarray(arrays[0]).dtype
    np.testing.assert_array_equal(result, expected)


def test_references_do_not_alias_their_inputs():
    x = _arange(2, 3)
    for op, attrs in [("transpose", {"perm": (1, 0)}), ("reshape", {"shape": (6,)}),
                      ("slice", {"starts": (0, 0), "stops": (2, 3), "steps": (1, 1)})]:
        out = _run_op(op, [x], **attrs)
        out[...] = -1
    np.testing.assert_array_equal(x, _arange(2, 3))


# ------------------------------------------------------ shape rule errors
F6, F23 = TensorType((6,), "float32"), TensorType((2, 3), "float32")
I3, F3 = TensorType((3,), "int32"), TensorType((3,), "float32")

ERROR_CASES = [
    ("transpose", [F23], {"perm": (0, 0)}, r"perm \(0,0\) is not a permutation of 2 axes"),
    ("transpose", [F23], {"perm": (0,)}, r"perm \(0,\) is not a permutation of 2 axes"),
    ("transpose", [F23], {"perm": [1, 0]}, r"perm must be a tuple of ints"),
    ("reshape", [F6], {"shape": (4,)}, r"cannot reshape f32\[6\] to \(4,\)"),
    ("reshape", [F6], {"shape": (-1, 6)}, r"cannot reshape f32\[6\] to \(-1,6\)"),
    ("reshape", [F6], {"shape": (2.0, 3)}, r"shape must be a tuple of ints"),
    ("broadcast_to", [F3], {"shape": (4, 2)}, r"cannot broadcast f32\[3\] to \(4,2\)"),
    ("broadcast_to", [F23], {"shape": (3,)}, r"cannot broadcast f32\[2,3\] to \(3,\)"),
    ("squeeze", [F23], {"axes": (1,)}, r"cannot squeeze axis 1 of f32\[2,3\]: its size is 3, not 1"),
    ("squeeze", [TensorType((1, 1), "float32")], {"axes": (1, 0)}, r"must be sorted, unique and in \[0, 2\)"),
    ("squeeze", [F23], {"axes": (-1,)}, r"axes \(-1,\) must be sorted, unique and in \[0, 2\)"),
    ("expand_dims", [F3], {"axes": (2,)}, r"axes \(2,\) must be sorted, unique and in \[0, 2\)"),
    ("expand_dims", [F3], {"axes": 0}, r"axes must be a tuple of ints"),
    ("slice", [F23], {"starts": (0,), "stops": (2,), "steps": (1,)}, r"starts \(0,\) needs one entry per axis \(2\)"),
    ("slice", [F3], {"starts": (0,), "stops": (3,), "steps": (0,)}, r"slice step of axis 0 is 0"),
    ("slice", [F3], {"starts": (0,), "stops": (4,), "steps": (1,)},
     r"range\(0, 4, 1\) reads outside axis 0 of size 3 in f32\[3\]"),
    ("slice", [F3], {"starts": (-1,), "stops": (2,), "steps": (1,)}, r"range\(-1, 2, 1\) reads outside axis 0"),
    ("slice", [F3], {"starts": (3,), "stops": (0,), "steps": (-1,)}, r"range\(3, 0, -1\) reads outside axis 0"),
    ("pad", [F3], {"low": (-1,), "high": (0,), "interior": (0,), "value": 0.0},
     r"low padding \(-1,\) must be non-negative"),
    ("pad", [F3], {"low": (0,), "high": (0,), "interior": (-2,), "value": 0.0}, r"interior padding \(-2,\) must be"),
    ("pad", [F3], {"low": (0, 0), "high": (0,), "interior": (0,), "value": 0.0},
     r"low \(0,0\) needs one entry per axis \(1\)"),
    ("pad", [F3], {"low": (0,), "high": (0,), "interior": (0,), "value": "0"}, r"value must be a Python float"),
    ("pad", [F3], {"low": (0,), "high": (0,), "interior": (0,), "value": True}, r"value must be a Python float"),
    ("take", [F23, F3], {"axis": 0}, r"indices must be int32 or int64, got f32\[3\]"),
    ("take", [F23, I3], {"axis": 2}, r"axis 2 is out of range for f32\[2,3\]"),
    ("take", [F23, I3], {"axis": -1}, r"axis -1 is out of range"),
    ("take", [TensorType((), "float32"), I3], {"axis": 0}, r"axis 0 is out of range for f32\[\]"),
    ("take", [TensorType((0, 2), "float32"), I3], {"axis": 0}, r"cannot take from axis 0 of f32\[0,2\]: it is empty"),
    ("take", [F23, I3], {"axis": True}, r"axis must be an int"),
    ("scatter_add", [F23, I3], {"axis": 0, "size": 4},
     r"updates f32\[2,3\] do not have the indices' shape \(3,\) at axis 0"),
    ("scatter_add", [F23, I3], {"axis": 2, "size": 4}, r"axis 2 is out of range for updates f32\[2,3\]"),
    ("scatter_add", [F23, I3], {"axis": 1, "size": 0}, r"size 0 cannot receive 3 indexed update"),
    ("scatter_add", [F23, I3], {"axis": 1, "size": -1}, r"size -1 cannot receive"),
    ("scatter_add", [F23, F3], {"axis": 1, "size": 2}, r"indices must be int32 or int64"),
    ("concatenate", [F23, TensorType((2, 3), "float64")], {"axis": 0}, r"operand dtypes differ \(float32, float64\)"),
    ("concatenate", [F23, F3], {"axis": 0}, r"cannot concatenate f32\[2,3\] and f32\[3\] along axis 0"),
    ("concatenate", [F23, TensorType((3, 3), "float32")], {"axis": 1}, r"cannot concatenate .* along axis 1"),
    ("concatenate", [F23, F23], {"axis": 2}, r"axis 2 is out of range for f32\[2,3\]"),
    ("concatenate", [TensorType((), "float32")] * 2, {"axis": 0}, r"axis 0 is out of range for f32\[\]"),
    ("concatenate", [], {"axis": 0}, r"needs at least one operand"),
    ("take", [F23], {"axis": 0}, r"takes 2 operand\(s\), got 1"),
    ("pad", [F3], {"low": (0,), "high": (0,), "interior": (0,)}, r"missing attribute\(s\) value"),
]


@pytest.mark.parametrize("op, types, attrs, message", ERROR_CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_shape_rule_errors_name_the_problem(op, types, attrs, message):
    with pytest.raises(ShapeError, match=message):
        infer_type(op, types, attrs)


def test_graph_errors_name_op_and_line():
    with pytest.raises(ShapeError, match=r"^reshape at test_shape\.py:\d+: cannot reshape f64\[6\] to \(4,\)$"):
        compiler.trace(lambda x: apply("reshape", x, shape=(4,)), Spec((6,), "float64"))


# --------------------------------------------------- front ends vs numpy
X234 = _arange(2, 3, 4) / 7.0
X13 = _arange(1, 3) + 0.5
X0 = np.float64(1.5)

FRONT_END_CASES = [
    # (name, fn(module, *arrays), arrays); fn runs once with numpy and once traced with ops
    ("transpose-default", lambda m, x: m.transpose(x), [X234]),
    ("transpose-axes", lambda m, x: m.transpose(x, (1, -1, 0)), [X234]),
    ("transpose-0d", lambda m, x: m.transpose(x), [X0]),
    ("transpose-int", lambda m, x: m.transpose(x, 0), [np.arange(6.0)]),
    ("T", lambda m, x: x.T, [X234]),
    ("method-transpose", lambda m, x: x.transpose(2, 0, 1), [X234]),
    ("swapaxes", lambda m, x: m.swapaxes(x, 0, -1), [X234]),
    ("moveaxis", lambda m, x: m.moveaxis(x, -1, 0), [X234]),
    ("moveaxis-many", lambda m, x: m.moveaxis(x, (0, 1), (2, 0)), [X234]),
    ("reshape", lambda m, x: m.reshape(x, (4, 6)), [X234]),
    ("reshape-minus-one", lambda m, x: m.reshape(x, (-1, 4)), [X234]),
    ("reshape-int", lambda m, x: m.reshape(x, -1), [X234]),
    ("reshape-method", lambda m, x: x.reshape(3, -1, 2), [X234]),
    ("reshape-0d", lambda m, x: m.reshape(x, (1, 1, 1)), [X0]),
    ("reshape-to-0d", lambda m, x: m.reshape(x, ()), [np.ones((1, 1))]),
    ("reshape-empty", lambda m, x: m.reshape(x, (-1, 2)), [np.zeros((3, 0, 2))]),
    ("ravel", lambda m, x: m.ravel(x), [X234]),
    ("broadcast_to", lambda m, x: m.broadcast_to(x, (5, 2, 3)), [X13]),
    ("broadcast_to-0d", lambda m, x: m.broadcast_to(x, 3), [X0]),
    ("squeeze-all", lambda m, x: m.squeeze(x), [np.ones((1, 3, 1))]),
    ("squeeze-axis", lambda m, x: m.squeeze(x, -1), [np.ones((1, 3, 1))]),
    ("squeeze-tuple", lambda m, x: m.squeeze(x, (2, 0)), [np.ones((1, 3, 1))]),
    ("squeeze-method", lambda m, x: x.squeeze(0), [X13]),
    ("expand_dims", lambda m, x: m.expand_dims(x, -1), [X234]),
    ("expand_dims-tuple", lambda m, x: m.expand_dims(x, (0, -1, 2)), [X13]),
    ("expand_dims-0d", lambda m, x: m.expand_dims(x, 0), [X0]),
    ("take-flat", lambda m, x: m.take(x, [5, 0, 23, 5]), [X234]),
    ("take-axis", lambda m, x: m.take(x, np.array([[2, -1], [0, 0]]), axis=-1), [X234]),
    ("take-scalar", lambda m, x: m.take(x, 1, axis=1), [X234]),
    ("take-0d-flat", lambda m, x: m.take(x, 0), [X0]),
    ("take-empty", lambda m, x: m.take(x, [], axis=0), [X234]),
    ("take-tensor", lambda m, x, i: m.take(x, i, axis=1), [X234, np.array([2, 0, 2], np.int64)]),
    ("concatenate", lambda m, x, y: m.concatenate([x, y, x], axis=0), [X13, X13 * 2]),
    ("concatenate-neg", lambda m, x: m.concatenate((x, x[:, :1]), axis=-1), [X13]),
    ("concatenate-one", lambda m, x: m.concatenate([x]), [X13]),
    ("concatenate-promote", lambda m, x, i: m.concatenate([x, i], axis=1), [X13, np.ones((1, 2), np.int32)]),
    ("stack", lambda m, x, y: m.stack([x, y]), [X234, X234 + 1]),
    ("stack-last", lambda m, x, y: m.stack((x, y, x), axis=-1), [X13, X13 + 1]),
    ("stack-0d", lambda m, x: m.stack([x, x * 2]), [X0]),
    ("pad-int", lambda m, x: m.pad(x, 1), [X13]),
    ("pad-pair", lambda m, x: m.pad(x, (2, 1), constant_values=-3.0), [X234]),
    ("pad-per-axis", lambda m, x: m.pad(x, ((0, 1), (2, 0), (1, 1))), [X234]),
    ("pad-one-pair-list", lambda m, x: m.pad(x, [[1, 2]]), [X13]),
    ("pad-int-dtype", lambda m, x: m.pad(x, 1, constant_values=5), [np.arange(3, dtype=np.int32)]),
    ("pad-0d", lambda m, x: m.pad(x, 2), [X0]),
    ("composite", lambda m, x: m.reshape(m.transpose(x, (2, 0, 1)), (4, 6))[::-1, 1::2].T, [X234]),
]


@pytest.mark.parametrize("name, fn, arrays", FRONT_END_CASES, ids=[c[0] for c in FRONT_END_CASES])
def test_front_end_matches_numpy(name, fn, arrays):
    graph = compiler.trace(lambda *xs: fn(ops, *xs), *arrays)
    result = compiler.evaluate(graph, *arrays)
    expected = fn(np, *[np.asarray(a) for a in arrays])
    assert result.shape == expected.shape
    np.testing.assert_allclose(result, expected.astype(result.dtype), rtol=1e-6)


def _trace_ops(fn, *arrays):
    return _ops_in(compiler.trace(fn, *arrays))


@pytest.mark.parametrize("fn", [
    lambda x: ops.reshape(x, (2, 3)), lambda x: ops.reshape(x, (-1, 3)), lambda x: ops.transpose(x, (0, 1)),
    lambda x: ops.broadcast_to(x, (2, 3)), lambda x: ops.squeeze(x), lambda x: ops.expand_dims(x, ()),
    lambda x: ops.pad(x, 0), lambda x: ops.concatenate([x], axis=1), lambda x: ops.moveaxis(x, 0, 0),
    lambda x: ops.swapaxes(x, 1, 1), lambda x: x[:], lambda x: x[...], lambda x: x[::1, -5:10],
])
def test_no_op_calls_return_their_operand(fn):
    with compiler.ir.graph.building(compiler.Graph()) as graph:
        x = ops.Tensor(graph, graph.add_input("x", TensorType((2, 3), "float32")))
        assert fn(x) is x
    assert len(graph) == 1


def test_attributes_are_normalized():
    def attrs(fn, shape):
        graph = compiler.trace(fn, Spec(shape, "float32"))
        return [(node.op, dict(node.attrs)) for _, node in graph.nodes() if node.op != "input"]

    assert attrs(lambda x: x[::-1], (5,)) == [("slice", {"starts": (4,), "stops": (-1,), "steps": (-1,)})]
    assert attrs(lambda x: x[0:100:2], (5,)) == [("slice", {"starts": (0,), "stops": (5,), "steps": (2,)})]
    assert attrs(lambda x: x[10:-10:-3], (5,)) == [("slice", {"starts": (4,), "stops": (0,), "steps": (-3,)})]
    assert attrs(lambda x: x[3:1], (5,)) == [("slice", {"starts": (0,), "stops": (0,), "steps": (1,)})]
    assert attrs(lambda x: ops.squeeze(x, (-1, 0)), (1, 2, 1)) == [("squeeze", {"axes": (0, 2)})]
    assert attrs(lambda x: ops.expand_dims(x, (-1, 0)), (2,)) == [("expand_dims", {"axes": (0, 2)})]
    assert attrs(lambda x: ops.transpose(x, (-1, 0, 1)), (2, 3, 4)) == [("transpose", {"perm": (2, 0, 1)})]
    assert attrs(lambda x: ops.reshape(x, (-1, 2)), (2, 3, 4)) == [("reshape", {"shape": (12, 2)})]
    assert attrs(lambda x: ops.concatenate([x, x], -1), (2, 3)) == [("concatenate", {"axis": 1})]
    assert attrs(lambda x: ops.pad(x, (1, 2), 3), (2,)) == [
        ("pad", {"low": (1,), "high": (2,), "interior": (0,), "value": 3.0})]
    stacked = attrs(lambda x: ops.stack([x, x], axis=-1), (2,))
    assert [op for op, _ in stacked] == ["expand_dims", "expand_dims", "concatenate"]
    assert stacked[-1][1] == {"axis": 1}
    assert isinstance(stacked[0][1]["axes"][0], int)


def test_take_constant_indices_become_int32_constants():
    graph = compiler.trace(lambda x: ops.take(x, np.array([1, 0], np.int64)), Spec((3,), "float32"))
    (const,) = [node for _, node in graph.nodes() if node.op == "constant"]
    assert const.type == TensorType((2,), "int32")


FRONT_END_ERRORS = [
    (lambda x: ops.reshape(x, (-1, -1)), ShapeError, r"reshape: cannot reshape f32\[2,3\] to \(-1,-1\): at most one"),
    (lambda x: ops.reshape(x, (4, -1)), ShapeError, r"reshape: cannot reshape f32\[2,3\] to \(4,-1\)"),
    (lambda x: ops.reshape(x, (0, -1)), ShapeError, r"reshape: cannot reshape f32\[2,3\] to \(0,-1\)"),
    (lambda x: ops.reshape(x, (5,)), ShapeError, r"reshape at test_shape\.py:\d+: cannot reshape f32\[2,3\] to \(5,\)"),
    (lambda x: ops.reshape(x, "a"), ShapeError, r"reshape: shape must be an int or a tuple of ints"),
    (lambda x: ops.transpose(x, (0, 2)), ShapeError, r"transpose: axis 2 is out of bounds for a tensor of rank 2"),
    (lambda x: ops.transpose(x, (1, 1)), ShapeError, r"perm \(1,1\) is not a permutation of 2 axes"),
    (lambda x: ops.transpose(x, (0,)), ShapeError, r"perm \(0,\) is not a permutation of 2 axes"),
    (lambda x: ops.swapaxes(x, 0, 5), ShapeError, r"swapaxes: axis 5 is out of bounds"),
    (lambda x: ops.moveaxis(x, (0, 1), 0), ShapeError, r"moveaxis: source \(0, 1\) and destination 0 differ"),
    (lambda x: ops.moveaxis(x, (0, 0), (0, 1)), ShapeError, r"moveaxis: repeated axis"),
    (lambda x: ops.broadcast_to(x, (3, 2)), ShapeError, r"cannot broadcast f32\[2,3\] to \(3,2\)"),
    (lambda x: ops.squeeze(x, 1), ShapeError, r"squeeze at .*: cannot squeeze axis 1 of f32\[2,3\]: its size is 3"),
    (lambda x: ops.squeeze(x, 2), ShapeError, r"squeeze: axis 2 is out of bounds for a tensor of rank 2"),
    (lambda x: ops.expand_dims(x, (0, 0)), ShapeError, r"expand_dims: repeated axis"),
    (lambda x: ops.expand_dims(x, 3), ShapeError, r"expand_dims: axis 3 is out of bounds for a tensor of rank 3"),
    (lambda x: ops.expand_dims(x, 1.0), ShapeError, r"expand_dims: axis must be an int, got 1.0"),
    (lambda x: ops.take(x, [0, 6]), TraceError, r"take: index 6 is out of bounds for axis 0 with size 6"),
    (lambda x: ops.take(x, [-4], axis=1), TraceError, r"take: index -4 is out of bounds for axis 1 with size 3"),
    (lambda x: ops.take(x, [0.5]), TraceError, r"take: indices must be integers, got float64"),
    (lambda x: ops.take(x, x), TraceError, r"take: index tensors must be int32 or int64, got f32\[2,3\]"),
    (lambda x: ops.take(ops.sum(x), 0, axis=0), ShapeError, r"take: cannot take along an axis of a 0-d tensor"),
    (lambda x: ops.take(x, 0, axis=2), ShapeError, r"take: axis 2 is out of bounds"),
    (lambda x: ops.concatenate([]), ShapeError, r"concatenate: expects a non-empty list of tensors"),
    (lambda x: ops.concatenate(x), ShapeError, r"concatenate: expects a non-empty list of tensors"),
    (lambda x: ops.concatenate([ops.sum(x), ops.sum(x)]), ShapeError,
     r"zero-dimensional tensors cannot be concatenated"),
    (lambda x: ops.concatenate([x, x.T]), ShapeError, r"cannot concatenate f32\[2,3\] and f32\[3,2\] along axis 0"),
    (lambda x: ops.concatenate([x, x], axis=2), ShapeError, r"concatenate: axis 2 is out of bounds"),
    (lambda x: ops.stack([x, x.T]), ShapeError,
     r"stack: all tensors must have the same shape, got f32\[2,3\] and f32\[3,2\]"),
    (lambda x: ops.stack([x, x], axis=3), ShapeError, r"stack: axis 3 is out of bounds for a tensor of rank 3"),
    (lambda x: ops.stack([]), ShapeError, r"stack: expects a non-empty list"),
    (lambda x: ops.pad(x, -1), ShapeError, r"pad: pad_width must be non-negative ints, got -1"),
    (lambda x: ops.pad(x, (1, 2, 3)), ShapeError,
     r"pad: pad_width \(1, 2, 3\) does not give \(before, after\) for 2 axes"),
    (lambda x: ops.pad(x, 1.5), ShapeError, r"pad: pad_width must be non-negative ints"),
    (lambda x: ops.pad(x, 1, constant_values=[1, 2]), ShapeError, r"pad: constant_values must be a number"),
    (lambda x: ops.pad(x, 1, constant_values=x), ShapeError, r"pad: constant_values must be a number"),
    (lambda x: ops.pad(x, [[1, 2], [3]]), ShapeError, r"pad: pad_width \[\[1, 2\], \[3\]\] does not give"),
    (lambda x: ops.take(x, [[0, 1], [2]]), TraceError, r"take: cannot use \[\[0, 1\], \[2\]\] as an index array"),
    (lambda x: ops.transpose(x, 1), ShapeError, r"perm \(1,\) is not a permutation of 2 axes"),
    (lambda x: ops.transpose(x, "ab"), ShapeError, r"transpose: axis must be an int, got 'ab'"),
]


@pytest.mark.parametrize("fn, error, message", FRONT_END_ERRORS, ids=[m[:40] for _, _, m in FRONT_END_ERRORS])
def test_front_end_errors(fn, error, message):
    with pytest.raises(error, match=message):
        compiler.trace(fn, Spec((2, 3), "float32"))


# --------------------------------------------------------------- VJP rules
def test_backward_graphs_use_the_transposed_op():
    x, i = _arange(4, 3), np.array([0, 2, 0], np.int32)
    for fn, forward, backward in [
        (lambda x, i: ops.sum(ops.take(x, i)), "take", "scatter_add"),
        (lambda x, i: ops.sum(x[1::2]), "slice", "pad"),
        (lambda x, i: ops.sum(ops.pad(x, 1)), "pad", "slice"),
        (lambda x, i: ops.sum(ops.concatenate([x, x], axis=1)), "concatenate", "slice"),
    ]:
        graph = compiler.trace(fn, x, i)
        assert forward in _ops_in(graph)
        assert backward in _ops_in(compiler.grad(graph))


GRAD_CASES = [
    ("getitem-mixed", lambda x, i: x[0, ..., i, ::-1], [_arange(2, 3, 4, 5) / 9, np.array([[1, 0], [3, 3]], np.int32)]),
    ("getitem-separated", lambda x, i: x[1, None, :, i], [_arange(2, 3, 4) / 9, np.array([0, 3, 0], np.int32)]),
    ("slice-of-slice", lambda x: x[::-2][1:, None][::-1], [_arange(7, 2) / 5]),
    ("empty-slice", lambda x: ops.concatenate([x[3:1], x[:1]]), [_arange(4, 2) / 5]),
    ("pad-interior-neg-step", lambda x: ops.pad(x[::-1], 1)[::-3], [_arange(5) / 3]),
    ("transpose-chain", lambda x: ops.moveaxis(x, 0, -1).reshape(4, 6).T[1:], [_arange(2, 3, 4) / 7]),
    ("scatter-take", lambda x, i: ops.take(apply("scatter_add", x, i, axis=0, size=5), i),
     [_arange(3, 2) / 4, np.array([4, -1, 1], np.int32)]),
    ("broadcast-squeeze", lambda x: ops.squeeze(ops.broadcast_to(x, (2, 1, 3)), 1) * x.reshape(1, 3),
     [_arange(1, 3) + 0.5]),
]


@pytest.mark.parametrize("name, fn, args", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_vjp_matches_finite_differences(name, fn, args):
    check_grad(fn, args)


LINEAR_SAMPLES = [s for s in SAMPLES if s.differentiable and np.asarray(s.args[0]).dtype == np.float64
                  and all(np.asarray(a).dtype.kind == "i" for a in s.args[1:])]


@pytest.mark.parametrize("sample", LINEAR_SAMPLES, ids=lambda s: s.id)
def test_vjp_of_vjp_is_the_op_again(sample):
    """Shape ops are linear in their float operand, so transposing twice gives f back:
    differentiating the VJP graph (IR built by the rules) proves the rules of the rules."""
    args = [np.asarray(a) for a in sample.args]
    graph = compiler.trace(sample.fn, *args)
    out_type = graph.type(graph.outputs[0])
    rng = np.random.default_rng(0)
    ct = rng.normal(size=out_type.shape)
    probe = rng.normal(size=args[0].shape)
    once = compiler.vjp(graph, argnums=0)
    # vjp names its cotangent inputs ct.<i>; rename the first ones so a second vjp can add its own
    ct_input = once.inputs[-1]
    once.replace_node(ct_input, attrs={**once.node(ct_input).attrs, "name": "first_ct"})
    twice = compiler.vjp(once, argnums=len(args))  # with respect to the output cotangent
    result = compiler.evaluate(twice, *args, ct, probe)
    # f(probe) - f(0) is the linear part (a pad with a non-zero value is affine)
    expected = compiler.evaluate(graph, probe, *args[1:]) - compiler.evaluate(graph, 0 * probe, *args[1:])
    np.testing.assert_allclose(result, expected, rtol=1e-12, atol=1e-12)
