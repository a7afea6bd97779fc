"""The contenders: how each one is set up to run a workload's training step.

pullback compiles value_and_grad of the traced model (and a forward-only kernel, for the
backward/forward ratio); numpy runs the hand-written baseline; JAX and PyTorch run the
same model through their op namespaces when they are installed. A contender that cannot
run raises Unavailable with the reason.
"""
from __future__ import annotations

import contextlib
import importlib.util
import inspect
import os
import signal
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from bench import harness
from bench.workloads import JaxOps, PullbackOps, TorchOps, Unavailable, Workload


@dataclass
class Contender:
    name: str
    step: Callable[[], Any]  # one training step on the workload's fixed inputs
    result: Callable[[], tuple[float, dict | None]]  # (loss, grads) as numpy, for the gradient check
    setup_s: float | None = None  # jit / compile time where the contender has one
    info: dict[str, Any] = field(default_factory=dict)
    hooks: tuple[Callable[[], Any], Callable[[], Any]] | None = None  # untimed, around each sample
    serial: Callable[[], Any] | None = None  # pullback: the same step built serial, for the thread speedup


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# ------------------------------------------------------------------ pullback
def _codegen_compile() -> Callable:
    try:
        import compiler.codegen as codegen
    except ModuleNotFoundError as exc:
        if exc.name in ("compiler.codegen", "compiler"):
            raise Unavailable("the code generator (compiler.codegen) is not written yet") from None
        raise Unavailable(f"compiler.codegen does not import: {one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - a half-written package must not stop the suite
        raise Unavailable(f"compiler.codegen does not import: {one_line(exc)}") from None
    fn = getattr(codegen, "compile", None)
    if fn is None:
        raise Unavailable("compiler.codegen.compile is not written yet")
    return fn


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _compile(fn: Callable, graph: Any, opt_level: int, cache: bool) -> Any:
    """compile(graph) with the artifact cache on or off (cache=False if compile takes it,
    else PULLBACK_NO_CACHE=1)."""
    try:
        takes_cache = "cache" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes_cache = False
    if takes_cache:
        return fn(graph, opt_level=opt_level, cache=cache)
    if cache:
        return fn(graph, opt_level=opt_level)
    with _environment(PULLBACK_NO_CACHE="1"):
        return fn(graph, opt_level=opt_level)


def warm_up_compiler(opt_level: int) -> float | None:
    """Seconds of a first tiny compile (LLVM start-up), or None if pullback cannot compile."""
    try:
        compile_fn = _codegen_compile()
        import compiler

        graph = compiler.trace(lambda x: compiler.ops.tanh(x) * 2.0, compiler.Spec((4,)), name="warm_up")
        return harness.timed(lambda: _compile(compile_fn, graph, opt_level, cache=False))[1]
    except Exception:  # noqa: BLE001 - the workloads report why pullback is unavailable
        return None


def setup_pullback(wl: Workload, opt_level: int) -> tuple[Contender, Contender]:
    """(training step, forward-only) contenders, or Unavailable with the reason."""
    missing = wl.missing_ops()
    if missing:
        raise Unavailable(f"needs compiler.ops.{', compiler.ops.'.join(missing)}, not written yet")
    compile_fn = _codegen_compile()
    import compiler

    stage = "tracing"
    try:
        forward, trace_s = harness.timed(lambda: compiler.trace(wl.model(PullbackOps()), *wl.args(), name=wl.name))
        stage = "value_and_grad"
        step_graph, autodiff_s = harness.timed(lambda: compiler.value_and_grad(forward))
        stage = "compiling the training step"
        _compile(compile_fn, step_graph, opt_level, cache=True)  # fills the cache (a hit on a second run)
        kernel, cold_s = harness.timed(lambda: _compile(compile_fn, step_graph, opt_level, cache=False))
        _, cached_s = harness.timed(lambda: _compile(compile_fn, step_graph, opt_level, cache=True))
        stage = "compiling the forward pass"
        fwd_kernel, fwd_cold_s = harness.timed(lambda: _compile(compile_fn, forward, opt_level, cache=False))
        serial_kernel = None
        if "parallel" in _parameters(compile_fn):
            stage = "compiling the serial training step"
            serial_kernel = compile_fn(step_graph, opt_level=opt_level, parallel=False)
        stage = "calling the compiled kernels"
        args = wl.args()
        kernel(*args)
        fwd_kernel(*args)
        if serial_kernel is not None:
            serial_kernel(*args)
    except Unavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of a compiler in progress is reported, not raised
        raise Unavailable(f"{stage} failed: {one_line(exc)}") from None

    def result() -> tuple[float, dict]:
        loss, grads = kernel(*args)
        return float(loss), {k: np.asarray(v) for k, v in grads.items()}

    info = {"trace_s": trace_s, "autodiff_s": autodiff_s, "compile_cold_s": cold_s, "compile_cached_s": cached_s,
            "forward_compile_cold_s": fwd_cold_s, "workspace_bytes": int(getattr(kernel, "workspace_bytes", 0)),
            "forward_workspace_bytes": int(getattr(fwd_kernel, "workspace_bytes", 0)),
            "graph_nodes": _node_count(step_graph), "opt_level": opt_level,
            "cache_control": "cache=False" if "cache" in _parameters(compile_fn) else "PULLBACK_NO_CACHE=1"}
    def forward_result() -> tuple[float, None]:
        return float(fwd_kernel(*args)), None  # the loss only: checked against numpy's

    serial = (lambda: serial_kernel(*args)) if serial_kernel is not None else None
    step = Contender("pullback", lambda: kernel(*args), result, cold_s, info, serial=serial)
    return step, Contender("pullback-fwd", lambda: fwd_kernel(*args), forward_result, fwd_cold_s)


def _parameters(fn: Callable) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def _node_count(graph: Any) -> int | None:
    try:
        return int(graph.nx.number_of_nodes())
    except Exception:  # noqa: BLE001 - informational only
        return None


class SetupTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise SetupTimeout in this (main) thread after `seconds`. It interrupts Python code,
    such as torch.compile's; native code finishes its current call first."""
    import threading

    if not seconds or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise SetupTimeout(f"setup took longer than {seconds:g} s (--setup-timeout)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------ numpy and peers
def setup_numpy(wl: Workload) -> Contender:
    args = wl.args()

    def result() -> tuple[float, dict]:
        loss, grads = wl.numpy_step(*args)
        return float(loss), grads

    return Contender("numpy", lambda: wl.numpy_step(*args), result)


def setup_numpy_single_thread(wl: Workload) -> Contender:
    """The numpy step with BLAS capped at one thread (threadpoolctl), as pullback's kernels run."""
    try:
        from threadpoolctl import ThreadpoolController
    except Exception as exc:  # noqa: BLE001 - optional
        raise Unavailable(f"threadpoolctl is not installed ({one_line(exc)})") from None
    try:
        controller = ThreadpoolController()
    except Exception as exc:  # noqa: BLE001
        raise Unavailable(f"threadpoolctl failed: {one_line(exc)}") from None
    limiter: list[Any] = []

    def enter() -> None:
        limiter.append(controller.limit(limits=1, user_api="blas"))

    def leave() -> None:
        limiter.pop().restore_original_limits()

    base = setup_numpy(wl)
    return Contender("numpy-1t", base.step, base.result, None, {"blas_threads": 1}, (enter, leave))


def importable_peers(wanted: tuple[str, ...]) -> dict[str, str]:
    """{peer: why not} for the optional peers that are not installed."""
    missing = {}
    for name, module in (("numpy-1t", "threadpoolctl"), ("jax", "jax"), ("torch", "torch"),
                         ("torch.compile", "torch")):
        if name not in wanted:
            continue
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:  # an installed but broken one is caught when its setup imports it
            missing[name] = f"{module} is not installed"
            if name == "numpy-1t":
                missing[name] += "; to time numpy on one BLAS thread, install it or set OPENBLAS_NUM_THREADS=1"
    return missing


def setup_jax(wl: Workload) -> Contender:
    try:
        import jax
    except Exception as exc:  # noqa: BLE001 - optional peer
        raise Unavailable(f"not importable ({one_line(exc)})") from None
    try:
        params = {k: jax.device_put(v) for k, v in wl.params.items()}
        data = tuple(jax.device_put(d) for d in wl.data)
        fn = jax.jit(jax.value_and_grad(wl.model(JaxOps())))
        _, first_s = harness.timed(lambda: jax.block_until_ready(fn(params, *data)))
    except SetupTimeout:
        raise
    except Exception as exc:  # noqa: BLE001
        raise Unavailable(f"failed: {one_line(exc)}") from None

    def result() -> tuple[float, dict]:
        loss, grads = fn(params, *data)
        return float(loss), {k: np.asarray(v) for k, v in grads.items()}

    return Contender("jax", lambda: jax.block_until_ready(fn(params, *data)), result, first_s,
                     {"jax": jax.__version__, "backend": jax.default_backend()})


def _torch_inputs(torch: Any, wl: Workload) -> tuple[dict, tuple]:
    params = {k: torch.tensor(v, requires_grad=True) for k, v in wl.params.items()}
    data = tuple(torch.from_numpy(np.ascontiguousarray(d)).long() if d.dtype.kind in "iu" else torch.from_numpy(d)
                 for d in wl.data)
    return params, data


def setup_torch(wl: Workload, compiled: bool = False) -> Contender:
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - optional peer
        raise Unavailable(f"not importable ({one_line(exc)})") from None
    name = "torch.compile" if compiled else "torch"
    try:
        params, data = _torch_inputs(torch, wl)
        loss_fn = wl.model(TorchOps())
        if compiled:
            loss_fn = torch.compile(loss_fn)
        leaves = list(params.values())

        def step() -> tuple:
            loss = loss_fn(params, *data)
            return loss, torch.autograd.grad(loss, leaves)

        _, first_s = harness.timed(step)
    except SetupTimeout:
        raise
    except Exception as exc:  # noqa: BLE001
        raise Unavailable(f"failed: {one_line(exc)}") from None

    def result() -> tuple[float, dict]:
        loss, grads = step()
        return float(loss.detach()), {k: g.detach().numpy() for k, g in zip(params, grads)}

    return Contender(name, step, result, first_s if compiled else None,
                     {"torch": torch.__version__, "threads": torch.get_num_threads()})


# ------------------------------------------------------------------ checks
def grad_error(got: tuple[float, dict | None], want: tuple[float, dict]) -> tuple[float, str]:
    """Worst relative error over the loss and every gradient leaf: (error, which).
    Gradients None: a forward-only result, only the loss is compared."""
    (loss, grads), (ref_loss, ref_grads) = got, want
    if not np.isfinite(loss):
        return float("inf"), "the loss is not finite"
    if grads is None:
        return abs(loss - ref_loss) / max(abs(ref_loss), 1e-30), "loss"
    if set(grads) != set(ref_grads):
        return float("inf"), f"gradient names {sorted(grads)} != {sorted(ref_grads)}"
    worst = (abs(loss - ref_loss) / max(abs(ref_loss), 1e-30), "loss")
    for key, ref in ref_grads.items():
        value = np.asarray(grads[key], dtype=np.float64)
        ref = np.asarray(ref, dtype=np.float64)
        if value.shape != ref.shape:
            return float("inf"), f"d{key} has shape {value.shape}, expected {ref.shape}"
        if not np.all(np.isfinite(value)):
            return float("inf"), f"d{key} is not finite"
        err = float(np.max(np.abs(value - ref), initial=0.0)) / max(float(np.max(np.abs(ref), initial=0.0)), 1e-30)
        if err > worst[0]:
            worst = (err, f"d{key}")
    return worst
