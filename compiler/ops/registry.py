"""The op registry: one OpDef per op, holding everything the compiler knows about it.

An op module defines, side by side: the user-facing function (numpy name), the shape and
dtype rule (`infer`), the numpy reference (`reference`) and the VJP rule (`vjp`).
Lowering rules live in the code generator, keyed by op name.

VJP rules are written with the same ops API used for tracing, so backward graphs are
plain IR and can be differentiated again:

    vjp(g, out, operands, **attrs) -> tuple of cotangents, one per operand (None = zero)

`g` is the output cotangent (a Tensor with the output's type), `out` the forward output
and `operands` the forward operands, all Tensors in the graph being built. A rule may
return a cotangent in the broadcast (output) shape: the adjoint driver sums it back to
the operand's shape, so no rule deals with broadcasting.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from compiler.errors import ShapeError, VerifyError
from compiler.ir.types import TensorType

Infer = Callable[[Sequence[TensorType], Mapping[str, Any]], TensorType]

KINDS = ("source", "elementwise", "reduction", "shape", "matmul", "other")


@dataclass(frozen=True)
class OpDef:
    name: str
    arity: int | None  # None: variadic (one or more operands)
    attrs: tuple[str, ...]  # exactly these attribute names are required
    infer: Infer | None  # None: the node declares its own type (graph inputs)
    reference: Callable[..., np.ndarray] | None
    vjp: Callable[..., tuple] | None = None
    has_gradient: bool = True  # False: outputs carry no gradient (comparisons, casts to int...)
    kind: str = "other"
    doc: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)  # e.g. the numpy function of an elementwise op


_REGISTRY: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    if opdef.name in _REGISTRY:
        raise ValueError(f"op {opdef.name!r} registered twice")
    if opdef.kind not in KINDS:
        raise ValueError(f"op {opdef.name!r}: unknown kind {opdef.kind!r}")
    _REGISTRY[opdef.name] = opdef
    return opdef


def get_op(name: str) -> OpDef:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise VerifyError(f"unknown op {name!r}") from None


def all_ops() -> dict[str, OpDef]:
    return dict(_REGISTRY)


def check_signature(opdef: OpDef, num_operands: int, attrs: Mapping[str, Any]) -> None:
    """Arity and attribute names; raises ShapeError naming the problem."""
    if opdef.arity is None:
        if num_operands < 1:
            raise ShapeError(f"needs at least one operand, got {num_operands}")
    elif num_operands != opdef.arity:
        raise ShapeError(f"takes {opdef.arity} operand(s), got {num_operands}")
    missing = [a for a in opdef.attrs if a not in attrs]
    unknown = [a for a in attrs if a not in opdef.attrs]
    if missing:
        raise ShapeError(f"missing attribute(s) {', '.join(missing)}")
    if unknown:
        raise ShapeError(f"unknown attribute(s) {', '.join(unknown)}")


def infer_type(name: str, operand_types: Sequence[TensorType], attrs: Mapping[str, Any]) -> TensorType:
    opdef = get_op(name)
    check_signature(opdef, len(operand_types), attrs)
    if opdef.infer is None:
        raise ShapeError("declares its own type; pass type= when adding it")
    return opdef.infer(operand_types, attrs)
