"""(placeholder: the DOT exporter is being written)"""
from __future__ import annotations


def to_dot(graph) -> str:  # noqa: ANN001
    raise NotImplementedError("dot export not written yet")
