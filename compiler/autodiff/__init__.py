"""Adjoint generation: forward graph -> backward graph."""
from compiler.autodiff.api import grad, value_and_grad, vjp  # noqa: F401
