"""Samples for `add_n` (compiler/ops/accumulate.py), the op the accumulate pass emits."""
from __future__ import annotations

import numpy as np

from compiler.ops.accumulate import add_n
from tests.ops.samples import Sample, rng

SAMPLES: list[Sample] = [
    Sample("add_n", lambda a, b, c: add_n(a, b, c), [rng(s).normal(size=(3, 4)) for s in (1, 2, 3)], name="three"),
    Sample("add_n", lambda a, b: add_n(a, b * b, a), [rng(4).normal(size=()), rng(5).normal(size=())],
           name="repeated-operand"),
    Sample("add_n", add_n, [rng(6).normal(size=(2,))], name="one"),
    Sample("add_n", lambda a, b: add_n(a, b), [np.arange(6, dtype=np.int32).reshape(2, 3), np.full((2, 3), 7, np.int32)],
           name="int32", differentiable=False),
]
