"""Adjoint generation: forward graph -> backward graph."""
