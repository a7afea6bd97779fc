"""What the example and CLI tests share: where the examples are, and which parts of the
compiler exist yet (tests of a missing part skip with a reason saying which part)."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest

import compiler
from compiler import ops

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = ROOT / "examples"
EXAMPLES = ("chain_rule", "mlp", "rnn", "lstm")

# The ops each example calls beyond the elementwise ones (getitem is Tensor.__getitem__).
_NEEDS = {
    "chain_rule": (),
    "mlp": ("matmul", "sum", "log_softmax", "reshape"),
    "rnn": ("matmul", "mean", "getitem"),
    "lstm": ("matmul", "mean", "getitem", "concatenate"),
}


def example_path(name: str) -> Path:
    return EXAMPLES_DIR / f"{name}.py"


def missing_ops(name: str) -> list[str]:
    return [op for op in _NEEDS[name] if not hasattr(ops, op)]


def require_ops(name: str) -> None:
    missing = missing_ops(name)
    if missing:
        pytest.skip(f"examples/{name}.py needs ops not written yet: {', '.join(missing)}")


@functools.lru_cache(maxsize=None)
def _tiny_graph() -> compiler.Graph:
    return compiler.trace(lambda x: ops.exp(x) * 2.0, compiler.Spec((2,)))


@functools.lru_cache(maxsize=None)
def printer_available() -> bool:
    try:
        compiler.dump(_tiny_graph())
    except NotImplementedError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def parser_available() -> bool:
    if not printer_available():
        return False
    try:
        compiler.parse(compiler.dump(_tiny_graph()))
    except NotImplementedError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def dot_available() -> bool:
    try:
        compiler.to_dot(_tiny_graph())
    except NotImplementedError:
        return False
    return True


def codegen_available() -> bool:
    try:
        import compiler.codegen as codegen
    except ModuleNotFoundError as exc:
        if exc.name != "compiler.codegen":
            raise
        return False
    return all(hasattr(codegen, attr) for attr in ("compile", "llvm_ir", "assembly"))


def runtime_load_available() -> bool:
    import runtime

    return hasattr(runtime, "load")


def require(condition: bool, what: str) -> None:
    if not condition:
        pytest.skip(f"{what} is not written yet")
