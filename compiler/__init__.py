"""pullback: an ahead-of-time compiler for backward passes.

    import compiler
    from compiler import ops, Spec

    graph = compiler.trace(loss, params_spec, data_spec)
    print(graph)                                  # the IR, one op per line
    step = compiler.compile(compiler.value_and_grad(graph))
    loss, grads = step(params, x)

Public names are imported on first use, so `pullback run` (which needs only the
runtime) does not pay for networkx and the op registry.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ops": ("compiler.ops", None),
    "Spec": ("compiler.frontend.trace", "Spec"),
    "trace": ("compiler.frontend.trace", "trace"),
    "evaluate": ("compiler.interpreter", "evaluate"),
    "Graph": ("compiler.ir.graph", "Graph"),
    "TensorType": ("compiler.ir.types", "TensorType"),
    "verify": ("compiler.ir.verify", "verify"),
    "dump": ("compiler.ir.printer", "dump"),
    "parse": ("compiler.ir.parser", "parse"),
    "to_dot": ("compiler.ir.dot", "to_dot"),
    "grad": ("compiler.autodiff", "grad"),
    "value_and_grad": ("compiler.autodiff", "value_and_grad"),
    "vjp": ("compiler.autodiff", "vjp"),
    "compile": ("compiler.codegen", "compile"),
    "optimize": ("compiler.pipeline", "optimize"),
    "PullbackError": ("compiler.errors", "PullbackError"),
    "ShapeError": ("compiler.errors", "ShapeError"),
    "VerifyError": ("compiler.errors", "VerifyError"),
    "ParseError": ("compiler.errors", "ParseError"),
    "TraceError": ("compiler.errors", "TraceError"),
    "EvalError": ("compiler.errors", "EvalError"),
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'compiler' has no attribute {name!r}")
    module_name, attribute = _EXPORTS[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return __all__
