"""A multilayer perceptron classifier: two hidden layers with Swish activations whose
slope beta is learned (one scalar per layer), softmax cross-entropy on integer labels.

    swish(x; beta) = x * sigmoid(beta * x)
    loss = mean over the batch of -log softmax(logits)[label]

The default sizes are small so the example runs fast; the benchmark size is
784 -> 256 -> 256 -> 10 with batch 64 (`specs(BENCHMARK_SIZES)`).

    pullback dump examples/mlp.py
    pullback compile examples/mlp.py -o mlp.pbk && pullback run mlp.pbk
    python examples/mlp.py
"""
import numpy as np

from compiler import Spec, ops

SIZES = (32, 64, 64, 10)  # input, hidden, hidden, classes
BENCHMARK_SIZES = (784, 256, 256, 10)
BATCH = 64


def swish(x, beta):
    return x * ops.sigmoid(beta * x)


def loss(params, x, labels):
    h = swish(x @ params["W1"] + params["b1"], params["beta1"])
    h = swish(h @ params["W2"] + params["b2"], params["beta2"])
    logits = h @ params["W3"] + params["b3"]
    batch, classes = logits.shape
    # One-hot rows from integer labels: compare each label with 0..classes-1.
    one_hot = ops.cast(labels.reshape(batch, 1) == np.arange(classes, dtype=np.int32), "float32")
    log_probs = ops.log_softmax(logits, axis=1)
    return -ops.sum(one_hot * log_probs) / batch


def specs(sizes=SIZES, batch=BATCH):
    n_in, h1, h2, n_out = sizes
    params = {
        "W1": Spec((n_in, h1)), "b1": Spec((h1,)), "beta1": Spec(()),
        "W2": Spec((h1, h2)), "b2": Spec((h2,)), "beta2": Spec(()),
        "W3": Spec((h2, n_out)), "b3": Spec((n_out,)),
    }
    return params, Spec((batch, n_in)), Spec((batch,), "int32")


def init_params(seed, sizes=SIZES):
    rng = np.random.default_rng(seed)
    n_in, h1, h2, n_out = sizes

    def dense(fan_in, fan_out):  # He-style scale keeps activations O(1)
        return (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    return {
        "W1": dense(n_in, h1), "b1": np.zeros(h1, np.float32), "beta1": np.float32(1.0),
        "W2": dense(h1, h2), "b2": np.zeros(h2, np.float32), "beta2": np.float32(1.0),
        "W3": dense(h2, n_out), "b3": np.zeros(n_out, np.float32),
    }


def make_batch(seed, sizes=SIZES, batch=BATCH):
    rng = np.random.default_rng(seed + 1000)
    x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    labels = rng.integers(0, sizes[-1], batch).astype(np.int32)
    return x, labels


if __name__ == "__main__":
    from compiler.models import script_main

    script_main(__file__)
