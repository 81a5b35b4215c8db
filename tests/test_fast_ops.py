"""The hand-written gradients of `adapter_bert.bert.fast_ops` and `TokenIndex` equal autodiff's."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from adapter_bert.bert.encoder import TokenIndex
from adapter_bert.bert.fast_ops import LayerNorm, attend, gelu, layer_norm


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


def test_gelu_gradient_in_bfloat16_equals_autodiff_of_the_keras_gelu():
    x = tf.constant(np.linspace(-6, 6, 97).reshape(1, -1), tf.bfloat16)
    _, (dx,) = value_and_grads(gelu, x)
    _, (dx_ref,) = value_and_grads(lambda t: keras.activations.gelu(t, approximate=False), x)
    np.testing.assert_allclose(dx, dx_ref, atol=2e-2, rtol=2e-2)
    assert np.abs(dx).max() > 0.5


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


def reference_attention(query, key, value, mask_bias, rate, seed=None, recompute=False):
    """The encoder's plain path: scores, float32 softmax, cast, Keras' dropout, matmul."""
    scores = tf.matmul(query, tf.transpose(key, (0, 1, 3, 2)))
    scores = scores * tf.cast(1.0 / query.shape[-1] ** 0.5, scores.dtype)
    scores = scores + tf.cast(mask_bias, scores.dtype)
    probs = tf.cast(tf.nn.softmax(tf.cast(scores, tf.float32), -1), value.dtype)
    if rate:  # what keras.layers.Dropout runs, with its seed generator
        probs = keras.random.dropout(probs, rate, seed=seed)
    return tf.matmul(probs, value)


def attention_value_and_grads(fn, *tensors):
    tensors = [tf.convert_to_tensor(t) for t in tensors]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        y = fn(*tensors)
        weights = np.random.default_rng(7).normal(size=y.shape).astype("float32")
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * weights)
    grads = tape.gradient(loss, tensors)
    return [t.numpy().astype("float32") for t in (y, *grads)]


@pytest.mark.parametrize("dtype,rate,recompute,tol", [
    ("float32", 0.1, False, 1e-5), ("float32", 0.1, True, 1e-5), ("float32", 0.0, False, 1e-5),
    ("float32", 0.5, True, 1e-5), ("bfloat16", 0.1, False, 3e-2), ("bfloat16", 0.1, True, 3e-2),
    ("float16", 0.1, False, 5e-3)])
def test_attend_equals_softmax_dropout_matmul_with_gradients(dtype, rate, recompute, tol):
    # [batch 2, heads 3, 6 queries, 8 keys (more keys than queries, as under prefix tuning),
    # head size 4]; the second example's last three keys are padding (the encoder's -10000 bias),
    # so their probabilities, and the gradients of those keys and values, are exactly zero.
    rng = np.random.default_rng(5)
    query, key, value = (rng.normal(0, 1.5, (2, 3, n, 4)).astype("float32") for n in (6, 8, 8))
    mask_bias = np.zeros((2, 1, 1, 8), "float32")
    mask_bias[1, ..., 5:] = -10000.0
    query, key, value = (tf.cast(t, dtype) for t in (query, key, value))

    def ours(q, k, v):
        return attend(q, k, v, mask_bias, rate, seed=keras.random.SeedGenerator(11),
                      recompute=recompute)

    def reference(q, k, v):
        return reference_attention(q, k, v, mask_bias, rate, keras.random.SeedGenerator(11))

    got = attention_value_and_grads(ours, query, key, value)
    want = attention_value_and_grads(reference, query, key, value)
    for name, a, b in zip(("context", "d query", "d key", "d value"), got, want):
        np.testing.assert_allclose(a, b, atol=tol, rtol=tol, err_msg=name)
    for padded in got[2:]:  # d key, d value at the padded keys
        assert not padded[1, :, 5:].any()
    assert np.abs(got[1]).max() > 1e-2  # real gradients reach the queries
    if rate:  # some weights were dropped, the same in both (else the contexts would differ)
        ones = tf.ones_like(value)
        assert float(tf.reduce_min(tf.cast(attend(query, key, ones, mask_bias, rate,
                                                  keras.random.SeedGenerator(11)), tf.float32))) < 0.99


def test_attend_with_everything_dropped_is_zero_as_keras_dropout():
    q = k = v = tf.ones((1, 2, 3, 4))
    np.testing.assert_array_equal(attend(q, k, v, tf.zeros((1, 1, 1, 3)), 1.0), np.zeros((1, 2, 3, 4)))


def test_attend_in_a_traced_step_equals_the_plain_encoder_path(monkeypatch):
    """Through a whole tiny BERT in a tf.function with padding rows: outputs and input-gradients
    equal those of the encoder with Keras' softmax, Dropout and matmul."""
    from adapter_bert.bert import encoder as encoder_module
    from adapter_bert.testing import random_inputs, tiny_encoder

    inputs = random_inputs(batch=4, seq=12)

    def run(recompute=False):
        encoder = tiny_encoder(dropout=0.1)
        encoder.recompute_attention = recompute
        keras.utils.set_random_seed(3)
        embeddings = encoder.embeddings.word_embeddings.embeddings

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                tape.watch(embeddings.value)
                out = encoder(inputs, training=True)["sequence_output"]
                loss = tf.reduce_sum(out * tf.cos(tf.range(out.shape[-1], dtype=tf.float32)))
            return out, tape.gradient(loss, embeddings.value)

        out, grad = step()
        return out.numpy(), tf.convert_to_tensor(grad).numpy()

    ours = run()
    recomputed = run(recompute=True)
    monkeypatch.setattr(encoder_module, "attend", reference_attention)
    reference = run()
    np.testing.assert_allclose(recomputed[0], reference[0], atol=1e-5)
    np.testing.assert_allclose(recomputed[1], reference[1], atol=1e-5)
    np.testing.assert_allclose(ours[0], reference[0], atol=1e-5)
    np.testing.assert_allclose(ours[1], reference[1], atol=1e-5)
    assert np.abs(ours[1]).max() > 1e-3  # a real gradient, not zeros on both sides


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


@pytest.mark.parametrize("recompute", [False, True])
def test_attention_backward_waits_for_the_gradient_and_recomputes_only_when_asked(recompute):
    """The backward pass forms the dropped (and, with recompute_attention, all) probabilities
    again only after the incoming gradient exists: an op without that edge would run during the
    forward pass and hold its [batch, heads, seq, seq] result until the backward pass."""
    from adapter_bert.testing import random_inputs, tiny_encoder

    encoder = tiny_encoder(dropout=0.1)
    encoder.recompute_attention = recompute
    assert encoder.recompute_attention is recompute
    assert all(layer.attention.recompute_probabilities is recompute for layer in encoder.layers)
    inputs = random_inputs(batch=2, seq=8)
    embeddings = encoder.embeddings.word_embeddings.embeddings

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(embeddings.value)
            loss = tf.reduce_sum(encoder(inputs, training=True)["sequence_output"])
        return tape.gradient(loss, embeddings.value)

    graph = step.get_concrete_function().graph
    backward = [op for op in graph.get_operations() if "attend_grad" in op.name]
    softmaxes = [op for op in backward if op.type == "Softmax"]
    assert len(softmaxes) == (len(encoder.layers) if recompute else 0)
    # Every op of the backward pass that reads only forward tensors hangs on the gradient.

    def from_backward(tensor):
        return "attend_grad" in tensor.op.name or tensor.op.name.startswith("gradient_tape")

    roots = [op for op in backward if op.type != "Const" and op.inputs
             and not any(from_backward(t) for t in op.inputs)]
    assert roots
    for op in roots:
        assert any(c.name.startswith("gradient_tape") for c in op.control_inputs), op.name
