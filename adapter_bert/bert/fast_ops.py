"""LayerNorm and exact GELU with hand-written gradients: fewer passes over memory on CPU.

Without XLA (which would recompile for every token count the encoder sees), TensorFlow runs every
elementwise op of a composite function as its own pass over the tensor, forward and backward. The
TF profiler on a bucketed MRPC training step (`bench/profile_step.py`) put Keras' LayerNorm and
GELU at about a sixth of all op time, where PyTorch runs one fused kernel each way. Writing the
gradients by hand, from the saved normalised input and the saved Gaussian CDF, drops most of the
autodiff passes; the functions are the same to float rounding (`tests/test_fast_ops.py`).

The hand-written gradients use `tf.custom_gradient`, so they run on the TensorFlow backend only;
on any other Keras backend `gelu` and `LayerNorm` are Keras' own, so the layers stay portable
(the model code is `keras.layers` / `keras.ops` only, so that it runs on JAX too).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def tensorflow_backend() -> bool:
    """Whether Keras runs on TensorFlow, where the hand-written gradients apply."""
    return keras.backend.backend() == "tensorflow"


def backward_scope(name: str) -> str:
    """The name scope for a hand-written gradient, beside its forward ops (`layer_3/.../gelu` ->
    `layer_3/.../gelu_grad`): the tape runs gradients outside the forward's scopes, and a
    profile attributes the backward pass to layers by these names (`bench/profile_step.py`).
    Call it in the forward pass; enter `tf.name_scope` of it in the gradient.
    """
    forward = tf.get_current_name_scope()
    return f"{forward}_grad/" if forward else f"{name}_grad"


@tf.custom_gradient
def _gelu(x):
    cdf = 0.5 * tf.math.erfc(x * -_INV_SQRT2)
    scope = backward_scope("gelu")
    # The derivative is formed here, so the backward pass keeps one tensor of the FFN's width
    # (not the input and the CDF); where no gradient is taken, the graph prunes it.
    derivative = cdf + x * (_INV_SQRT_2PI * tf.exp(-0.5 * tf.square(x)))

    def grad(dy):
        with tf.name_scope(scope):
            return dy * derivative

    return x * cdf, grad


def gelu(x):
    """Exact (erf) GELU, `x * Phi(x)`, as BERT uses it, with a fused-by-hand gradient.

    Equals `keras.activations.gelu(x, approximate=False)` to float rounding.

    Example:
    >>> import numpy as np
    >>> [round(float(v), 4) for v in gelu(np.array([-1.0, 0.0, 2.0], "float32"))]
    [-0.1587, 0.0, 1.9545]
    """
    if not tensorflow_backend():
        return keras.activations.gelu(x, approximate=False)
    with tf.name_scope("gelu"):  # names the ops for profiles (bench/profile_step.py)
        return _gelu(tf.convert_to_tensor(x))


def _normalize(x, epsilon: float):
    """`(x - mean) / sqrt(var + epsilon)` over the last axis, with its gradient written out."""

    @tf.custom_gradient
    def normalize(x):
        mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
        inv_std = tf.math.rsqrt(variance + epsilon)
        normalized = (x - mean) * inv_std
        scope = backward_scope("layer_norm")

        def grad(dy):
            # d/dx of standardisation: remove dy's mean and its projection on the output.
            with tf.name_scope(scope):
                return inv_std * (dy - tf.reduce_mean(dy, -1, keepdims=True)
                                  - normalized * tf.reduce_mean(dy * normalized, -1, keepdims=True))

        return normalized, grad

    return normalize(x)


def layer_norm(x, gamma, beta, epsilon: float):
    """LayerNorm over the last axis, computed in float32 (as Keras does) and cast back.

    Example:
    >>> import numpy as np
    >>> y = layer_norm(np.array([[1.0, 2.0, 3.0]], "float32"), np.ones(3, "float32"),
    ...                np.zeros(3, "float32"), 1e-12)
    >>> [round(float(v), 4) for v in y[0]]
    [-1.2247, 0.0, 1.2247]
    """
    with tf.name_scope("layer_norm"):
        x = tf.convert_to_tensor(x)
        dtype = x.dtype
        compute = tf.float32 if dtype in (tf.float16, tf.bfloat16) else dtype
        normalized = _normalize(tf.cast(x, compute), epsilon)
        outputs = normalized * tf.cast(gamma, compute) + tf.cast(beta, compute)
        return tf.cast(outputs, dtype)


@keras.saving.register_keras_serializable(package="adapter_bert")
class LayerNorm(keras.layers.LayerNormalization):
    """`keras.layers.LayerNormalization` over the last axis, with `layer_norm`'s faster gradient.

    Same weights (`gamma`, `beta`), config and outputs as the Keras layer, so checkpoints and
    saved configs are interchangeable. Any other setting (several axes, RMS scaling, no centring
    or scaling) or another Keras backend falls back to the Keras implementation.

    Example:
    >>> import numpy as np
    >>> norm = LayerNorm(epsilon=1e-12)
    >>> x = np.random.default_rng(0).normal(size=(2, 8)).astype("float32")
    >>> reference = keras.layers.LayerNormalization(epsilon=1e-12)
    >>> bool(np.allclose(norm(x), reference(x), atol=1e-5))
    True
    """

    def _fast_path(self, inputs) -> bool:
        axis = self.axis if isinstance(self.axis, (list, tuple)) else [self.axis]
        last = len(inputs.shape) - 1
        return (tensorflow_backend() and self.center and self.scale and not self.rms_scaling
                and [a % (last + 1) for a in axis] == [last])

    def call(self, inputs):
        if not self._fast_path(inputs):
            return super().call(inputs)
        return tf.cast(layer_norm(inputs, self.gamma, self.beta, self.epsilon), self.compute_dtype)


def plain_attention(query, key, value, mask_bias, dropout_rate: float = 0.0, seed=None):
    """`dropout(softmax(query @ key^T / sqrt(head_size) + mask_bias)) @ value` in Keras ops,
    differentiated by autodiff: the encoder's inference path, `attend` on other Keras backends.

    The softmax runs in float32 (stable bf16/fp16 training; a no-op cast in float32) and its
    output is cast to `value`'s dtype; dropout is Keras' with `seed` (a `SeedGenerator`).

    Example:
    >>> import numpy as np
    >>> q = k = np.zeros((1, 1, 2, 4), "float32")
    >>> v = np.array([[[[1.0], [3.0]]]], "float32")
    >>> plain_attention(q, k, v, np.zeros((1, 1, 1, 2), "float32")).numpy().ravel().tolist()
    [2.0, 2.0]
    """
    ops = keras.ops
    scores = ops.matmul(query, ops.transpose(key, (0, 1, 3, 2)))
    scores = scores * ops.cast(1.0 / float(query.shape[-1]) ** 0.5, scores.dtype)
    scores = scores + ops.cast(mask_bias, scores.dtype)
    probs = ops.cast(ops.softmax(ops.cast(scores, "float32"), axis=-1),
                     keras.backend.standardize_dtype(value.dtype))
    if dropout_rate:
        probs = keras.random.dropout(probs, dropout_rate, seed=seed)
    return ops.matmul(probs, value)


def attend(query, key, value, mask_bias, dropout_rate: float = 0.0, seed=None,
           recompute: bool = False):
    """Scaled dot-product attention with dropout, keeping only what its backward pass needs.

    `query`, `key`, `value` are `[batch, heads, seq, head_size]` (keys and values may be longer
    than the queries), `mask_bias` is additive and broadcasts to `[batch, heads, queries, keys]`.
    Computes `dropout(softmax(query @ key^T / sqrt(head_size) + mask_bias)) @ value` with the
    softmax in float32 and its output cast to `value`'s dtype, as `plain_attention` does.
    Dropout draws its keep-mask from `seed` (a Keras `SeedGenerator`) exactly as
    `keras.layers.Dropout` with that generator would, so both paths give the same outputs and
    gradients to float rounding (`tests/test_fast_ops.py`).

    For its backward pass autodiff keeps, per layer, three `[batch, heads, queries, keys]`
    tensors (the probabilities, the keep-mask, the dropped probabilities) and a transposed copy
    of the keys. This keeps the float32 probabilities and a one-byte mask, and forms the dropped
    probabilities again in the backward pass; with `recompute=True` it keeps only the mask and
    recomputes the probabilities from the queries and keys too (one more batched matmul and
    softmax per layer, for about a third less attention memory). The recomputation waits for the
    incoming gradient: without that edge TensorFlow's executor would run it as soon as its
    inputs exist, during the forward pass, and keep every layer's result alive until the
    backward pass reaches it. Under XLA (TPU), which orders ops itself, the recomputation
    may be merged back into the forward pass: the same result, without the saving.

    `mask_bias` gets no gradient: it stands for the padding (and a prefix's zeros), which no
    weight produces.

    Example:
    >>> import numpy as np
    >>> q = k = np.zeros((1, 1, 2, 4), "float32")
    >>> v = np.array([[[[1.0], [3.0]]]], "float32")
    >>> attend(q, k, v, np.zeros((1, 1, 1, 2), "float32")).numpy().ravel().tolist()
    [2.0, 2.0]
    """
    if not tensorflow_backend():
        return plain_attention(query, key, value, mask_bias, dropout_rate, seed)
    scale = 1.0 / float(query.shape[-1]) ** 0.5
    with tf.name_scope("attend"):
        query, key, value = (tf.convert_to_tensor(t) for t in (query, key, value))
        mask_bias = tf.cast(mask_bias, value.dtype)
        if dropout_rate >= 1.0:  # as Keras' dropout: nothing kept
            return tf.zeros(tf.concat([tf.shape(query)[:-1], tf.shape(value)[-1:]], 0), value.dtype)
        keep = None
        if dropout_rate:
            with tf.name_scope("dropout"):  # the profile's category (bench/profile_step.py)
                shape = tf.concat([tf.shape(query)[:-1], tf.shape(key)[-2:-1]], 0)
                noise = keras.random.uniform(shape, dtype=value.dtype, seed=seed)
                keep = noise >= tf.cast(dropout_rate, value.dtype)
        return _attend(query, key, value, mask_bias, keep, dropout_rate, scale, recompute)


def _attend(query, key, value, mask_bias, keep, dropout_rate: float, scale: float,
            recompute: bool):
    dtype = value.dtype
    keep_scale = tf.constant(1.0 / (1.0 - dropout_rate), dtype)

    def probabilities(query, key):
        scores = tf.matmul(query, key, transpose_b=True) * tf.constant(scale, dtype) + mask_bias
        return tf.nn.softmax(tf.cast(scores, tf.float32), axis=-1)

    def dropped(values):  # the dropout of Keras' Dropout: kept values scaled, the rest zero
        if keep is None:
            return values
        with tf.name_scope("dropout"):
            return tf.where(keep, values * keep_scale, tf.zeros([], dtype))

    @tf.custom_gradient
    def core(query, key, value):
        probs = probabilities(query, key)
        context = tf.matmul(dropped(tf.cast(probs, dtype)), value)
        scope = backward_scope("attend")

        def grad(dcontext):
            with tf.name_scope(scope), tf.control_dependencies([dcontext]):
                kept = probabilities(query, key) if recompute else probs
                dvalue = tf.matmul(dropped(tf.cast(kept, dtype)), dcontext, transpose_a=True)
                dprobs = tf.cast(dropped(tf.matmul(dcontext, value, transpose_b=True)), tf.float32)
                dscores = (dprobs - tf.reduce_sum(dprobs * kept, -1, keepdims=True)) * kept
                dscores = tf.cast(dscores, dtype) * tf.constant(scale, dtype)
                return (tf.matmul(dscores, key), tf.matmul(dscores, query, transpose_a=True),
                        dvalue)

        return context, grad

    return core(query, key, value)
