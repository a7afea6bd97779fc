"""Sample inputs for every op, shared by the per-op test suites.

Each op family keeps its samples in `samples_<family>.py` as a list `SAMPLES` of Sample.
Generic tests (gradient vs finite differences, compiled vs interpreter, registry
completeness) are parametrized over ALL_SAMPLES, so a new op is tested by adding samples,
not by editing test lists.

A sample is a traceable function of positional tensors plus float64 (or int/bool)
argument arrays. Float arguments are kept away from kinks and ties so central finite
differences are valid there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class Sample:
    op: str  # the registered op this sample exercises (it must appear in the traced graph)
    fn: Callable  # fn(*tensors) -> tensor, built from compiler.ops / Tensor operators
    args: list[np.ndarray]  # float64 floats; ints/bools are data (no gradient)
    name: str = ""
    differentiable: bool = True  # False: skip the finite-difference gradient check
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def id(self) -> str:
        return f"{self.op}-{self.name}" if self.name else self.op


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _collect() -> list[Sample]:
    """Every tests/ops/samples_*.py module's SAMPLES, in file-name order."""
    import importlib
    import pathlib

    samples: list[Sample] = []
    for path in sorted(pathlib.Path(__file__).parent.glob("samples_*.py")):
        samples.extend(importlib.import_module(f"tests.ops.{path.stem}").SAMPLES)
    return samples


def __getattr__(name: str) -> list[Sample]:
    # Lazy, so a samples_<family> module may import Sample from here without a cycle.
    if name == "ALL_SAMPLES":
        global ALL_SAMPLES
        ALL_SAMPLES = _collect()
        return ALL_SAMPLES
    raise AttributeError(name)
