"""A small CNN with a depthwise-separable block: which quadrant holds the bright blob?

Images are 1x12x12: noise plus one Gaussian blob in one of the four quadrants; the
label (0..3) is that quadrant (row-major: top-left, top-right, bottom-left, bottom-right).

    conv 3x3 (1 -> 8, pad 1) + b, ReLU, max-pool 2            8 x 6 x 6
    depthwise 3x3 (groups = 8, pad 1) + b                      8 x 6 x 6
    pointwise 1x1 (8 -> 16) + b, ReLU, max-pool 2             16 x 3 x 3
    dense 144 -> 4, softmax cross-entropy

The depthwise stage filters each channel on its own; the pointwise stage mixes
channels. Backpropagation reaches the depthwise kernel only through the pointwise
one, and max-pool routes each window's gradient to its (first) maximal pixel.

    pullback dump examples/cnn.py --stage backward
    python examples/cnn.py [--steps 300]
"""
import numpy as np

from compiler import Spec, ops

BATCH, SIZE, CHANNELS, CLASSES = 32, 12, (8, 16), 4


def loss(params, images, labels):
    h = ops.relu(ops.conv2d(images, params["conv_w"], params["conv_b"], padding=1))
    h = ops.max_pool2d(h, 2)
    channels = h.shape[1]
    h = ops.conv2d(h, params["dw_w"], params["dw_b"], padding=1, groups=channels)  # depthwise
    h = ops.relu(ops.conv2d(h, params["pw_w"], params["pw_b"]))  # pointwise 1x1
    h = ops.max_pool2d(h, 2)
    batch = h.shape[0]
    logits = ops.reshape(h, (batch, -1)) @ params["fc_w"] + params["fc_b"]
    one_hot = ops.one_hot(labels, logits.shape[1], dtype=logits.dtype)
    return -ops.sum(one_hot * ops.log_softmax(logits, axis=1)) / batch


def _shapes(size=SIZE, channels=CHANNELS, classes=CLASSES):
    c1, c2 = channels
    flat = c2 * (size // 4) ** 2
    return {
        "conv_w": (c1, 1, 3, 3), "conv_b": (c1,),
        "dw_w": (c1, 1, 3, 3), "dw_b": (c1,),
        "pw_w": (c2, c1, 1, 1), "pw_b": (c2,),
        "fc_w": (flat, classes), "fc_b": (classes,),
    }


def specs(dtype="float32", batch=BATCH, size=SIZE, channels=CHANNELS, classes=CLASSES):
    params = {name: Spec(shape, dtype) for name, shape in _shapes(size, channels, classes).items()}
    return params, Spec((batch, 1, size, size), dtype), Spec((batch,), "int32")


def init_params(seed, size=SIZE, channels=CHANNELS, classes=CLASSES):
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in _shapes(size, channels, classes).items():
        if name.endswith("_b"):
            params[name] = np.zeros(shape, np.float32)
            continue
        fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[0]
        params[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return params


def make_batch(seed, batch=BATCH, size=SIZE):
    rng = np.random.default_rng(seed + 1000)
    labels = rng.integers(0, CLASSES, batch)
    half = size // 2
    # The blob centre stays a pixel inside its quadrant so the quadrant is unambiguous.
    rows = rng.uniform(1, half - 1, batch) + half * (labels // 2)
    cols = rng.uniform(1, half - 1, batch) + half * (labels % 2)
    yy, xx = np.mgrid[:size, :size]
    blob = np.exp(-((yy - rows[:, None, None]) ** 2 + (xx - cols[:, None, None]) ** 2) / 2.0)
    images = 0.5 * rng.standard_normal((batch, 1, size, size)) + blob[:, None]
    return images.astype(np.float32), labels.astype(np.int32)


def train_batch(step, seed=0):
    """A fresh batch every training step (the task has unlimited data)."""
    return make_batch(1_000_000 * seed + 10_000 + step)


if __name__ == "__main__":
    import sys

    from training import main

    main(sys.modules[__name__], steps=300, lr=1e-2, optimizer="adam")
