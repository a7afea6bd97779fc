"""(placeholder: the text printer is being written)"""
from __future__ import annotations


def dump(graph) -> str:  # noqa: ANN001
    raise NotImplementedError("printer not written yet")
