"""The benchmark workloads.

Each model is written once, against a small op namespace (`ns`), so pullback, JAX and
PyTorch run the same program; `ns` is PullbackOps, JaxOps or TorchOps. Each workload also
has a hand-written vectorized numpy forward+backward (`numpy_step`), the baseline a careful
person would write without a framework; tests/bench checks every one of them against
pullback's reference interpreter in float64.

FLOP counts are analytic and cover matmuls and convolutions only: the forward pass plus
the gradients of the parameters and of every activation that has one (data inputs get no
gradient), 2 flops per multiply-add.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


class Unavailable(Exception):
    """A contender cannot run a workload (a missing op, library or code generator)."""


# ------------------------------------------------------------------ op namespaces
# Where ops live that compiler.ops may not re-export yet.
_PULLBACK_FALLBACK = {"conv2d": "compiler.ops.conv", "max_pool2d": "compiler.ops.conv",
                      "segment_sum": "compiler.ops.gather", "take": "compiler.ops.shape"}


def pullback_op(name: str) -> Callable:
    """compiler.ops.<name>, or the module it is being added in; Unavailable if neither has it."""
    import compiler.ops as ops

    fn = getattr(ops, name, None)
    if fn is None and name in _PULLBACK_FALLBACK:
        try:
            fn = getattr(importlib.import_module(_PULLBACK_FALLBACK[name]), name, None)
        except Exception:  # noqa: BLE001 - a half-written module is just "not available"
            fn = None
    if fn is None:
        raise Unavailable(f"compiler.ops.{name} is not written yet")
    return fn


class PullbackOps:
    name = "pullback"

    def __init__(self) -> None:
        import compiler.ops as ops

        self.ops = ops

    def tanh(self, x): return self.ops.tanh(x)
    def sigmoid(self, x): return self.ops.sigmoid(x)
    def relu(self, x): return self.ops.relu(x)
    def log_softmax(self, x): return self.ops.log_softmax(x, axis=-1)
    def sum(self, x, axis=None): return self.ops.sum(x, axis=axis)
    def mean(self, x, axis=None): return self.ops.mean(x, axis=axis)
    def concat(self, xs, axis): return self.ops.concatenate(list(xs), axis=axis)
    def reshape(self, x, shape): return self.ops.reshape(x, shape)
    def zeros(self, shape, like): return self.ops.zeros(shape, like.dtype)
    def take_rows(self, x, index): return pullback_op("take")(x, index, axis=0)
    def segment_sum(self, x, ids, n): return pullback_op("segment_sum")(x, ids, n)

    def conv2d(self, x, w, b, padding=0, groups=1):
        return pullback_op("conv2d")(x, w, b, padding=padding, groups=groups)

    def max_pool2(self, x): return pullback_op("max_pool2d")(x, 2)


class JaxOps:
    name = "jax"

    def __init__(self) -> None:
        import jax
        import jax.numpy as jnp

        self.jax, self.jnp = jax, jnp

    def tanh(self, x): return self.jnp.tanh(x)
    def sigmoid(self, x): return self.jax.nn.sigmoid(x)
    def relu(self, x): return self.jax.nn.relu(x)
    def log_softmax(self, x): return self.jax.nn.log_softmax(x, axis=-1)
    def sum(self, x, axis=None): return self.jnp.sum(x, axis=axis)
    def mean(self, x, axis=None): return self.jnp.mean(x, axis=axis)
    def concat(self, xs, axis): return self.jnp.concatenate(list(xs), axis=axis)
    def reshape(self, x, shape): return self.jnp.reshape(x, shape)
    def zeros(self, shape, like): return self.jnp.zeros(shape, like.dtype)
    def take_rows(self, x, index): return self.jnp.take(x, index, axis=0)
    def segment_sum(self, x, ids, n): return self.jax.ops.segment_sum(x, ids, num_segments=n)

    def conv2d(self, x, w, b, padding=0, groups=1):
        out = self.jax.lax.conv_general_dilated(
            x, w, (1, 1), [(padding, padding)] * 2, dimension_numbers=("NCHW", "OIHW", "NCHW"),
            feature_group_count=groups)
        return out + b[None, :, None, None]

    def max_pool2(self, x):
        n, c, h, w = x.shape
        return self.jnp.max(self.jnp.reshape(x, (n, c, h // 2, 2, w // 2, 2)), axis=(3, 5))


class TorchOps:
    name = "torch"

    def __init__(self) -> None:
        import torch
        import torch.nn.functional as F

        self.torch, self.F = torch, F

    def tanh(self, x): return self.torch.tanh(x)
    def sigmoid(self, x): return self.torch.sigmoid(x)
    def relu(self, x): return self.torch.relu(x)
    def log_softmax(self, x): return self.torch.log_softmax(x, dim=-1)
    def sum(self, x, axis=None): return self.torch.sum(x) if axis is None else self.torch.sum(x, dim=axis)
    def mean(self, x, axis=None): return self.torch.mean(x) if axis is None else self.torch.mean(x, dim=axis)
    def concat(self, xs, axis): return self.torch.cat(list(xs), dim=axis)
    def reshape(self, x, shape): return self.torch.reshape(x, shape)
    def zeros(self, shape, like): return self.torch.zeros(shape, dtype=like.dtype)
    def take_rows(self, x, index): return self.torch.index_select(x, 0, index)

    def segment_sum(self, x, ids, n):
        return self.torch.zeros((n,) + tuple(x.shape[1:]), dtype=x.dtype).index_add(0, ids, x)

    def conv2d(self, x, w, b, padding=0, groups=1):
        return self.F.conv2d(x, w, b, padding=padding, groups=groups)

    def max_pool2(self, x): return self.F.max_pool2d(x, 2)


# ------------------------------------------------------------------ workloads
@dataclass
class Workload:
    name: str
    description: str
    model: Callable  # model(ns) -> loss(params, *data)
    params: dict[str, np.ndarray]
    data: tuple[np.ndarray, ...]
    numpy_step: Callable  # numpy_step(params, *data) -> (loss, grads dict)
    flops: int  # forward + backward matmul/conv flops of one training step
    sizes: dict[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()  # compiler.ops functions beyond the core ones

    def args(self) -> tuple:
        return (self.params, *self.data)

    def missing_ops(self) -> list[str]:
        missing = []
        for name in self.requires:
            try:
                pullback_op(name)
            except Unavailable:
                missing.append(name)
        return missing


def _mm(m: int, k: int, n: int, grad_a: bool = True, grad_b: bool = True) -> int:
    """Flops of (m,k)@(k,n) forward plus the gradients asked for (each costs as much again)."""
    return 2 * m * k * n * (1 + grad_a + grad_b)


def _conv_flops(n: int, o: int, ho: int, wo: int, cg: int, kh: int, kw: int, grad_x: bool = True) -> int:
    return 2 * n * o * ho * wo * cg * kh * kw * (2 + grad_x)


def _dense(rng: np.random.Generator, fan_in: int, fan_out: int, dtype: Any, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal((fan_in, fan_out)) * (scale / np.sqrt(fan_in))).astype(dtype)


def _small_bias(rng: np.random.Generator, n: int, dtype: Any) -> np.ndarray:
    # Nonzero biases so a wrong bias gradient cannot hide behind zeros.
    return (0.1 * rng.standard_normal(n)).astype(dtype)


def _log_softmax(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log_softmax(z), softmax(z)) along the last axis."""
    shifted = z - z.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    s = e.sum(axis=-1, keepdims=True)
    return shifted - np.log(s), e / s


def _softmax_xent_grad(logits: np.ndarray, y: np.ndarray) -> tuple[Any, np.ndarray]:
    """loss = -sum(y * log_softmax(logits)) / batch and d loss / d logits."""
    batch = logits.shape[0]
    logp, p = _log_softmax(logits)
    loss = -(y * logp).sum() / batch
    g = -y / batch  # d loss / d logp
    return loss, g - p * g.sum(axis=-1, keepdims=True)


# ---- mlp ----------------------------------------------------------------------------
def mlp_model(ns: Any) -> Callable:
    def loss(params, x, y):
        h = ns.relu(x @ params["W1"] + params["b1"])
        h = ns.relu(h @ params["W2"] + params["b2"])
        logits = h @ params["W3"] + params["b3"]
        return -ns.sum(y * ns.log_softmax(logits)) * (1.0 / x.shape[0])
    return loss


def mlp_numpy(params: dict, x: np.ndarray, y: np.ndarray) -> tuple[Any, dict]:
    W1, b1, W2, b2, W3, b3 = (params[k] for k in ("W1", "b1", "W2", "b2", "W3", "b3"))
    z1 = x @ W1 + b1
    h1 = np.maximum(z1, 0)
    z2 = h1 @ W2 + b2
    h2 = np.maximum(z2, 0)
    loss, dlogits = _softmax_xent_grad(h2 @ W3 + b3, y)
    dz2 = (dlogits @ W3.T) * (z2 > 0)
    dz1 = (dz2 @ W2.T) * (z1 > 0)
    grads = {"W3": h2.T @ dlogits, "b3": dlogits.sum(0), "W2": h1.T @ dz2, "b2": dz2.sum(0),
             "W1": x.T @ dz1, "b1": dz1.sum(0)}
    return loss, grads


def make_mlp(batch: int = 64, sizes: tuple[int, ...] = (784, 256, 256, 10), dtype: Any = np.float32,
             seed: int = 0) -> Workload:
    rng = np.random.default_rng(seed)
    n_in, h1, h2, n_out = sizes
    params = {"W1": _dense(rng, n_in, h1, dtype), "b1": _small_bias(rng, h1, dtype),
              "W2": _dense(rng, h1, h2, dtype), "b2": _small_bias(rng, h2, dtype),
              "W3": _dense(rng, h2, n_out, dtype), "b3": _small_bias(rng, n_out, dtype)}
    x = rng.standard_normal((batch, n_in)).astype(dtype)
    y = np.eye(n_out, dtype=dtype)[rng.integers(0, n_out, batch)]
    flops = _mm(batch, n_in, h1, grad_a=False) + _mm(batch, h1, h2) + _mm(batch, h2, n_out)
    return Workload("mlp", f"MLP {n_in}-{h1}-{h2}-{n_out}, ReLU, softmax cross-entropy, batch {batch}",
                    mlp_model, params, (x, y), mlp_numpy, flops, {"batch": batch, "sizes": list(sizes)})


# ---- rnn ----------------------------------------------------------------------------
def rnn_model(ns: Any) -> Callable:
    def loss(params, xs, targets):
        steps, batch, _ = xs.shape
        h = ns.zeros((batch, params["Wh"].shape[0]), like=xs)
        total = 0.0
        for t in range(steps):
            h = ns.tanh(xs[t] @ params["Wx"] + h @ params["Wh"] + params["b"])
            d = h @ params["Wy"] + params["by"] - targets[t]
            total = total + ns.mean(d * d)
        return total * (1.0 / steps)
    return loss


def rnn_numpy(params: dict, xs: np.ndarray, targets: np.ndarray) -> tuple[Any, dict]:
    Wx, Wh, b, Wy, by = (params[k] for k in ("Wx", "Wh", "b", "Wy", "by"))
    steps, batch, n_in = xs.shape
    hidden, n_out = Wh.shape[0], Wy.shape[1]
    # Input and output projections of all steps are one matmul each; only h @ Wh is sequential.
    pre = (xs.reshape(steps * batch, n_in) @ Wx + b).reshape(steps, batch, hidden)
    hs = np.empty((steps + 1, batch, hidden), xs.dtype)
    hs[0] = 0
    for t in range(steps):
        hs[t + 1] = np.tanh(pre[t] + hs[t] @ Wh)
    hflat = hs[1:].reshape(steps * batch, hidden)
    diff = hflat @ Wy + by - targets.reshape(steps * batch, n_out)
    count = steps * batch * n_out
    loss = (diff * diff).sum() / count
    dy = diff * (2.0 / count)
    dhs = (dy @ Wy.T).reshape(steps, batch, hidden)
    dpre = np.empty_like(dhs)
    carry = np.zeros((batch, hidden), xs.dtype)
    for t in range(steps - 1, -1, -1):
        dpre[t] = (dhs[t] + carry) * (1 - hs[t + 1] * hs[t + 1])
        carry = dpre[t] @ Wh.T
    dflat = dpre.reshape(steps * batch, hidden)
    grads = {"Wx": xs.reshape(steps * batch, n_in).T @ dflat,
             "Wh": hs[:-1].reshape(steps * batch, hidden).T @ dflat, "b": dflat.sum(0),
             "Wy": hflat.T @ dy, "by": dy.sum(0)}
    return loss, grads


def make_rnn(batch: int = 16, n_in: int = 32, hidden: int = 128, n_out: int = 32, steps: int = 32,
             dtype: Any = np.float32, seed: int = 0, name: str = "rnn") -> Workload:
    rng = np.random.default_rng(seed)
    params = {"Wx": _dense(rng, n_in, hidden, dtype), "Wh": _dense(rng, hidden, hidden, dtype, 0.5),
              "b": _small_bias(rng, hidden, dtype), "Wy": _dense(rng, hidden, n_out, dtype),
              "by": _small_bias(rng, n_out, dtype)}
    xs = rng.standard_normal((steps, batch, n_in)).astype(dtype)
    targets = rng.standard_normal((steps, batch, n_out)).astype(dtype)
    flops = steps * (_mm(batch, n_in, hidden, grad_a=False) + _mm(batch, hidden, hidden) + _mm(batch, hidden, n_out))
    return Workload(name, f"tanh RNN T={steps}, batch {batch}, {n_in}->{hidden}->{n_out} per step, mean MSE",
                    rnn_model, params, (xs, targets), rnn_numpy, flops,
                    {"batch": batch, "n_in": n_in, "hidden": hidden, "n_out": n_out, "steps": steps})


# ---- lstm ---------------------------------------------------------------------------
def lstm_model(ns: Any) -> Callable:
    def loss(params, xs, target):
        steps, batch, _ = xs.shape
        hidden = params["W"].shape[1] // 4
        h = ns.zeros((batch, hidden), like=xs)
        c = ns.zeros((batch, hidden), like=xs)
        for t in range(steps):
            z = ns.concat([xs[t], h], axis=1) @ params["W"] + params["b"]
            i = ns.sigmoid(z[:, :hidden])
            f = ns.sigmoid(z[:, hidden:2 * hidden])
            g = ns.tanh(z[:, 2 * hidden:3 * hidden])
            o = ns.sigmoid(z[:, 3 * hidden:])
            c = f * c + i * g
            h = o * ns.tanh(c)
        d = h @ params["Wy"] + params["by"] - target
        return ns.mean(d * d)
    return loss


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1)  # no overflow warnings for large |x|


def lstm_numpy(params: dict, xs: np.ndarray, target: np.ndarray) -> tuple[Any, dict]:
    W, b, Wy, by = (params[k] for k in ("W", "b", "Wy", "by"))
    steps, batch, n_in = xs.shape
    H = hidden = W.shape[1] // 4
    inputs = np.empty((steps, batch, n_in + hidden), xs.dtype)  # [x_t, h_{t-1}] of every step
    gates = np.empty((steps, batch, 4 * hidden), xs.dtype)  # i, f, g, o after their nonlinearity
    cs = np.empty((steps + 1, batch, hidden), xs.dtype)
    tanh_c = np.empty((steps, batch, hidden), xs.dtype)
    cs[0] = 0
    h = np.zeros((batch, hidden), xs.dtype)
    for t in range(steps):
        inputs[t, :, :n_in] = xs[t]
        inputs[t, :, n_in:] = h
        z = inputs[t] @ W + b
        a = gates[t]
        a[:, :2 * H] = _sigmoid(z[:, :2 * H])
        a[:, 2 * H:3 * H] = np.tanh(z[:, 2 * H:3 * H])
        a[:, 3 * H:] = _sigmoid(z[:, 3 * H:])
        cs[t + 1] = a[:, H:2 * H] * cs[t] + a[:, :H] * a[:, 2 * H:3 * H]
        tanh_c[t] = np.tanh(cs[t + 1])
        h = a[:, 3 * H:] * tanh_c[t]
    diff = h @ Wy + by - target
    count = diff.size
    loss = (diff * diff).sum() / count
    dy = diff * (2.0 / count)
    dh = dy @ Wy.T
    dc = np.zeros_like(dh)
    dz = np.empty_like(gates)
    for t in range(steps - 1, -1, -1):
        a = gates[t]
        i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
        dc = dc + dh * o * (1 - tanh_c[t] * tanh_c[t])
        d = dz[t]
        d[:, :H] = dc * g * i * (1 - i)
        d[:, H:2 * H] = dc * cs[t] * f * (1 - f)
        d[:, 2 * H:3 * H] = dc * i * (1 - g * g)
        d[:, 3 * H:] = dh * tanh_c[t] * o * (1 - o)
        dc = dc * f
        dh = d @ W[n_in:].T  # only h_{t-1} of [x_t, h_{t-1}] has a gradient
    dflat = dz.reshape(steps * batch, 4 * hidden)
    grads = {"W": inputs.reshape(steps * batch, n_in + hidden).T @ dflat, "b": dflat.sum(0),
             "Wy": h.T @ dy, "by": dy.sum(0)}
    return loss, grads


def make_lstm(batch: int = 16, n_in: int = 32, hidden: int = 128, n_out: int = 10, steps: int = 32,
              dtype: Any = np.float32, seed: int = 0) -> Workload:
    rng = np.random.default_rng(seed)
    b = _small_bias(rng, 4 * hidden, dtype)
    b[hidden:2 * hidden] += 1  # forget gate starts open
    params = {"W": _dense(rng, n_in + hidden, 4 * hidden, dtype), "b": b,
              "Wy": _dense(rng, hidden, n_out, dtype), "by": _small_bias(rng, n_out, dtype)}
    xs = rng.standard_normal((steps, batch, n_in)).astype(dtype)
    target = rng.standard_normal((batch, n_out)).astype(dtype)
    # The gate matmul's input gradient is needed for its h part only.
    flops = steps * (_mm(batch, n_in + hidden, 4 * hidden, grad_a=False) + 2 * batch * hidden * 4 * hidden)
    flops += _mm(batch, hidden, n_out)
    return Workload("lstm", f"LSTM T={steps}, batch {batch}, fused gates ({n_in + hidden}x{4 * hidden}), "
                    f"last-step MSE to {n_out}", lstm_model, params, (xs, target), lstm_numpy, flops,
                    {"batch": batch, "n_in": n_in, "hidden": hidden, "n_out": n_out, "steps": steps})


# ---- cnn ----------------------------------------------------------------------------
def cnn_model(ns: Any) -> Callable:
    def loss(params, x, y):
        h = ns.max_pool2(ns.relu(ns.conv2d(x, params["w1"], params["b1"], padding=1)))
        h = ns.conv2d(h, params["wd"], params["bd"], padding=1, groups=h.shape[1])
        h = ns.max_pool2(ns.relu(ns.conv2d(h, params["wp"], params["bp"])))
        n, c, hh, ww = h.shape
        logits = ns.reshape(h, (n, c * hh * ww)) @ params["Wf"] + params["bf"]
        return -ns.sum(y * ns.log_softmax(logits)) * (1.0 / n)
    return loss


def _patches(x: np.ndarray, k: int, pad: int) -> np.ndarray:
    """Stride-1 windows of the zero-padded image: a view (N, C, Ho, Wo, k, k)."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    return sliding_window_view(xp, (k, k), axis=(2, 3))


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int) -> np.ndarray:
    """Dense stride-1 conv (groups=1) as one GEMM over im2col patches."""
    n, c, _, _ = x.shape
    o, _, k, _ = w.shape
    cols = _patches(x, k, pad)
    ho, wo = cols.shape[2:4]
    cols = cols.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * k * k)
    out = cols @ w.reshape(o, c * k * k).T + b
    return np.ascontiguousarray(out.reshape(n, ho, wo, o).transpose(0, 3, 1, 2))


def _conv_grads(dout: np.ndarray, x: np.ndarray, w: np.ndarray, pad: int, need_dx: bool) -> tuple:
    n, c, h, wd = x.shape
    o, _, k, _ = w.shape
    ho, wo = dout.shape[2:]
    cols = _patches(x, k, pad).transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * k * k)
    dflat = dout.transpose(0, 2, 3, 1).reshape(n * ho * wo, o)
    dw = (dflat.T @ cols).reshape(w.shape)
    db = dflat.sum(0)
    if not need_dx:
        return None, dw, db
    dcols = (dflat @ w.reshape(o, c * k * k)).reshape(n, ho, wo, c, k, k)
    dxp = np.zeros((n, c, h + 2 * pad, wd + 2 * pad), x.dtype)
    for i in range(k):  # col2im: k*k shifted adds
        for j in range(k):
            dxp[:, :, i:i + ho, j:j + wo] += dcols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return dxp[:, :, pad:pad + h, pad:pad + wd], dw, db


def _depthwise(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int) -> np.ndarray:
    """Depthwise stride-1 conv (w: (C, 1, k, k)) as k*k shifted multiply-adds."""
    n, c, h, wd = x.shape
    k = w.shape[2]
    ho, wo = h + 2 * pad - k + 1, wd + 2 * pad - k + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.broadcast_to(b[None, :, None, None], (n, c, ho, wo)).copy()
    for i in range(k):
        for j in range(k):
            out += xp[:, :, i:i + ho, j:j + wo] * w[None, :, 0, i, j, None, None]
    return out


def _depthwise_grads(dout: np.ndarray, x: np.ndarray, w: np.ndarray, pad: int) -> tuple:
    n, c, h, wd = x.shape
    k = w.shape[2]
    ho, wo = dout.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dxp = np.zeros_like(xp)
    dw = np.empty_like(w)
    for i in range(k):
        for j in range(k):
            dw[:, 0, i, j] = np.einsum("nchw,nchw->c", dout, xp[:, :, i:i + ho, j:j + wo])
            dxp[:, :, i:i + ho, j:j + wo] += dout * w[None, :, 0, i, j, None, None]
    return dxp[:, :, pad:pad + h, pad:pad + wd], dw, dout.sum((0, 2, 3))


def _pool2(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2x2 stride-2 max pool; also the index (0..3) of each window's first maximum."""
    n, c, h, w = x.shape
    windows = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
    first = windows.argmax(axis=-1)
    return np.take_along_axis(windows, first[..., None], -1)[..., 0], first


def _pool2_grad(dout: np.ndarray, first: np.ndarray) -> np.ndarray:
    n, c, ho, wo = dout.shape
    dwin = np.zeros((n, c, ho, wo, 4), dout.dtype)
    np.put_along_axis(dwin, first[..., None], dout[..., None], -1)
    return dwin.reshape(n, c, ho, wo, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, 2 * ho, 2 * wo)


def cnn_numpy(params: dict, x: np.ndarray, y: np.ndarray) -> tuple[Any, dict]:
    n = x.shape[0]
    z1 = _conv(x, params["w1"], params["b1"], 1)
    p1, first1 = _pool2(np.maximum(z1, 0))
    zd = _depthwise(p1, params["wd"], params["bd"], 1)
    zp = _conv(zd, params["wp"], params["bp"], 0)
    p2, first2 = _pool2(np.maximum(zp, 0))
    flat = p2.reshape(n, -1)
    loss, dlogits = _softmax_xent_grad(flat @ params["Wf"] + params["bf"], y)
    grads = {"Wf": flat.T @ dlogits, "bf": dlogits.sum(0)}
    dzp = _pool2_grad((dlogits @ params["Wf"].T).reshape(p2.shape), first2) * (zp > 0)
    dzd, grads["wp"], grads["bp"] = _conv_grads(dzp, zd, params["wp"], 0, need_dx=True)
    dp1, grads["wd"], grads["bd"] = _depthwise_grads(dzd, p1, params["wd"], 1)
    dz1 = _pool2_grad(dp1, first1) * (z1 > 0)
    _, grads["w1"], grads["b1"] = _conv_grads(dz1, x, params["w1"], 1, need_dx=False)
    return loss, grads


def make_cnn(batch: int = 16, image: int = 28, c1: int = 8, c2: int = 16, n_out: int = 10,
             dtype: Any = np.float32, seed: int = 0) -> Workload:
    if image % 4:
        raise ValueError(f"cnn: image size must be a multiple of 4 (two 2x2 pools), got {image}")
    rng = np.random.default_rng(seed)

    def kernel(shape: tuple[int, ...]) -> np.ndarray:
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(dtype)

    flat = c2 * (image // 4) ** 2
    params = {"w1": kernel((c1, 1, 3, 3)), "b1": _small_bias(rng, c1, dtype),
              "wd": kernel((c1, 1, 3, 3)), "bd": _small_bias(rng, c1, dtype),
              "wp": kernel((c2, c1, 1, 1)), "bp": _small_bias(rng, c2, dtype),
              "Wf": _dense(rng, flat, n_out, dtype), "bf": _small_bias(rng, n_out, dtype)}
    x = rng.standard_normal((batch, 1, image, image)).astype(dtype)
    y = np.eye(n_out, dtype=dtype)[rng.integers(0, n_out, batch)]
    half = image // 2
    flops = (_conv_flops(batch, c1, image, image, 1, 3, 3, grad_x=False)
             + _conv_flops(batch, c1, half, half, 1, 3, 3) + _conv_flops(batch, c2, half, half, c1, 1, 1)
             + _mm(batch, flat, n_out))
    return Workload("cnn", f"CNN {image}x{image}: conv3x3({c1}) relu pool2, depthwise3x3 + pointwise({c2}) relu pool2, "
                    f"dense {n_out}, batch {batch}", cnn_model, params, (x, y), cnn_numpy, flops,
                    {"batch": batch, "image": image, "c1": c1, "c2": c2, "n_out": n_out},
                    requires=("conv2d", "max_pool2d"))


# ---- gnn ----------------------------------------------------------------------------
def gnn_model(ns: Any) -> Callable:
    def loss(params, h, src, dst, target):
        nodes = h.shape[0]
        for layer in ("1", "2"):
            messages = ns.segment_sum(ns.take_rows(h, src), dst, nodes)
            h = ns.relu(messages @ params["W" + layer] + h @ params["S" + layer])
        d = ns.mean(h, axis=0) - target
        return ns.mean(d * d)
    return loss


def _segment_sum(data: np.ndarray, ids: np.ndarray, n: int) -> np.ndarray:
    """out[s] = sum of data[ids == s]: sort by id, then one reduceat (several times faster than np.add.at)."""
    out = np.zeros((n,) + data.shape[1:], data.dtype)
    if ids.size == 0:
        return out
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    out[sorted_ids[starts]] = np.add.reduceat(data[order], starts, axis=0)
    return out


def gnn_numpy(params: dict, h0: np.ndarray, src: np.ndarray, dst: np.ndarray, target: np.ndarray) -> tuple:
    nodes = h0.shape[0]
    saved = []
    h = h0
    for layer in ("1", "2"):
        agg = _segment_sum(h[src], dst, nodes)
        z = agg @ params["W" + layer] + h @ params["S" + layer]
        saved.append((h, agg, z))
        h = np.maximum(z, 0)
    diff = h.mean(0) - target
    loss = (diff * diff).sum() / diff.size
    dh = np.broadcast_to(diff * (2.0 / (diff.size * nodes)), h.shape)
    grads = {}
    for layer, (h_in, agg, z) in zip(("2", "1"), reversed(saved)):
        dz = dh * (z > 0)
        grads["W" + layer] = agg.T @ dz
        grads["S" + layer] = h_in.T @ dz
        if layer == "1":
            break  # h0 is data: no gradient
        dh = dz @ params["S" + layer].T + _segment_sum((dz @ params["W" + layer].T)[dst], src, nodes)
    return loss, grads


def make_gnn(nodes: int = 2000, edges: int = 10000, features: int = 64, dtype: Any = np.float32,
             seed: int = 0) -> Workload:
    rng = np.random.default_rng(seed)
    params = {"W1": _dense(rng, features, features, dtype, 0.5), "S1": _dense(rng, features, features, dtype, 0.5),
              "W2": _dense(rng, features, features, dtype, 0.5), "S2": _dense(rng, features, features, dtype, 0.5)}
    h0 = rng.standard_normal((nodes, features)).astype(dtype)
    src = rng.integers(0, nodes, edges).astype(np.int32)
    dst = rng.integers(0, nodes, edges).astype(np.int32)
    target = rng.standard_normal(features).astype(dtype)
    # Layer 1's inputs come from data only; layer 2 needs its input gradients.
    flops = 2 * _mm(nodes, features, features, grad_a=False) + 2 * _mm(nodes, features, features)
    return Workload("gnn", f"GNN {nodes} nodes, {edges} edges, {features} features, 2 message-passing layers, "
                    "mean readout MSE", gnn_model, params, (h0, src, dst, target), gnn_numpy, flops,
                    {"nodes": nodes, "edges": edges, "features": features}, requires=("take", "segment_sum"))


# ------------------------------------------------------------------ presets
BUILDERS: dict[str, Callable[..., Workload]] = {
    "mlp": make_mlp, "rnn": make_rnn, "lstm": make_lstm, "cnn": make_cnn, "gnn": make_gnn,
}

# Sizes per preset: "full" is the benchmark, "quick" the smoke run, "test" the float64 checks.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {"mlp": {}, "rnn": {}, "lstm": {}, "cnn": {}, "gnn": {}},
    "quick": {"mlp": {}, "rnn": {"steps": 8}, "lstm": {"steps": 8}, "cnn": {}, "gnn": {}},
    "test": {
        "mlp": {"batch": 4, "sizes": (6, 5, 5, 3)},
        "rnn": {"batch": 2, "n_in": 3, "hidden": 5, "n_out": 2, "steps": 3},
        "lstm": {"batch": 2, "n_in": 3, "hidden": 5, "n_out": 2, "steps": 3},
        "cnn": {"batch": 2, "image": 8, "c1": 2, "c2": 3, "n_out": 3},
        "gnn": {"nodes": 7, "edges": 15, "features": 4},
    },
}

SCALING_STEPS = {"full": (8, 32, 128, 512), "quick": (4, 16)}


def build(name: str, preset: str = "full", dtype: Any = np.float32, seed: int = 0, **overrides: Any) -> Workload:
    if name not in BUILDERS:
        raise KeyError(f"unknown workload {name!r}; choose from {', '.join(BUILDERS)}")
    sizes = {**PRESETS[preset][name], **overrides}
    return BUILDERS[name](dtype=dtype, seed=seed, **sizes)
