"""The elementwise kernels of a training step, forward and backward, against fused alternatives.

    python bench/elementwise.py [--tokens 1642] [--repeats 40] [--out /tmp/adapter_bert_bench]

Each row is one compiled function that runs a kernel forward, takes its gradient and reads one
number of it; the functions of a group are timed in interleaved rounds, each figure the median
over `--repeats` calls (milliseconds), so the machine's drift lands on every row alike:

- GELU on `[tokens, 1536]` (the FFN's width): `fast_ops.gelu` as training runs it; the same step
  compiled whole by XLA (`jit_compile`, one shape: what a fused kernel could reach); and XLA on
  the GELU alone behind a flat copy padded to one of a bounded set of sizes (`padded_size`), the
  price of using XLA where the token count changes with every batch.
- LayerNorm on `[tokens, 384]` with gamma and beta: `fast_ops.layer_norm`; compiled whole by XLA;
  and TensorFlow's fused batch norm on the tokens as channels (oneDNN's kernel; the trick
  Keras 2 used for LayerNorm).
- Attention at batch 32, 12 heads of 32, 128 and 64 keys, dropout 0.1: `fast_ops.attend` against
  `fast_ops.plain_attention`, the path it replaced in training (Keras ops, Keras' dropout,
  autodiff), in float32 and bf16.

Writes `<out>/elementwise.json`.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import common

FFN_WIDTH, HIDDEN = 1536, 384


def padded_size(n):
    """`n` rounded up to at most 8 sizes per power of two, and to a multiple of 4096."""
    import tensorflow as tf

    n = tf.cast(n, tf.int64)
    octave = tf.cast(tf.floor(tf.math.log(tf.cast(tf.maximum(n, 1), tf.float64)) / math.log(2.0)),
                     tf.int64)
    step = tf.bitwise.left_shift(tf.constant(1, tf.int64), tf.maximum(octave - 3, 12))
    return (n + step - 1) // step * step


def padded_xla_gelu():
    """GELU with its derivative as one XLA kernel behind a padded flat copy (bounded shapes)."""
    import tensorflow as tf

    def both(x):
        cdf = 0.5 * tf.math.erfc(x * -(1 / math.sqrt(2)))
        return x * cdf, cdf + x * (tf.exp(-0.5 * tf.square(x)) / math.sqrt(2 * math.pi))

    kernel = tf.function(both, jit_compile=True, autograph=False)

    @tf.custom_gradient
    def gelu(x):
        shape = tf.shape(x)
        flat = tf.reshape(x, [-1])
        size = tf.size(flat, out_type=tf.int64)
        outputs = kernel(tf.pad(flat, [[0, padded_size(size) - size]]))
        y, derivative = (tf.reshape(out[:size], shape) for out in outputs)
        return y, lambda dy: dy * derivative

    return gelu


def fused_batch_norm_layer_norm(x, gamma, beta, epsilon=1e-12):
    """LayerNorm over the last axis through `fused_batch_norm`, each token a channel."""
    import tensorflow as tf

    width = x.shape[-1]
    channels = tf.reshape(x, [1, -1, width, 1])
    ones = tf.ones(tf.shape(channels)[1:2])
    normalized, _, _ = tf.compat.v1.nn.fused_batch_norm(channels, ones, tf.zeros_like(ones),
                                                        epsilon=epsilon, data_format="NCHW")
    return tf.reshape(normalized, tf.shape(x)) * gamma + beta


def gradient_step(forward, inputs, jit: bool = False):
    """A compiled function: `forward(*inputs)`, the gradient of a weighted sum, one number of it."""
    import tensorflow as tf

    weights = tf.random.stateless_normal(tf.shape(forward(*inputs)), seed=[1, 2])

    def step(*tensors):
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            loss = tf.reduce_sum(tf.cast(forward(*tensors), tf.float32) * weights)
        return tf.add_n([tf.reduce_sum(tf.cast(g, tf.float32)) for g in tape.gradient(loss, tensors)])

    return tf.function(step, jit_compile=jit)


def time_group(functions: dict, inputs, repeats: int) -> dict:
    """Median milliseconds of each function over `repeats` interleaved calls."""
    for function in functions.values():  # trace, compile, and let oneDNN build its kernels
        float(function(*inputs))
        float(function(*inputs))
    samples = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            float(function(*inputs))
            samples[name].append(time.perf_counter() - start)
    return {name: round(1e3 * statistics.median(values), 3) for name, values in samples.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1642, help="rows of the per-token kernels")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.tokens < 1 or args.repeats < 1:
        parser.error("--tokens and --repeats must be positive")

    import keras
    import numpy as np
    import tensorflow as tf

    from adapter_bert.bert import fast_ops

    rng = np.random.default_rng(0)

    def tensor(*shape, dtype="float32"):
        return tf.cast(tf.constant(rng.normal(size=shape).astype("float32")), dtype)

    groups = {}
    x = tensor(args.tokens, FFN_WIDTH)
    groups["gelu"] = time_group({
        "fast_ops": gradient_step(fast_ops.gelu, [x]),
        "xla_whole_step": gradient_step(fast_ops.gelu, [x], jit=True),
        "xla_padded_copy": gradient_step(padded_xla_gelu(), [x])}, [x], args.repeats)
    h, gamma, beta = tensor(args.tokens, HIDDEN), tensor(HIDDEN), tensor(HIDDEN)
    groups["layer_norm"] = time_group({
        "fast_ops": gradient_step(lambda a, g, b: fast_ops.layer_norm(a, g, b, 1e-12), [h, gamma, beta]),
        "xla_whole_step": gradient_step(lambda a, g, b: fast_ops.layer_norm(a, g, b, 1e-12),
                                        [h, gamma, beta], jit=True),
        "fused_batch_norm": gradient_step(fused_batch_norm_layer_norm, [h, gamma, beta])},
        [h, gamma, beta], args.repeats)
    for dtype in ("float32", "bfloat16"):
        for keys in (128, 64):
            q, k, v = (tensor(32, 12, keys, 32, dtype=dtype) for _ in range(3))
            bias = tf.zeros((32, 1, 1, keys), dtype)
            seeds = [keras.random.SeedGenerator(1), keras.random.SeedGenerator(1)]
            groups[f"attention_{dtype}_{keys}"] = time_group({
                "fast_ops.attend": gradient_step(
                    lambda a, b, c: fast_ops.attend(a, b, c, bias, 0.1, seed=seeds[0]), [q, k, v]),
                "plain_autodiff": gradient_step(
                    lambda a, b, c: fast_ops.plain_attention(a, b, c, bias, 0.1, seeds[1]),
                    [q, k, v])},
                [q, k, v], args.repeats)
    for group, figures in groups.items():
        print(f"{group}: " + ", ".join(f"{name} {ms:.2f} ms" for name, ms in figures.items()),
              file=sys.stderr)
    report = {"benchmark": "elementwise", "machine": common.machine(), "tokens": args.tokens,
              "repeats": args.repeats, "command": " ".join([sys.executable] + sys.argv),
              "ms_forward_and_backward": groups}
    common.write_report(args.out, "elementwise", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
