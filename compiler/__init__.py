"""pullback: an ahead-of-time compiler for backward passes.

    import compiler
    from compiler import ops, Spec

    graph = compiler.trace(loss, params_spec, data_spec)
    print(graph)                       # the IR, one op per line
    compiler.evaluate(graph, params, x)
"""
from compiler import ops  # noqa: F401
from compiler.errors import EvalError, ParseError, PullbackError, ShapeError, TraceError, VerifyError  # noqa: F401
from compiler.frontend.trace import Spec, trace  # noqa: F401
from compiler.interpreter import evaluate  # noqa: F401
from compiler.ir.graph import Graph  # noqa: F401
from compiler.ir.types import TensorType  # noqa: F401
from compiler.ir.verify import verify  # noqa: F401

__version__ = "0.1.0"
from compiler.ir.dot import to_dot  # noqa: F401,E402
from compiler.ir.parser import parse  # noqa: F401,E402
from compiler.ir.printer import dump  # noqa: F401,E402
from compiler.autodiff import grad, value_and_grad, vjp  # noqa: F401,E402
