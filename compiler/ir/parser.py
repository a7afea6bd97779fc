"""(placeholder: the text parser is being written)"""
from __future__ import annotations


def parse(text: str):  # noqa: ANN201
    raise NotImplementedError("parser not written yet")
