"""Symbolic tensors: what a traced function sees instead of numpy arrays.

A Tensor names one value of a Graph. Its operators and methods record ops into that
graph through `apply`; Python and numpy scalars mix in as constants.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from compiler.errors import TraceError
from compiler.ir.graph import Graph, current_graph
from compiler.ir.types import FLOAT_DTYPES, INT_DTYPES, TensorType


class Tensor:
    __slots__ = ("graph", "id")
    __array_priority__ = 1000  # numpy defers to our operators: ndarray * Tensor -> Tensor

    def __init__(self, graph: Graph, node_id: int) -> None:
        self.graph = graph
        self.id = node_id

    # ---------------------------------------------------------------- metadata
    @property
    def type(self) -> TensorType:
        return self.graph.node(self.id).type

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return self.type.size

    def __len__(self) -> int:
        if not self.shape:
            raise TraceError("len() of a 0-d tensor")
        return self.shape[0]

    def __repr__(self) -> str:
        return f"Tensor(%{self.id}: {self.type})"

    def __iter__(self):  # noqa: ANN204 - `for row in x` unrolls over the first axis
        if not self.shape:
            raise TraceError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.shape[0]))

    # ------------------------------------------------------- data-dependent use
    def __bool__(self) -> bool:
        raise TraceError(
            "a traced tensor has no concrete value: Python control flow (if/while/and/or) "
            "cannot depend on it; use ops.where(cond, a, b) instead"
        )

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TraceError("a traced tensor cannot be converted to a numpy array; use compiler.ops functions")

    def __float__(self) -> float:
        raise TraceError("a traced tensor has no concrete value; float() is not possible while tracing")

    def __int__(self) -> int:
        raise TraceError("a traced tensor has no concrete value; int() is not possible while tracing")

    def __index__(self) -> int:
        raise TraceError("a traced tensor cannot be used as a Python index; use ops.take for gathers")

    __hash__ = object.__hash__

    # --------------------------------------------------------------- operators
    def __add__(self, other: Any) -> "Tensor": return _ops().add(self, other)
    def __radd__(self, other: Any) -> "Tensor": return _ops().add(other, self)
    def __sub__(self, other: Any) -> "Tensor": return _ops().subtract(self, other)
    def __rsub__(self, other: Any) -> "Tensor": return _ops().subtract(other, self)
    def __mul__(self, other: Any) -> "Tensor": return _ops().multiply(self, other)
    def __rmul__(self, other: Any) -> "Tensor": return _ops().multiply(other, self)
    def __truediv__(self, other: Any) -> "Tensor": return _ops().divide(self, other)
    def __rtruediv__(self, other: Any) -> "Tensor": return _ops().divide(other, self)
    def __pow__(self, other: Any) -> "Tensor": return _ops().power(self, other)
    def __rpow__(self, other: Any) -> "Tensor": return _ops().power(other, self)
    def __matmul__(self, other: Any) -> "Tensor": return _ops().matmul(self, other)
    def __rmatmul__(self, other: Any) -> "Tensor": return _ops().matmul(other, self)
    def __neg__(self) -> "Tensor": return _ops().negative(self)
    def __pos__(self) -> "Tensor": return self
    def __abs__(self) -> "Tensor": return _ops().abs(self)
    def __lt__(self, other: Any) -> "Tensor": return _ops().less(self, other)
    def __le__(self, other: Any) -> "Tensor": return _ops().less_equal(self, other)
    def __gt__(self, other: Any) -> "Tensor": return _ops().greater(self, other)
    def __ge__(self, other: Any) -> "Tensor": return _ops().greater_equal(self, other)
    def __eq__(self, other: Any) -> "Tensor": return _ops().equal(self, other)  # type: ignore[override]
    def __ne__(self, other: Any) -> "Tensor": return _ops().not_equal(self, other)  # type: ignore[override]
    def __getitem__(self, index: Any) -> "Tensor": return _ops().getitem(self, index)

    # ----------------------------------------------------------------- methods
    @property
    def T(self) -> "Tensor":
        return _ops().transpose(self)

    def transpose(self, *axes: Any) -> "Tensor":
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return _ops().transpose(self, axes or None)

    def reshape(self, *shape: Any) -> "Tensor":
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _ops().reshape(self, shape)

    def astype(self, dtype: Any) -> "Tensor":
        return _ops().cast(self, dtype)

    def sum(self, axis: Any = None, keepdims: bool = False) -> "Tensor":
        return _ops().sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis: Any = None, keepdims: bool = False) -> "Tensor":
        return _ops().mean(self, axis=axis, keepdims=keepdims)

    def max(self, axis: Any = None, keepdims: bool = False) -> "Tensor":
        return _ops().max(self, axis=axis, keepdims=keepdims)

    def min(self, axis: Any = None, keepdims: bool = False) -> "Tensor":
        return _ops().min(self, axis=axis, keepdims=keepdims)

    def squeeze(self, axis: Any = None) -> "Tensor":
        return _ops().squeeze(self, axis)


def _ops() -> Any:
    import compiler.ops as ops

    return ops


# -------------------------------------------------------------------- helpers
def apply(op: str, *operands: Tensor, **attrs: Any) -> Tensor:
    """Record `op` on `operands` in their graph (or the current one) and return its value."""
    graph = operands[0].graph if operands else current_graph()
    for operand in operands:
        if not isinstance(operand, Tensor):
            raise TraceError(f"{op}: operand {operand!r} is not a traced tensor")
        if operand.graph is not graph:
            raise TraceError(f"{op}: operands come from different graphs (a tensor escaped its trace?)")
    return Tensor(graph, graph.add_node(op, tuple(t.id for t in operands), attrs))


def is_scalar_literal(value: Any) -> bool:
    return isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)) and np.ndim(value) == 0


def promote_dtypes(*dtypes: str) -> str:
    """Result dtype of mixing tensors, JAX-style: floats win, then the widest int, then bool.

    Unlike numpy, int32 with float32 gives float32 (not float64).
    """
    floats = [d for d in dtypes if d in FLOAT_DTYPES]
    ints = [d for d in dtypes if d in INT_DTYPES]
    if floats:
        return "float64" if "float64" in floats else "float32"
    if ints:
        return "int64" if "int64" in ints else "int32"
    return "bool"


def literal_dtype(value: Any) -> str:
    """Default dtype of a Python scalar standing alone (no tensor to take a dtype from)."""
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int32"
    return "float32"


def constant_like(value: Any, dtype: str, graph: Graph | None = None) -> Tensor:
    """A 0-d constant tensor holding a Python scalar, in `dtype`."""
    graph = graph or current_graph()
    scalar = np.asarray(value).astype(dtype).item()
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and scalar != value:
        raise TraceError(f"the literal {value} does not fit in {dtype}")
    return Tensor(graph, graph.add_node("full", (), {"shape": (), "dtype": dtype, "value": scalar}))


def as_tensors(*values: Any, op: str = "op", graph: Graph | None = None) -> list[Tensor]:
    """Convert operands to Tensors of one promoted dtype, inserting casts as needed.

    Python and numpy scalars are weakly typed: they take the tensors' dtype (2.0 * x stays
    float32), except that a float scalar with integer tensors gives float32.
    Numpy arrays become constants of their own dtype.
    """
    tensors = [v for v in values if isinstance(v, Tensor)]
    graph = tensors[0].graph if tensors else (graph or current_graph())
    from compiler.ops.constants import constant  # op module; imported late to avoid a cycle

    strong: list[str] = []
    converted: list[Any] = []
    for value in values:
        if isinstance(value, Tensor):
            converted.append(value)
            strong.append(value.dtype)
        elif is_scalar_literal(value):
            converted.append(value)
        elif isinstance(value, (np.ndarray, list, tuple)):
            array = np.asarray(value)
            if array.dtype == np.float64 and not isinstance(value, np.ndarray):
                array = array.astype(np.float32)  # nested Python lists default to float32, as JAX does
            with_graph = constant(array, graph=graph)
            converted.append(with_graph)
            strong.append(with_graph.dtype)
        else:
            raise TraceError(f"{op}: cannot use {type(value).__name__} {value!r} as a tensor")
    weak = [literal_dtype(v) for v in converted if not isinstance(v, Tensor)]
    target = promote_dtypes(*strong) if strong else promote_dtypes(*weak)
    if strong and target not in FLOAT_DTYPES and any(d in FLOAT_DTYPES for d in weak):
        target = "float32"
    if strong and target == "bool" and any(d in INT_DTYPES for d in weak):
        target = "int32"
    result = []
    for value in converted:
        if isinstance(value, Tensor):
            result.append(value if value.dtype == target else apply("cast", value, dtype=target))
        else:
            result.append(constant_like(value, target, graph))
    return result
