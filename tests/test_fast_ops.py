"""The hand-written gradients of `adapter_bert.bert.fast_ops` and `TokenIndex` equal autodiff's."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from adapter_bert.bert.encoder import TokenIndex
from adapter_bert.bert.fast_ops import LayerNorm, gelu, layer_norm


def value_and_grads(fn, x, params=()):
    """fn(x, *params), and the gradients of a fixed random projection of it."""
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
        weights = np.random.default_rng(7).normal(size=y.shape).astype("float32")
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * weights)
    grads = tape.gradient(loss, [x, *params])
    return y.numpy().astype("float32"), [tf.convert_to_tensor(g).numpy().astype("float32")
                                         for g in grads]


def test_gelu_matches_keras_exact_gelu_and_its_gradient():
    # Wide range: both erfc tails, where a careless derivative loses precision.
    x = np.concatenate([np.linspace(-12, 12, 481), np.random.default_rng(0).normal(0, 3, 3880)])
    x = x.astype("float32").reshape(-1, 89)
    y, (dx,) = value_and_grads(gelu, x)
    y_ref, (dx_ref,) = value_and_grads(lambda t: keras.activations.gelu(t, approximate=False), x)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-6)


def test_gelu_keeps_a_half_precision_dtype():
    x = tf.constant([[-1.5, 0.25, 3.0]], tf.bfloat16)
    y = gelu(x)
    assert y.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(y, tf.float32), keras.activations.gelu(
        tf.constant([[-1.5, 0.25, 3.0]]), approximate=False), atol=2e-2)


@pytest.mark.parametrize("offset", [0.0, 50.0])  # 50: rows far from zero mean
def test_layer_norm_matches_keras_with_gradients_for_input_gamma_and_beta(offset):
    rng = np.random.default_rng(1)
    x = (rng.normal(0, 2, (6, 5, 48)) + offset).astype("float32")
    ours, reference = LayerNorm(epsilon=1e-12), keras.layers.LayerNormalization(epsilon=1e-12)
    for layer in (ours, reference):
        layer.build(x.shape)
        layer.gamma.assign(rng.uniform(0.5, 1.5, 48).astype("float32"))
        layer.beta.assign(rng.normal(0, 1, 48).astype("float32"))
    reference.set_weights(ours.get_weights())
    y, grads = value_and_grads(ours, x, [ours.gamma, ours.beta])
    y_ref, grads_ref = value_and_grads(reference, x, [reference.gamma, reference.beta])
    np.testing.assert_allclose(y, y_ref, atol=2e-5)
    for g, g_ref, tol in zip(grads, grads_ref, (2e-4, 1e-4, 1e-4)):  # dx, dgamma, dbeta
        np.testing.assert_allclose(g, g_ref, atol=tol, rtol=1e-4)


def test_layer_norm_computes_in_float32_for_half_inputs():
    x = np.random.default_rng(2).normal(3, 1, (4, 32)).astype("float32")
    gamma, beta = np.ones(32, "float32"), np.zeros(32, "float32")
    y = layer_norm(tf.constant(x, tf.bfloat16), gamma, beta, 1e-12)
    assert y.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(y, tf.float32), layer_norm(x, gamma, beta, 1e-12),
                               atol=5e-2)


def test_layer_norm_layer_is_a_drop_in_for_keras_weights_and_config():
    layer = LayerNorm(epsilon=1e-7, name="ln")
    layer.build((None, 16))
    assert [w.path.split("/")[-1] for w in layer.weights] == ["gamma", "beta"]
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(clone) is LayerNorm and clone.epsilon == 1e-7


@pytest.mark.parametrize("kwargs", [dict(scale=False), dict(axis=[1, 2]), dict(center=False)])
def test_layer_norm_falls_back_to_keras_outside_its_fast_path(kwargs):
    x = np.random.default_rng(3).normal(size=(3, 4, 8)).astype("float32")
    ours, reference = LayerNorm(**kwargs), keras.layers.LayerNormalization(**kwargs)
    ours.build(x.shape), reference.build(x.shape)
    assert not ours._fast_path(x)
    np.testing.assert_allclose(ours(x), reference(x), atol=1e-6)


@pytest.mark.parametrize("mask", [
    [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]],  # ragged, one single-token row
    [[1, 1], [1, 1]],  # no padding at all
])
def test_token_index_gather_and_scatter_match_gather_nd_and_scatter_nd_with_gradients(mask):
    mask = np.array(mask)
    index = TokenIndex(mask)
    rows = np.argwhere(mask.reshape(-1) > 0)
    x = np.random.default_rng(4).normal(size=mask.shape + (3,)).astype("float32")

    def gather_ref(t):
        return tf.gather_nd(tf.reshape(t, [-1, 3]), rows)

    def scatter_ref(t):
        return tf.reshape(tf.scatter_nd(rows, t, [mask.size, 3]), mask.shape + (3,))

    y, (dx,) = value_and_grads(index.gather, x)
    y_ref, (dx_ref,) = value_and_grads(gather_ref, x)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dx, dx_ref)
    tokens = y_ref
    y, (dt,) = value_and_grads(index.scatter, tokens)
    y_ref, (dt_ref,) = value_and_grads(scatter_ref, tokens)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dt, dt_ref)


def test_other_keras_backends_get_keras_own_layers(monkeypatch):
    """`tf.custom_gradient` and TokenIndex are TensorFlow-only: elsewhere the Keras code runs."""
    from adapter_bert.testing import random_inputs, tiny_encoder

    encoder = tiny_encoder()
    inputs = random_inputs(batch=3, seq=10)
    padding = inputs["attention_mask"] == 0
    assert padding.any()
    skipped = encoder(inputs)["sequence_output"].numpy()
    assert not skipped[padding].any()  # TokenIndex leaves zeros at padding
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    norm = LayerNorm()
    assert not norm._fast_path(np.zeros((2, 4), "float32"))
    from adapter_bert.bert import fast_ops

    def no_custom_gradient(x):
        raise AssertionError("the tf.custom_gradient GELU ran on another backend")

    monkeypatch.setattr(fast_ops, "_gelu", no_custom_gradient)
    x = np.linspace(-3, 3, 12, dtype="float32")
    np.testing.assert_allclose(gelu(x), keras.activations.gelu(x, approximate=False), atol=1e-6)
    dense = encoder(inputs)["sequence_output"].numpy()
    assert dense[padding].any()  # every position computed: no TokenIndex
    np.testing.assert_allclose(dense[~padding], skipped[~padding], atol=1e-5)
