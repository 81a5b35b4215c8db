"""The Keras BERT encoder: shapes, masking, configs, hooks, tracing."""

from typing import NamedTuple

import numpy as np
import pytest
import tensorflow as tf

from adapter_bert.bert.config import BertConfig
from adapter_bert.bert.encoder import (HOOK_POINTS, BertEmbeddings, BertEncoder, BertLayer,
                                       BertPooler, BertSelfAttention, HookedDense)
from adapter_bert.bert.hooks import Composer, OutputComposer
from adapter_bert.testing import random_inputs, tiny_bert_config, tiny_encoder


def test_output_shapes_and_defaults():
    encoder = tiny_encoder()
    inputs = random_inputs(batch=3, seq=9)
    out = encoder(inputs)
    assert tuple(out["sequence_output"].shape) == (3, 9, 32)
    assert tuple(out["pooled_output"].shape) == (3, 32)
    # attention_mask defaults to all ones and token_type_ids to zeros.
    explicit = encoder({"input_ids": inputs["input_ids"],
                        "attention_mask": np.ones_like(inputs["input_ids"]),
                        "token_type_ids": np.zeros_like(inputs["input_ids"])})
    implicit = encoder({"input_ids": inputs["input_ids"]})
    np.testing.assert_array_equal(explicit["sequence_output"], implicit["sequence_output"])
    # keras-hub's name for the mask is accepted too.
    alias = encoder({"input_ids": inputs["input_ids"], "padding_mask": inputs["attention_mask"],
                     "token_type_ids": inputs["token_type_ids"]})
    np.testing.assert_array_equal(alias["sequence_output"], encoder(inputs)["sequence_output"])


def test_padding_does_not_change_real_tokens():
    encoder = tiny_encoder()
    inputs = random_inputs(batch=3, seq=8)
    padded = {k: np.pad(v, ((0, 0), (0, 5))) for k, v in inputs.items()}
    short = encoder(inputs)["sequence_output"].numpy()
    long = encoder(padded)["sequence_output"].numpy()
    mask = inputs["attention_mask"].astype(bool)
    np.testing.assert_allclose(long[:, :8][mask], short[mask], atol=1e-5)
    np.testing.assert_allclose(encoder(padded)["pooled_output"], encoder(inputs)["pooled_output"],
                               atol=1e-5)


def test_token_types_and_positions_matter():
    encoder = tiny_encoder()
    inputs = random_inputs(batch=2, seq=8)
    base = encoder(inputs)["sequence_output"].numpy()
    flipped = dict(inputs, token_type_ids=1 - inputs["token_type_ids"])
    assert np.abs(encoder(flipped)["sequence_output"].numpy() - base).max() > 1e-3


def test_gelu_is_exact_erf():
    from scipy.special import erf
    import keras

    x = np.linspace(-4, 4, 101).astype("float32")
    exact = 0.5 * x * (1 + erf(x / np.sqrt(2)))
    np.testing.assert_allclose(keras.activations.gelu(x, approximate=False), exact, atol=1e-6)


def test_dropout_only_in_training():
    encoder = tiny_encoder(dropout=0.3)
    inputs = random_inputs()
    a = encoder(inputs, training=False)["sequence_output"].numpy()
    b = encoder(inputs, training=False)["sequence_output"].numpy()
    c = encoder(inputs, training=True)["sequence_output"].numpy()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


@pytest.mark.parametrize("layer", [
    BertEmbeddings(100, 16, 32, 2, name="emb"),
    BertSelfAttention(16, 4, name="att"),
    BertLayer(16, 4, 32, name="lay"),
    BertPooler(16, name="pool"),
    HookedDense(5, name="dense"),
], ids=lambda layer: type(layer).__name__)
def test_every_layer_round_trips_its_config(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config


def test_encoder_config_round_trip_and_param_count():
    encoder = tiny_encoder()
    clone = BertEncoder.from_config(encoder.get_config())
    assert clone.bert_config == encoder.bert_config
    assert clone.count_params() == encoder.count_params()


def test_bert_base_parameter_count():
    # bert-base-uncased's BertModel has 109,482,240 parameters (embeddings, 12 layers, pooler).
    encoder = BertEncoder.from_bert_config(BertConfig())
    assert encoder.count_params() == 109_482_240


def test_hook_points_name_the_sublayers():
    encoder = tiny_encoder()
    layer = encoder.layers[0]
    assert set(HOOK_POINTS) == {"attention.query", "attention.key", "attention.value",
                                "attention.output", "intermediate", "output", "attention_ln",
                                "output_ln"}
    for name in HOOK_POINTS:
        assert layer.sublayer(name).name == name.split(".")[-1]
    with pytest.raises(KeyError, match="unknown hook point 'ffn'"):
        layer.sublayer("ffn")


class _Half:
    composer = OutputComposer

    def __call__(self, x, y, training=None):
        return 0.5 * y


class _RecordState(NamedTuple):
    h: object
    x: object
    last: object = None


class _Recorder(Composer):
    """A residual family that records what it sees and computes BERT's own residual."""

    kinds = ("residual",)
    row_aligned = ("h", "x")
    calls = []

    def start(self, point_state):
        h, x, self.layer_norm = point_state
        return _RecordState(h, x)

    def single(self, name, hook, state):
        self.calls.append(tuple(state.h.shape))
        return state._replace(last=name)

    def finish(self, state):
        return (self.layer_norm(state.h + state.x),)


class _Residual:
    composer = _Recorder


def test_hooks_run_only_under_a_setup_naming_them_and_add_no_weights():
    encoder = tiny_encoder()
    inputs = random_inputs()
    base = encoder(inputs)["sequence_output"].numpy()
    n_weights = len(encoder.weights)
    layer = encoder.layers[1]
    layer.add_hook("attention.value", "half", _Half())
    assert layer.hooks("attention.value") == ("half",)
    np.testing.assert_array_equal(encoder(inputs)["sequence_output"], base)  # registered only
    encoder.set_active_setup("half")
    changed = encoder(inputs)["sequence_output"].numpy()
    assert np.abs(changed - base).max() > 1e-3
    encoder.set_active_setup("half", skip_layers=[1])  # AdapterDrop: layer 1's hooks stay off
    np.testing.assert_array_equal(encoder(inputs)["sequence_output"], base)
    encoder.set_active_setup("other")
    np.testing.assert_array_equal(encoder(inputs)["sequence_output"], base)
    assert len(encoder.weights) == n_weights  # hooks never add weights to the base

    with pytest.raises(ValueError, match="adapter 'half' has a hook at layer_1.attention.value already"):
        layer.add_hook("attention.value", "half", _Half())
    with pytest.raises(TypeError, match="act at dense, norm points, not at layer_1.output_residual"):
        layer.add_hook("output_residual", "half", _Half())
    with pytest.raises(TypeError, match="needs a `composer`"):
        layer.add_hook("attention.value", "plain", lambda x, y, training=None: y)
    with pytest.raises(KeyError, match="unknown hook point 'ffn' of layer_1; known: attention.query"):
        layer.add_hook("ffn", "half", _Half())
    with pytest.raises(ValueError, match="skip_layers must hold layer indices 0..1, got 5"):
        encoder.set_active_setup("half", skip_layers=[5])
    layer.remove_hook("attention.value", "half")
    with pytest.raises(KeyError, match="adapter 'half' has no hook at layer_1.attention.value"):
        layer.remove_hook("attention.value", "half")
    assert encoder.hook_point("layer_1.attention.value").adapters() == ()
    assert {"embeddings.layer_norm", "pooler.dense", "layer_0.attention.attention",
            "layer_0.output_residual"} <= set(encoder.hook_points())


def test_residual_hooks_see_real_tokens_or_padded_rows():
    encoder = tiny_encoder()
    inputs = random_inputs()
    base = encoder(inputs)["sequence_output"].numpy()
    encoder.layers[0].add_hook("output_residual", "r", _Residual())
    encoder.set_active_setup("r")
    _Recorder.calls.clear()
    np.testing.assert_allclose(encoder(inputs)["sequence_output"], base, atol=1e-6)
    # Per-token hooks see the real tokens only ([n_tokens, hidden]); padded rows when not skipped.
    encoder.skip_padding = False
    encoder(inputs)
    assert _Recorder.calls == [(int(inputs["attention_mask"].sum()), 32), (3, 10, 32)]


def test_sequence_longer_than_positions_is_an_error():
    encoder = tiny_encoder(max_position_embeddings=16)
    with pytest.raises(ValueError, match="sequence length 20 is above the model's "
                                         r"max_position_embeddings \(16\)"):
        encoder(random_inputs(seq=20))


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="not a multiple of num_attention_heads"):
        tiny_bert_config(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="num_hidden_layers must be a positive integer"):
        tiny_bert_config(num_hidden_layers=0)
    with pytest.raises(ValueError, match="hidden_act 'relu' is not supported"):
        tiny_bert_config(hidden_act="relu")


@pytest.mark.slow
def test_bert_base_forward_32x128_traces_once():
    encoder = BertEncoder.from_bert_config(BertConfig())
    spec = tf.TensorSpec([None, None], tf.int32)

    @tf.function(input_signature=[{"input_ids": spec, "attention_mask": spec,
                                   "token_type_ids": spec}])
    def forward(inputs):
        return encoder(inputs, training=False)

    rng = np.random.default_rng(0)
    for seq in (128, 128, 64):
        inputs = {"input_ids": rng.integers(1000, 30000, (32, seq)).astype("int32"),
                  "attention_mask": np.ones((32, seq), "int32"),
                  "token_type_ids": np.zeros((32, seq), "int32")}
        out = forward(inputs)
        assert tuple(out["sequence_output"].shape) == (32, seq, 768)
        assert np.isfinite(out["pooled_output"].numpy()).all()
    assert forward.experimental_get_tracing_count() == 1
