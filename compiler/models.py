"""Model files: how a user hands a loss function to pullback.

A model file is a plain Python file that defines

    loss(params, *data)   the function to differentiate; returns a scalar tensor
    specs()               a tuple (params_spec, *data_specs) of spec pytrees whose leaves
                          are compiler.Spec or example numpy arrays; the first is the params
    init_params(seed)     optional: a params pytree of numpy arrays (same structure)
    make_batch(seed)      optional: the data arguments, as a tuple (a lone data argument
                          may be returned bare)

for example

    import numpy as np
    from compiler import Spec, ops

    def loss(params, x, y):
        return ops.mean(ops.square(x @ params["W"] + params["b"] - y))

    def specs():
        return {"W": Spec((8, 1)), "b": Spec((1,))}, Spec((32, 8)), Spec((32, 1))

Gradients are taken with respect to the first argument (the params); integer leaves are
always data. A MODEL may also be an IR text file (its first non-comment line starts with
`graph `), which is parsed with compiler.parse instead of traced.

`load_model(path)` imports the file by path (it is not left in sys.modules), checks the
convention and returns a `Model`; `Model.trace()` gives the forward Graph.
"""
from __future__ import annotations

import argparse
import codecs
import importlib.util
import inspect
import io
import itertools
import os
import stat
import sys
import traceback
from collections import Counter
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

import numpy as np

from compiler.errors import PullbackError
from compiler.ir.graph import Graph
from runtime.pytree import LEAF, flatten, unflatten

_counter = itertools.count()


class ModelError(PullbackError):
    """A model file is missing, fails to import, breaks the convention or fails to trace.

    The message is one line that starts with the path as the user gave it.
    """


@dataclass
class Model:
    """A loaded model file (or a parsed IR file, in which case only `graph` is set)."""

    name: str
    path: str
    loss: Callable[..., Any] | None
    specs: Callable[[], tuple] | None
    init_params: Callable[[int], Any] | None = None
    make_batch: Callable[[int], Any] | None = None
    module: ModuleType | None = None
    graph: Graph | None = None  # set for IR text files

    @property
    def is_ir(self) -> bool:
        return self.loss is None

    def spec_trees(self) -> tuple:
        """The result of specs(), checked: a non-empty tuple of spec pytrees."""
        if self.specs is None:
            raise ModelError(f"{self.path}: an IR file has no specs()")
        try:
            result = self.specs()
        except BaseException as exc:  # noqa: BLE001 - user code, SystemExit too: report it as one line
            raise _user_error(self.path, "specs()", _interruption(exc)) from exc
        if isinstance(result, list):
            result = tuple(result)
        if not isinstance(result, tuple) or not result:
            raise ModelError(
                f"{self.path}: specs() must return a non-empty tuple (params_spec, *data_specs), "
                f"got {type(result).__name__}"
            )
        return result

    def trace(self) -> Graph:
        """The forward graph: loss traced over specs(), or the parsed IR."""
        if self.graph is not None:
            return self.graph
        from compiler.frontend.trace import trace

        specs = self.spec_trees()
        self._check_arity(len(specs))
        try:
            graph = trace(self.loss, *specs, name=self.name)
        except BaseException as exc:  # noqa: BLE001 - user code runs inside trace
            raise _user_error(self.path, "tracing loss", _interruption(exc)) from exc
        if graph.out_tree is not LEAF:
            raise ModelError(f"{self.path}: loss must return one scalar tensor, got a pytree of {len(graph.outputs)}")
        out_type = graph.type(graph.outputs[0])
        if out_type.shape != () or not out_type.is_float:
            raise ModelError(f"{self.path}: loss must return a float scalar, got {out_type}")
        return graph

    def _check_arity(self, count: int) -> None:
        try:
            signature = inspect.signature(self.loss)
        except (TypeError, ValueError):
            return
        try:
            signature.bind(*range(count))
        except TypeError:
            names = ", ".join(signature.parameters)
            raise ModelError(
                f"{self.path}: specs() returns {count} spec tree(s) but loss({names}) does not take {count} "
                "positional arguments"
            ) from None

    def example_args(self, seed: int = 0) -> tuple:
        """(params, *data) from init_params/make_batch, else from the specs (example arrays
        are used as given, Spec leaves are filled with random numbers)."""
        specs = self.spec_trees()
        rng = np.random.default_rng(seed)
        if self.init_params is not None:
            params = self._call("init_params", self.init_params, seed)
        else:
            params = random_like(specs[0], rng, scale=0.1)
        if self.make_batch is not None:
            data = self._call("make_batch", self.make_batch, seed)
            is_sequence = isinstance(data, (tuple, list))
            if not is_sequence or (len(specs) == 2 and len(data) != 1):
                data = (data,)  # a lone data argument returned bare
            data = tuple(data)
            if len(data) != len(specs) - 1:
                raise ModelError(
                    f"{self.path}: make_batch() returned {len(data)} data argument(s), specs() declares {len(specs) - 1}"
                )
        else:
            data = tuple(random_like(spec, rng) for spec in specs[1:])
        return (params, *data)

    def _call(self, what: str, fn: Callable, *args: Any) -> Any:
        try:
            return fn(*args)
        except BaseException as exc:  # noqa: BLE001
            raise _user_error(self.path, f"{what}()", _interruption(exc)) from exc


def random_like(spec_tree: Any, rng: np.random.Generator, scale: float = 1.0) -> Any:
    """Arrays matching a spec pytree: floats normal(0, scale), ints in [0, 10), random bools."""
    from compiler.frontend.trace import _is_spec_leaf, as_spec

    leaves, tree = flatten(spec_tree, is_leaf=_is_spec_leaf)
    arrays = []
    for leaf in leaves:
        if isinstance(leaf, np.ndarray):
            arrays.append(leaf)
            continue
        spec = as_spec(leaf)
        if spec.dtype.startswith("float"):
            arrays.append((rng.standard_normal(spec.shape) * scale).astype(spec.dtype))
        elif spec.dtype.startswith("int"):
            arrays.append(rng.integers(0, 10, spec.shape).astype(spec.dtype))
        else:
            arrays.append(rng.integers(0, 2, spec.shape).astype(bool))
    return unflatten(tree, arrays)


# ---------------------------------------------------------------------- loading
_SNIFF_BYTES = 1 << 20  # how much of a file is read to tell IR text from Python


def is_ir_text(path: str) -> bool:
    """True when the first non-blank, non-comment line starts with 'graph ' (within the
    first 1000 lines and 1 MiB). Anything but a regular file is not IR text, and is never
    opened in a way that could block (a FIFO) or read without end (/dev/zero)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False
            os.set_blocking(fd, True)
            with os.fdopen(fd, "rb", closefd=False) as handle:
                head = handle.read(_SNIFF_BYTES)
        finally:
            os.close(fd)
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a cut character is fine
    except (UnicodeDecodeError, OSError, ValueError):
        return False
    for line in itertools.islice(io.StringIO(text, newline=None), 1000):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return stripped.startswith("graph ")
    return False


def load_model(path: str | os.PathLike) -> Model:
    """Load a model file (.py, by path) or an IR text file.

    Raises ModelError on anything wrong with the file; NotImplementedError passes through
    when reading IR text needs a parser this build does not have yet.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ModelError(f"{path}: is a directory, expected a model file")
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not regular:  # a FIFO or device would block or never end when read
        raise ModelError(f"{path}: not a regular file, expected a model file")
    name = _model_name(path)
    if is_ir_text(path):
        return Model(name, path, None, None, graph=_parse_ir(path))
    if not path.endswith(".py"):
        raise ModelError(f"{path}: not a model file (expected a .py file or IR text whose first line starts with 'graph ')")
    module = _import_by_path(path, name)
    missing = [attr for attr in ("loss", "specs") if not callable(getattr(module, attr, None))]
    if missing:
        raise ModelError(
            f"{path}: a model file must define {' and '.join(f'{m}()' for m in missing)} "
            "(see the model-file convention in README.md)"
        )
    optional = {}
    for attr in ("init_params", "make_batch"):
        value = getattr(module, attr, None)
        if value is not None and not callable(value):
            raise ModelError(f"{path}: {attr} must be a function, got {type(value).__name__}")
        optional[attr] = value
    return Model(name, path, module.loss, module.specs, module=module, **optional)


def _model_name(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    return "".join(c if c.isalnum() or c == "_" else "_" for c in stem) or "model"


def _parse_ir(path: str) -> Graph:
    from compiler.ir.parser import parse

    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        return parse(text)  # NotImplementedError (no parser in this build) passes through
    except PullbackError as exc:
        raise ModelError(f"{path}: {type(exc).__name__}: {exc}") from None


def _import_by_path(path: str, name: str) -> ModuleType:
    # A unique name keeps two models with the same file name apart; the module sits in
    # sys.modules only while it executes (dataclasses and typing look it up there).
    module_name = f"_pullback_model_{name}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelError(f"{path}: cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    model_dir = os.path.dirname(os.path.abspath(path))
    sys.modules[module_name] = module
    sys.path.insert(0, model_dir)  # so a model can import helpers that sit next to it
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # noqa: BLE001 - SystemExit from a script-style model too
        raise _user_error(path, "", _interruption(exc)) from exc
    finally:
        sys.modules.pop(module_name, None)
        try:
            sys.path.remove(model_dir)
        except ValueError:
            pass
    return module


def _interruption(exc: BaseException) -> BaseException:
    """Re-raise Ctrl-C (the user stopping pullback, not the model failing); else return exc."""
    if isinstance(exc, KeyboardInterrupt):
        raise exc
    return exc


def _user_error(path: str, during: str, exc: BaseException) -> ModelError:
    """One line: 'path[:line]: [during: ]Type: message', line taken from the model file."""
    line = _line_in(path, exc)
    where = f"{path}:{line}" if line else path
    during = f"{during}: " if during else ""
    if isinstance(exc, SyntaxError) and exc.filename and os.path.abspath(exc.filename) == os.path.abspath(path):
        message = f"{exc.msg} (line {exc.lineno})"
        where = path
    else:
        try:  # the model's own __str__ may raise (or return a non-str): still blame the model
            text = str(exc).strip()
        except BaseException as err:  # noqa: BLE001
            if isinstance(err, KeyboardInterrupt):
                raise
            text = f"<unprintable {type(exc).__name__}>"
        message = text.splitlines()[0] if text else ""
    kind = type(exc).__name__
    return ModelError(f"{where}: {during}{kind}: {message}" if message else f"{where}: {during}{kind}")


def _line_in(path: str, exc: BaseException) -> int | None:
    target = os.path.abspath(path)
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if os.path.abspath(frame.f_code.co_filename) == target:
            line = lineno  # the innermost frame in the model file
    return line


# ------------------------------------------------------------------ script mode
def summary(graph: Graph) -> str:
    """A few lines: op count, inputs by kind, the most frequent ops."""
    params = [graph.node(i) for i in graph.inputs if graph.node(i).attrs["kind"] == "param"]
    data = [graph.node(i) for i in graph.inputs if graph.node(i).attrs["kind"] == "data"]
    ops = Counter(node.op for _, node in graph.nodes() if node.op != "input")
    n_params = sum(node.type.size for node in params)
    top = ", ".join(f"{op} {count}" for op, count in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])))
    return (
        f"{graph.name}: forward IR has {sum(ops.values())} ops on {len(params)} param inputs "
        f"({n_params:,} values) and {len(data)} data inputs\n  ops: {top}"
    )


def script_main(path: str, argv: list[str] | None = None) -> tuple[Model, Graph, Any]:
    """What `python examples/<model>.py` does: trace, summarize, evaluate the loss once.

    Returns (model, forward graph, loss value) so a script can go on from there.
    """
    from compiler.interpreter import evaluate

    parser = argparse.ArgumentParser(description=f"Trace and evaluate the model in {os.path.basename(path)}.")
    parser.add_argument("--ir", action="store_true", help="print the forward IR")
    parser.add_argument("--seed", type=int, default=0, help="seed for init_params/make_batch (default 0)")
    args = parser.parse_args(argv)
    try:
        model = load_model(path)
        graph = model.trace()
        value = evaluate(graph, *model.example_args(args.seed))
    except PullbackError as exc:
        sys.exit(f"error: {exc}")
    print(summary(graph))
    if args.ir:
        from compiler.ir.printer import dump

        try:
            print(dump(graph))
        except NotImplementedError as exc:
            print(f"(the IR printer is not available yet: {exc})")
    print(f"loss at the example inputs (seed {args.seed}) = {float(value):.6g}")
    return model, graph, value
