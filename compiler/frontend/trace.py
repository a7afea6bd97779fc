"""Trace a Python function over pytrees of specs into a Graph.

Each leaf of the specs becomes a graph input named after the function's parameter and
the leaf's path (`params.W1`, `layers.0.b`). Leaves of the first argument default to
parameters, the rest to data; `Spec(kind=...)` overrides. Python loops simply unroll.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from compiler.errors import PullbackError, ShapeError, TraceError
from compiler.ir.graph import Graph, building
from compiler.ir.types import FLOAT_DTYPES, TensorType, canonical_dtype
from compiler.ops.tensor import Tensor, as_tensors, is_scalar_literal
from compiler.passes.manager import gc_paused
from runtime.pytree import flatten, leaf_paths, unflatten


@dataclass(frozen=True)
class Spec:
    """The static type of one input: its shape, dtype and (optionally) kind."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    kind: str | None = None  # "param" or "data"; None lets trace() decide

    def __post_init__(self) -> None:
        shape = (self.shape,) if isinstance(self.shape, (int, np.integer)) else self.shape
        if not isinstance(shape, (tuple, list)) or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_)) and d >= 0 for d in shape
        ):
            raise ShapeError(f"Spec shape must be a tuple of non-negative ints, got {self.shape!r}")
        object.__setattr__(self, "shape", tuple(int(d) for d in shape))
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        if self.kind not in (None, "param", "data"):
            raise PullbackError(f"Spec kind must be 'param', 'data' or None, got {self.kind!r}")

    @property
    def type(self) -> TensorType:
        return TensorType(self.shape, self.dtype)


def _is_spec_leaf(value: Any) -> bool:
    return isinstance(value, (Spec, np.ndarray)) or is_scalar_literal(value)


def as_spec(value: Any) -> Spec:
    if isinstance(value, Spec):
        return value
    if isinstance(value, np.ndarray) or isinstance(value, (np.generic,)):
        return Spec(np.shape(value), canonical_dtype(np.asarray(value).dtype))
    if is_scalar_literal(value):
        from compiler.ops.tensor import literal_dtype

        return Spec((), literal_dtype(value))
    raise TraceError(f"spec leaves must be compiler.Spec or numpy arrays, got {type(value).__name__}")


def _argument_names(fn: Callable, count: int) -> list[str]:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    if len(required) > count:
        raise TraceError(
            f"{getattr(fn, '__name__', fn)} needs {len(required)} positional arguments "
            f"({', '.join(p.name for p in required)}), but {count} spec(s) were given"
        )
    if len(names) < count and any(p.kind == p.VAR_POSITIONAL for p in params):
        names += [f"arg{i}" for i in range(len(names), count)]
    if len(names) < count:
        raise TraceError(f"{getattr(fn, '__name__', fn)} takes {len(names)} positional arguments, {count} specs given")
    return names[:count]


def _input_name(path: tuple) -> str:
    parts = [re.sub(r"\W", "_", str(part)) or "_" for part in path]
    return ".".join(parts)


def trace(fn: Callable, *specs: Any, name: str | None = None, param_argnums: tuple[int, ...] = (0,)) -> Graph:
    """Trace `fn(*specs)` into a Graph. Leaves: compiler.Spec, numpy arrays or scalars."""
    graph = Graph(name or getattr(fn, "__name__", "graph"))
    arg_names = _argument_names(fn, len(specs))
    leaves, in_tree = flatten(tuple(specs), is_leaf=_is_spec_leaf)
    inputs = []
    used_names: set[str] = set()
    for path, leaf in zip(leaf_paths(in_tree), leaves):
        spec = as_spec(leaf)
        argnum = path[0]
        input_name = _input_name((arg_names[argnum],) + path[1:])
        while input_name in used_names:
            input_name += "_"
        used_names.add(input_name)
        kind = spec.kind or ("param" if argnum in param_argnums and spec.dtype in FLOAT_DTYPES else "data")
        inputs.append(Tensor(graph, graph.add_input(input_name, spec.type, kind)))
    graph.in_tree = in_tree
    # Tracing allocates many small objects that stay alive (nodes, types, edges): the cyclic
    # collector's full passes over them made tracing a long loop superlinear.
    with building(graph), gc_paused():
        try:
            result = fn(*unflatten(in_tree, inputs))
        except RecursionError:
            raise TraceError(f"tracing {graph.name}: recursion too deep") from None
        out_leaves, out_tree = flatten(result, is_leaf=lambda v: isinstance(v, (Tensor, np.ndarray)))
        if not out_leaves:
            raise TraceError(f"{graph.name} returned no tensors")
        outputs = []
        for leaf in out_leaves:
            if isinstance(leaf, Tensor) and leaf.graph is not graph:
                raise TraceError(f"{graph.name} returned a tensor from another trace")
            if not isinstance(leaf, Tensor):
                (leaf,) = as_tensors(leaf, op="output", graph=graph)
            outputs.append(leaf.id)
    graph.set_outputs(outputs, out_tree)
    from compiler.ir.verify import verify

    verify(graph)
    return graph
