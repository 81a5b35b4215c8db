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


@tf.custom_gradient
def _gelu(x):
    cdf = 0.5 * tf.math.erfc(x * -_INV_SQRT2)

    def grad(dy):
        with tf.name_scope("gelu_grad"):  # the tape runs this outside the forward's scopes
            pdf = _INV_SQRT_2PI * tf.exp(-0.5 * tf.square(x))
            return dy * (cdf + x * pdf)

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

        def grad(dy):
            # d/dx of standardisation: remove dy's mean and its projection on the output.
            with tf.name_scope("layer_norm_grad"):
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
