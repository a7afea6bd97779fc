"""A multilayer perceptron classifier: two hidden layers with Swish activations whose
slope beta is learned (one scalar per layer), softmax cross-entropy on integer labels.

    swish(x; beta) = x * sigmoid(beta * x)
    loss = mean over the batch of -log softmax(logits)[label]

The task: x is a standard normal vector in R^32 and its label is the one of ten fixed
directions w_k it lies most along, up to sign: label = argmax_k |x . w_k|. The label of
-x is the label of x, so no linear classifier beats chance; the hidden layers have to
build |.|-like features (swish(z) + swish(-z) is one). Every step draws a fresh batch.

The default sizes are small so the example runs fast; the benchmark size is
784 -> 256 -> 256 -> 10 with batch 64 (`specs(BENCHMARK_SIZES)`).

    pullback dump examples/mlp.py
    pullback compile examples/mlp.py -o mlp.pbk && pullback run mlp.pbk
    python examples/mlp.py [--steps 800]
"""
import numpy as np

from compiler import Spec, ops

SIZES = (32, 64, 64, 10)  # input, hidden, hidden, classes
BENCHMARK_SIZES = (784, 256, 256, 10)
BATCH = 64
TASK_SEED = 1234  # the ten directions: one task for every training seed


def swish(x, beta):
    return x * ops.sigmoid(beta * x)


def loss(params, x, labels):
    h = swish(x @ params["W1"] + params["b1"], params["beta1"])
    h = swish(h @ params["W2"] + params["b2"], params["beta2"])
    logits = h @ params["W3"] + params["b3"]
    batch, classes = logits.shape
    # One-hot rows from integer labels: compare each label with 0..classes-1.
    one_hot = ops.cast(labels.reshape(batch, 1) == np.arange(classes, dtype=np.int32), logits.dtype)
    log_probs = ops.log_softmax(logits, axis=1)
    return -ops.sum(one_hot * log_probs) / batch


def specs(sizes=SIZES, batch=BATCH, dtype="float32"):
    n_in, h1, h2, n_out = sizes
    params = {
        "W1": Spec((n_in, h1), dtype), "b1": Spec((h1,), dtype), "beta1": Spec((), dtype),
        "W2": Spec((h1, h2), dtype), "b2": Spec((h2,), dtype), "beta2": Spec((), dtype),
        "W3": Spec((h2, n_out), dtype), "b3": Spec((n_out,), dtype),
    }
    return params, Spec((batch, n_in), dtype), Spec((batch,), "int32")


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


def directions(n_in, classes):
    """The task's fixed unit directions, one column per class."""
    w = np.random.default_rng(TASK_SEED).standard_normal((n_in, classes))
    return w / np.linalg.norm(w, axis=0)


def make_batch(seed, sizes=SIZES, batch=BATCH):
    rng = np.random.default_rng(seed + 1000)
    x = rng.standard_normal((batch, sizes[0]))
    labels = np.argmax(np.abs(x @ directions(sizes[0], sizes[-1])), axis=1)
    return x.astype(np.float32), labels.astype(np.int32)


def train_batch(step, seed=0):
    """A fresh batch every training step (the task has unlimited data)."""
    return make_batch(1_000_000 * seed + 10_000 + step)


if __name__ == "__main__":
    import sys

    from training import main

    main(sys.modules[__name__], steps=800, lr=3e-3, optimizer="adam")
