"""Implicit layers: `fixed_point`, differentiated by the implicit function theorem.

    z* = ops.fixed_point(f, z0, *args, tol=1e-6, max_iter=100)

solves z = f(z, *args) by the iteration z_k = f(z_{k-1}, *args) from z_0 = z0. `f` is
traced into a body Graph with inputs (z, *args) and one output of z's type; the IR op
`fixed_point` has operands (z0, *args) and attributes body (that Graph), tol and max_iter.

Convergence rule (the reference and native code must agree): after computing z_k
(k >= 1), stop and return z_k when

    max |z_k - z_{k-1}| <= tol * (1 + max |z_k|)

A non-finite iterate, or no convergence within max_iter evaluations of f, is an error:
the reference raises EvalError naming the op, the residual reached and max_iter.

Backward (never through the iterations): with J = df/dz at (z*, args) and output
cotangent g, solve the adjoint system (I - J)^T u = g as another `fixed_point`,
u <- g + J^T u (starting from u = g, same tol and max_iter), then the cotangent of each
float arg is (df/darg)^T u. z0 gets no cotangent: z* does not depend on where the
iteration started. The adjoint solve is itself a `fixed_point`, so grad of grad works.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from compiler.errors import EvalError, PullbackError, ShapeError, TraceError
from compiler.ir.graph import Graph, building, current_graph
from compiler.ir.types import FLOAT_DTYPES, TensorType
from compiler.ops.registry import OpDef, register
from compiler.ops.tensor import Tensor, apply, as_tensors, constant_like, is_scalar_literal
from runtime.pytree import LEAF

__all__ = ["fixed_point"]


# ------------------------------------------------------------------ helpers
def inline(graph: Graph, *values: Tensor) -> list[Tensor]:
    """Replay `graph`'s nodes onto `values` (one per input, in the graph being built).

    Returns the flat outputs as Tensors of the destination graph. Nodes keep their
    locations unless the destination sets a default_loc (as the adjoint driver does).
    """
    if len(values) != len(graph.inputs):
        raise PullbackError(f"inline {graph.name!r}: it takes {len(graph.inputs)} inputs, got {len(values)} values")
    dest = values[0].graph if values else current_graph()
    env: dict[int, int] = {}
    for input_id, value in zip(graph.inputs, values):
        node = graph.node(input_id)
        if not isinstance(value, Tensor) or value.graph is not dest:
            raise PullbackError(f"inline {graph.name!r}: the value for input {node.attrs['name']!r} "
                                "is not a tensor of the graph being built")
        if value.type != node.type:
            raise PullbackError(f"inline {graph.name!r}: input {node.attrs['name']!r} is {node.type}, got {value.type}")
        env[input_id] = value.id
    for node_id, node in graph.nodes():
        if node_id in env:
            continue
        loc = dest.default_loc if dest.default_loc is not None else node.loc
        env[node_id] = dest.add_node(node.op, tuple(env[o] for o in node.operands), node.attrs, loc=loc)
    return [Tensor(dest, env[o]) for o in graph.outputs]


def _body_name(body: Graph) -> str:
    return f"fixed_point (body {body.name!r})"


# ------------------------------------------------------------------ shape rule
def _infer_fixed_point(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> TensorType:
    body, tol, max_iter = attrs["body"], attrs["tol"], attrs["max_iter"]
    if not isinstance(body, Graph):
        raise ShapeError(f"body must be a Graph, got {type(body).__name__}")
    z = types[0]
    if z.dtype not in FLOAT_DTYPES:
        raise ShapeError(f"the iterate z must be float, got {z}")
    if len(body.inputs) != len(types):
        raise ShapeError(f"body {body.name!r} takes {len(body.inputs)} inputs (z, *args) "
                         f"but the op has {len(types)} operands")
    for index, (input_id, operand) in enumerate(zip(body.inputs, types)):
        declared = body.type(input_id)
        if declared != operand:
            name = body.node(input_id).attrs["name"]
            raise ShapeError(f"operand {index} is {operand} but body input {name!r} is {declared}")
    if len(body.outputs) != 1:
        raise ShapeError(f"body {body.name!r} must have one output (the next z), it has {len(body.outputs)}")
    result = body.type(body.outputs[0])
    if result != z:
        raise ShapeError(f"body {body.name!r} returns {result} but the iterate z is {z}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise ShapeError(f"tol must be a finite float >= 0, got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ShapeError(f"max_iter must be an int >= 1, got {max_iter!r}")
    return z


# ------------------------------------------------------------------ reference
def _fixed_point_reference(z0: np.ndarray, *args: np.ndarray, body: Graph, tol: float, max_iter: int) -> np.ndarray:
    from compiler.interpreter import run_flat

    z = z0
    residual = math.inf
    for k in range(1, max_iter + 1):
        z_next = run_flat(body, [z, *args])[0]
        if not np.all(np.isfinite(z_next)):
            raise EvalError(f"{_body_name(body)}: the iterate became non-finite at iteration {k} "
                            f"(max_iter={max_iter}); the map diverges from this start")
        residual = float(np.max(np.abs(z_next - z))) if z_next.size else 0.0
        scale = float(np.max(np.abs(z_next))) if z_next.size else 0.0
        z = z_next
        if residual <= tol * (1.0 + scale):
            return z
    raise EvalError(f"{_body_name(body)} did not converge in max_iter={max_iter} iterations: "
                    f"residual max|z_k - z_(k-1)| = {residual:.3g} > tol * (1 + max|z_k|) = {tol * (1.0 + scale):.3g}")


# ------------------------------------------------------------------ VJP rule
def _adjoint_body(body: Graph) -> Graph:
    """The adjoint map (u, g, z, *args) -> g + (df/dz)(z, args)^T u, as a body Graph."""
    from compiler.autodiff.api import vjp
    from compiler.ir.verify import verify

    vjp_z = vjp(body, argnums=0)  # inputs (z, *args, ct) -> (df/dz)^T ct
    z_type = body.type(body.outputs[0])
    graph = Graph(f"adjoint_{body.name}")
    u = Tensor(graph, graph.add_input("u", z_type))
    g = Tensor(graph, graph.add_input("g", z_type))
    primal = [Tensor(graph, graph.add_input(f"primal.{body.node(i).attrs['name']}", body.type(i))) for i in body.inputs]
    graph.in_tree = tuple(LEAF for _ in graph.inputs)
    with building(graph):
        (step,) = inline(vjp_z, *primal, u)
        result = graph.add_node("add", (g.id, step.id), loc=f"adjoint of {body.name}: g + (df/dz)^T u")
    graph.set_outputs([result])
    verify(graph)
    return graph


def _fixed_point_vjp(g: Tensor, out: Tensor, xs: tuple, *, body: Graph, tol: float, max_iter: int) -> tuple:
    from compiler.autodiff.api import vjp

    args = xs[1:]
    float_argnums = tuple(i for i in range(1, len(xs)) if xs[i].dtype in FLOAT_DTYPES)
    cotangents: list[Tensor | None] = [None] * len(xs)  # z0: the fixed point does not depend on it
    if not float_argnums:
        return tuple(cotangents)
    u = apply("fixed_point", g, g, out, *args, body=_adjoint_body(body), tol=tol, max_iter=max_iter)
    vjp_args = vjp(body, argnums=float_argnums)  # inputs (z, *args, ct) -> one cotangent per arg
    for argnum, ct in zip(float_argnums, inline(vjp_args, out, *args, u)):
        cotangents[argnum] = ct
    return tuple(cotangents)


register(OpDef(
    "fixed_point", arity=None, attrs=("body", "tol", "max_iter"), infer=_infer_fixed_point,
    reference=_fixed_point_reference, vjp=_fixed_point_vjp, kind="other",
    doc="z* = f(z*, *args) by iteration from z0; differentiated by the implicit function theorem.",
))


# ------------------------------------------------------------------ user function
def _operand(value: Any, graph: Graph, like: str | None) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if is_scalar_literal(value) and like in FLOAT_DTYPES and not isinstance(value, (bool, np.bool_)):
        return constant_like(value, like, graph)  # weakly typed: takes z's float dtype
    (tensor,) = as_tensors(value, op="fixed_point", graph=graph)
    return tensor


def fixed_point(f: Callable, z0: Any, *args: Any, tol: float = 1e-6, max_iter: int = 100) -> Tensor:
    """The z with z = f(z, *args), found by iterating f from z0.

    `f(z, *args)` must return one tensor of z0's shape and dtype and must not close over
    tensors of the enclosing trace (pass them in `args`; numpy constants are fine).
    Gradients flow to float `args` by the implicit function theorem, never to z0.
    """
    from compiler.frontend.trace import Spec, trace

    if not callable(f):
        raise TraceError(f"fixed_point: f must be a function, got {type(f).__name__}")
    tensors = [v for v in (z0, *args) if isinstance(v, Tensor)]
    graph = tensors[0].graph if tensors else current_graph()
    z = _operand(z0, graph, None)
    if z.dtype not in FLOAT_DTYPES:
        raise TraceError(f"fixed_point: z0 must be float, got {z.type}")
    operands = [z] + [_operand(a, graph, z.dtype) for a in args]
    # Normalize numpy scalars so attributes are plain Python values; the shape rule rejects the rest.
    if isinstance(tol, (int, float, np.integer, np.floating)) and not isinstance(tol, (bool, np.bool_)):
        tol = float(tol)
    if isinstance(max_iter, np.integer):
        max_iter = int(max_iter)
    name = getattr(f, "__name__", "f")
    try:
        body = trace(f, *(Spec(t.shape, t.dtype, "data") for t in operands), name=name, param_argnums=())
    except TraceError as exc:
        hint = ("; f must not use tensors of the enclosing trace: pass them to fixed_point as extra arguments"
                if "different graphs" in str(exc) or "another trace" in str(exc) else "")
        raise TraceError(f"fixed_point: tracing {name}: {exc}{hint}") from None
    if len(body.outputs) != 1 or body.out_tree is not LEAF:
        raise TraceError(f"fixed_point: {name} must return one tensor (the next z), it returned {len(body.outputs)}")
    result = body.type(body.outputs[0])
    if result != z.type:
        raise TraceError(f"fixed_point: {name} must return a tensor of z's type {z.type}, got {result}"
                         + ("; cast it" if result.shape == z.type.shape else ""))
    return apply("fixed_point", *operands, body=body, tol=tol, max_iter=max_iter)
