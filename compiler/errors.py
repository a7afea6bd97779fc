"""Exceptions raised by the compiler. Every message names what went wrong and where."""


class PullbackError(Exception):
    """Base class of every error the compiler raises on bad input."""


class ShapeError(PullbackError):
    """Operand shapes, dtypes or attributes do not satisfy an op's rule."""


class VerifyError(PullbackError):
    """A graph breaks an IR invariant (cycle, missing operand, wrong type...)."""


class ParseError(PullbackError):
    """IR text could not be parsed; the message names the line."""


class TraceError(PullbackError):
    """A Python function could not be traced into a graph."""


class EvalError(PullbackError):
    """Arguments passed to evaluate() do not match the graph's inputs."""
