"""A two-layer message-passing graph network for node regression on random graphs.

A graph is N nodes with features x (N, F) and E directed edges src[e] -> dst[e]
(int32 data, so every step can bring a new graph of the same size). One layer:

    messages  m_e = h[src[e]] @ W_msg                 ops.take gathers the source rows
    aggregate a_i = sum of m_e over edges e into i    ops.segment_sum onto destinations
    update    h_i' = relu(h_i @ W_self + a_i + b)

Two layers, then a linear readout per node; the loss is the MSE against a target that
needs two hops of the graph: y = A tanh(A x u) (A the adjacency, u a fixed vector),
standardized.

Backward, a node's state gets gradient from its own update (W_self) and from every
message it sent (take's VJP is a scatter-add over sources); segment_sum's VJP gathers
the destination gradients back onto the edges.

    pullback dump examples/gnn.py --stage backward
    python examples/gnn.py [--steps 400]
"""
import numpy as np

from compiler import Spec, ops

NODES, EDGES, FEATURES, HIDDEN = 24, 72, 4, 32


def layer(h, src, dst, w_self, w_msg, b):
    messages = ops.take(h, src, axis=0) @ w_msg
    incoming = ops.segment_sum(messages, dst, num_segments=h.shape[0])
    return ops.relu(h @ w_self + incoming + b)


def loss(params, x, src, dst, y):
    h = layer(x, src, dst, params["W_self1"], params["W_msg1"], params["b1"])
    h = layer(h, src, dst, params["W_self2"], params["W_msg2"], params["b2"])
    pred = h @ params["W_out"] + params["b_out"]
    return ops.mean(ops.square(pred - y))


def _shapes(features=FEATURES, hidden=HIDDEN):
    return {
        "W_self1": (features, hidden), "W_msg1": (features, hidden), "b1": (hidden,),
        "W_self2": (hidden, hidden), "W_msg2": (hidden, hidden), "b2": (hidden,),
        "W_out": (hidden, 1), "b_out": (1,),
    }


def specs(dtype="float32", nodes=NODES, edges=EDGES, features=FEATURES, hidden=HIDDEN):
    params = {name: Spec(shape, dtype) for name, shape in _shapes(features, hidden).items()}
    return (params, Spec((nodes, features), dtype), Spec((edges,), "int32"), Spec((edges,), "int32"),
            Spec((nodes, 1), dtype))


def init_params(seed, features=FEATURES, hidden=HIDDEN):
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in _shapes(features, hidden).items():
        if len(shape) == 1:
            params[name] = np.zeros(shape, np.float32)
        else:  # messages add up over ~E/N in-edges: scale them down by the mean degree
            scale = np.sqrt(1.0 / shape[0]) * (0.5 if "msg" in name else 1.0)
            params[name] = (rng.standard_normal(shape) * scale).astype(np.float32)
    return params


_TARGET_U = np.array([1.0, -0.5, 0.5, 0.25])


def target(x, src, dst):
    """y = A tanh(A x u) in numpy, with (A v)_i = sum of v[src[e]] over edges e into i."""
    def propagate(v):
        out = np.zeros_like(v)
        np.add.at(out, dst, v[src])
        return out

    u = np.resize(_TARGET_U, x.shape[1])
    y = propagate(np.tanh(propagate(x @ u)))
    return y[:, None]


def make_batch(seed, nodes=NODES, edges=EDGES, features=FEATURES):
    rng = np.random.default_rng(seed + 1000)
    x = rng.standard_normal((nodes, features))
    src = rng.integers(0, nodes, edges)
    dst = (src + rng.integers(1, nodes, edges)) % nodes  # no self-loops
    # Standardize with the scale of the target over many graphs, so the loss starts near 1.
    y = target(x, src, dst) / 1.6
    return x.astype(np.float32), src.astype(np.int32), dst.astype(np.int32), y.astype(np.float32)


def train_batch(step, seed=0):
    """A new random graph every step: the network must learn the rule, not one graph."""
    return make_batch(1_000_000 * seed + 10_000 + step)


if __name__ == "__main__":
    import sys

    from training import main

    main(sys.modules[__name__], steps=400, lr=3e-3, optimizer="adam")
