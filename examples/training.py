"""Training loops for the example models: numpy SGD and Adam over params pytrees, and a
`train` loop that runs a compiled value-and-gradient kernel.

    import cnn, training       # with examples/ on sys.path
    result = training.train(cnn, steps=300, lr=1e-2, optimizer="adam")

train() traces model.loss over model.specs(), builds compiler.value_and_grad, compiles
it with compiler.codegen.compile (timed), then runs the steps: call the kernel, update
the params in numpy. It prints the loss every `print_every` steps and finishes with
the compile time and the median step time.

Data: if the model file defines train_batch(step, seed) (a fresh batch per step, e.g.
new noise for a VAE), that is called every step; otherwise make_batch(seed) gives one
fixed batch. If compiling (or the first compiled call) fails, the loop says why and falls
back to the reference interpreter, so every example still trains.

Every example file ends with `main(module, ...)`, which gives it the command line
`python examples/<name>.py [--steps N] [--lr LR] [--optimizer adam|sgd] [--seed S]
[--interpreter] [--cache]`. The compile cache is off unless --cache is given, so the
reported compile time is a real compile.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

import numpy as np

import compiler
from compiler.models import summary
from runtime.pytree import flatten, unflatten


# ------------------------------------------------------------------ optimizers
class SGD:
    """Plain (optionally momentum) stochastic gradient descent on a params pytree."""

    def __init__(self, lr: float, momentum: float = 0.0) -> None:
        self.lr, self.momentum = float(lr), float(momentum)
        self._velocity: list[np.ndarray] | None = None

    def step(self, params: Any, grads: Any) -> Any:
        leaves, tree = flatten(params)
        grad_leaves, _ = flatten(grads)
        if self.momentum:
            if self._velocity is None:
                self._velocity = [np.zeros_like(p) for p in leaves]
            for v, g in zip(self._velocity, grad_leaves):
                v *= self.momentum
                v += g
            grad_leaves = self._velocity
        new = [(p - self.lr * g).astype(p.dtype) for p, g in zip(leaves, grad_leaves)]
        return unflatten(tree, new)


class Adam:
    """Adam (Kingma & Ba) with bias correction, state kept per leaf."""

    def __init__(self, lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> None:
        self.lr, self.b1, self.b2, self.eps = float(lr), b1, b2, eps
        self._m: list[np.ndarray] | None = None
        self._v: list[np.ndarray] | None = None
        self._t = 0

    def step(self, params: Any, grads: Any) -> Any:
        leaves, tree = flatten(params)
        grad_leaves, _ = flatten(grads)
        if self._m is None:
            self._m = [np.zeros_like(p) for p in leaves]
            self._v = [np.zeros_like(p) for p in leaves]
        self._t += 1
        scale = self.lr * np.sqrt(1 - self.b2 ** self._t) / (1 - self.b1 ** self._t)
        new = []
        for p, g, m, v in zip(leaves, grad_leaves, self._m, self._v):
            m *= self.b1
            m += (1 - self.b1) * g
            v *= self.b2
            v += (1 - self.b2) * np.square(g)
            new.append((p - scale * m / (np.sqrt(v) + self.eps)).astype(p.dtype))
        return unflatten(tree, new)


OPTIMIZERS: dict[str, Callable[..., Any]] = {"sgd": SGD, "adam": Adam}


def make_optimizer(optimizer: str | Any, lr: float) -> Any:
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        return OPTIMIZERS[optimizer](lr)
    return optimizer  # an object with step(params, grads)


# ------------------------------------------------------------------ step function
@dataclass
class StepFunction:
    """value_and_grad for one model: call(params, *data) -> (loss, grads)."""

    call: Callable[..., Any]
    forward: compiler.Graph  # the traced loss
    graph: compiler.Graph  # its value_and_grad graph
    backend: str  # "compiled" or "interpreter"
    trace_seconds: float
    compile_seconds: float | None = None
    note: str | None = None  # why the compiled path is unavailable

    def fall_back(self, why: str) -> None:
        graph = self.graph
        self.call = lambda *args: compiler.evaluate(graph, *args)
        self.backend, self.note = "interpreter", why


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _model_name(module: ModuleType) -> str:
    path = getattr(module, "__file__", None)
    if path:  # the file stem, also when the module runs as __main__
        return os.path.splitext(os.path.basename(path))[0]
    return getattr(module, "__name__", "model").rsplit(".", 1)[-1]


def value_and_grad_fn(module: ModuleType, specs: tuple | None = None, *, backend: str = "compiled",
                      opt_level: int = 2, cache: bool = False) -> StepFunction:
    """Trace module.loss, differentiate it and (unless backend="interpreter") compile it.

    cache=False by default so the reported compile time is a real compile, not a cache hit.
    """
    start = time.perf_counter()
    name = _model_name(module)
    graph = compiler.trace(module.loss, *(specs if specs is not None else module.specs()), name=name)
    vg = compiler.value_and_grad(graph)
    step = StepFunction(None, graph, vg, "compiled", time.perf_counter() - start)  # type: ignore[arg-type]
    if backend == "interpreter":
        step.fall_back("--interpreter was given")
        return step
    try:
        import compiler.codegen as codegen

        start = time.perf_counter()
        kernel = codegen.compile(vg, opt_level, cache=cache)
        step.compile_seconds = time.perf_counter() - start
        step.call = kernel
    except Exception as exc:  # noqa: BLE001 - any codegen gap: report it and train anyway
        step.fall_back(f"compile failed: {_short(exc)}")
    return step


# ------------------------------------------------------------------ the loop
@dataclass
class TrainResult:
    losses: list[float]
    params: Any
    backend: str
    trace_seconds: float
    compile_seconds: float | None
    step_seconds: list[float] = field(default_factory=list)  # value_and_grad call + optimizer update
    call_seconds: list[float] = field(default_factory=list)  # the value_and_grad call alone
    note: str | None = None

    @property
    def median_step_seconds(self) -> float:
        return statistics.median(self.step_seconds) if self.step_seconds else float("nan")

    @property
    def median_call_seconds(self) -> float:
        return statistics.median(self.call_seconds) if self.call_seconds else float("nan")


def _as_tuple(data: Any) -> tuple:
    return tuple(data) if isinstance(data, (tuple, list)) else (data,)


def _batch_source(module: ModuleType, seed: int, batch_fn: Callable[[int], Any] | None) -> Callable[[int], tuple]:
    if batch_fn is not None:
        return lambda step: _as_tuple(batch_fn(step))
    fresh = getattr(module, "train_batch", None)
    if fresh is not None:
        return lambda step: _as_tuple(fresh(step, seed))
    fixed = _as_tuple(module.make_batch(seed))
    return lambda step: fixed


def train(module: ModuleType, steps: int, lr: float, optimizer: str | Any = "adam", *, seed: int = 0,
          print_every: int | None = None, batch_fn: Callable[[int], Any] | None = None,
          specs: tuple | None = None, params: Any = None, backend: str = "compiled", opt_level: int = 2,
          cache: bool = False, log: Callable[[str], None] | None = print) -> TrainResult:
    """Train module's params for `steps` steps; returns the losses and final params.

    Data per step: batch_fn(step) if given, else the model's train_batch(step, seed) if
    it has one, else one fixed make_batch(seed). specs and params (initial values)
    override specs() and init_params(seed), e.g. to train a smaller size in tests.
    log=None silences the printing.
    """
    say = log or (lambda text: None)
    step_fn = value_and_grad_fn(module, specs, backend=backend, opt_level=opt_level, cache=cache)
    say(summary(step_fn.forward))
    if step_fn.backend == "compiled":
        say(f"compiled value_and_grad in {step_fn.compile_seconds:.2f} s "
            f"(trace + autodiff {step_fn.trace_seconds:.2f} s, opt_level {opt_level})")
    elif backend == "interpreter":
        say("(using the reference interpreter: --interpreter was given)")
    else:
        say(f"(compiled path unavailable: {step_fn.note}; using the reference interpreter)")
    params = module.init_params(seed) if params is None else params
    opt = make_optimizer(optimizer, lr)
    batches = _batch_source(module, seed, batch_fn)
    every = print_every or max(1, steps // 10)
    result = TrainResult([], params, step_fn.backend, step_fn.trace_seconds, step_fn.compile_seconds)
    window: list[float] = []
    for step in range(steps):
        data = batches(step)
        start = time.perf_counter()
        try:
            value, grads = step_fn.call(params, *data)
        except Exception as exc:  # noqa: BLE001 - only the first compiled call may fall back
            if step > 0 or step_fn.backend != "compiled":
                raise
            step_fn.fall_back(f"the first compiled call failed: {_short(exc)}")
            say(f"(compiled path unavailable: {step_fn.note}; using the reference interpreter)")
            result.backend, result.compile_seconds = step_fn.backend, None
            start = time.perf_counter()
            value, grads = step_fn.call(params, *data)
        called = time.perf_counter()
        params = opt.step(params, grads)
        result.call_seconds.append(called - start)
        result.step_seconds.append(time.perf_counter() - start)
        loss = float(value)
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {step}; lower the learning rate")
        result.losses.append(loss)
        window.append(loss)
        if step % every == 0 or step == steps - 1:
            say(f"step {step:5d}  loss {loss:.5f}  (mean since last print {np.mean(window):.5f})")
            window = []
    result.params, result.note = params, step_fn.note
    compile_text = f"{result.compile_seconds:.2f} s" if result.compile_seconds is not None else "n/a (interpreter)"
    say(f"{result.backend}: compile {compile_text}, median step {result.median_step_seconds * 1e3:.3f} ms "
        f"(value_and_grad {result.median_call_seconds * 1e3:.3f} ms + {type(opt).__name__} update), "
        f"loss {result.losses[0]:.5f} -> {result.losses[-1]:.5f}")
    return result


def main(module: ModuleType, steps: int, lr: float, optimizer: str = "adam",
         argv: list[str] | None = None) -> TrainResult:
    """The command line of an example script."""
    doc = (module.__doc__ or "").strip()
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--steps", type=int, default=steps, help=f"training steps (default {steps})")
    parser.add_argument("--lr", type=float, default=lr, help=f"learning rate (default {lr})")
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default=optimizer, help=f"(default {optimizer})")
    parser.add_argument("--seed", type=int, default=0, help="seed for init_params and the data (default 0)")
    parser.add_argument("--print-every", type=int, default=None, help="print the loss every N steps")
    parser.add_argument("--opt-level", type=int, default=2, help="compiler.codegen opt_level (default 2)")
    parser.add_argument("--interpreter", action="store_true", help="skip compiling; use the reference interpreter")
    parser.add_argument("--cache", action="store_true", help="use the on-disk compile cache (off: time a real compile)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    return train(module, args.steps, args.lr, args.optimizer, seed=args.seed, print_every=args.print_every,
                 backend="interpreter" if args.interpreter else "compiled", opt_level=args.opt_level,
                 cache=args.cache)
