"""AdapterFusion: counts, training only the fusion, the regularisation, files, errors."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from adapter_bert import AdapterBertModel, BertConfig, Fuse, Stack
from adapter_bert.fusion import AdapterFusionConfig
from adapter_bert.testing import random_inputs, tiny_bert_config


def _model(seed=0, **overrides):
    keras.utils.set_random_seed(seed)
    model = AdapterBertModel.from_config(tiny_bert_config(**overrides))
    rng = np.random.default_rng(seed)
    for name, config in (("a", "seq_bn[reduction_factor=4]"), ("b", "seq_bn[reduction_factor=2]")):
        model.add_adapter(name, config=config)
        for v in model.adapters[name].named_variables().values():
            v.assign(v.numpy() + 0.2 * rng.standard_normal(v.shape).astype("float32"))
    return model


@pytest.mark.parametrize("preset, expected", [
    # The adapters library adds this many weights for two seq_bn adapters on bert-base:
    # 12 layers x (query 768^2 + 768, key 768^2 + 768, value 768^2 without bias).
    ("dynamic", 21_252_096),
    ("static", 12 * 2 * (768 * 768 + 768)),
])
def test_fusion_counts_equal_the_adapters_library(preset, expected):
    model = AdapterBertModel.from_config(BertConfig())
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("b", config="seq_bn")
    model.add_adapter_fusion(Fuse("a", "b"), config=preset)
    assert model.fusions["a,b"].num_params() == expected
    row = model.adapter_summary(as_dict=True)[-1]
    assert row["name"] == "a,b" and row["architecture"] == f"fusion ({preset})"
    assert row["params"] == expected


def test_dynamic_fusion_starts_near_the_identity_value_projection():
    model = _model()
    model.add_adapter_fusion(["a", "b"])
    kernel = model.fusions["a,b"].fusions[0].value.kernel.numpy()
    expected = np.full((32, 32), 1e-6, "float32")
    np.fill_diagonal(expected, 1.0)
    np.testing.assert_array_equal(kernel, expected)
    # The regularisation at the start: 0.01 * ||I - V||^2 over both layers.
    loss = float(model.fusions["a,b"].regularization_loss())
    np.testing.assert_allclose(loss, 2 * 0.01 * 32 * 31 * 1e-12, rtol=1e-3)


def test_train_adapter_fusion_changes_only_the_fusion_and_the_head():
    model = _model()
    model.add_classification_head("task", num_labels=2)
    model.add_adapter_fusion(Fuse("a", "b"))
    model.train_adapter_fusion(Fuse("a", "b"))
    assert model.active_adapters == Fuse("a", "b") and model.active_head == "task"
    fusion = model.fusions["a,b"]
    expected = {id(v) for v in fusion.trainable_weights} | {id(v) for v in model.heads["task"].weights}
    assert {id(v) for v in model.trainable_weights} == expected
    frozen = {id(v): v.numpy().copy() for v in model.bert.weights + model.adapters["a"].weights
              + model.adapters["b"].weights}
    before = {id(v): v.numpy().copy() for v in model.trainable_weights}
    optimizer = keras.optimizers.Adam(1e-2)
    weights = model.trainable_weights
    inputs, labels = random_inputs(batch=4), np.array([0, 1, 1, 0])
    for _ in range(5):
        with tf.GradientTape() as tape:
            loss = (model.heads["task"].loss(labels, model(inputs, training=True))
                    + model.fusion_regularization_loss())
        optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights))
    for v in model.bert.weights + model.adapters["a"].weights + model.adapters["b"].weights:
        np.testing.assert_array_equal(v.numpy(), frozen[id(v)], err_msg=v.path)
    for v in model.trainable_weights:
        assert np.abs(v.numpy() - before[id(v)]).max() > 0, v.path
    assert float(model.fusion_regularization_loss()) > 1e-6  # the value projection moved
    model.train_adapter_fusion(Fuse("a", "b"), unfreeze_adapters=True)
    assert model.adapters["a"].trainable and model.adapters["b"].trainable


def test_fusion_mixes_its_members_and_composes_in_a_stack():
    model = _model()
    inputs = random_inputs()
    model.add_adapter_fusion(Fuse("a", "b"), config="static")
    out = {s: model.bert(inputs)["sequence_output"].numpy()
           for s in ("a", "b") if model.set_active_adapters(s) is None}
    model.set_active_adapters(Fuse("a", "b"))
    fused = model.bert(inputs)["sequence_output"].numpy()
    assert np.abs(fused - out["a"]).max() > 1e-4 and np.abs(fused - out["b"]).max() > 1e-4
    model.add_adapter("lang", config="seq_bn[init_weights='houlsby']")
    model.set_active_adapters(Stack("lang", Fuse("a", "b")))
    assert np.abs(model.bert(inputs)["sequence_output"].numpy() - fused).max() > 1e-6


def test_temperature_anneals_in_training_only():
    model = _model()
    model.add_adapter_fusion(Fuse("a", "b"), config=AdapterFusionConfig.load("dynamic", temperature=True),
                             set_active=True)
    layer = model.fusions["a,b"].fusions[0]
    inputs = random_inputs()
    model.bert(inputs, training=False)
    assert float(layer.temperature.numpy()) == 50.0
    for _ in range(3):
        model.bert(inputs, training=True)
    np.testing.assert_allclose(float(layer.temperature.numpy()), 49.85, rtol=1e-6)


def test_save_and_load_a_fusion(tmp_path):
    model = _model(seed=1)
    model.add_classification_head("ab", num_labels=3)
    model.add_adapter_fusion(Fuse("a", "b"))
    rng = np.random.default_rng(3)
    for v in model.fusions["a,b"].named_variables().values():
        v.assign(v.numpy() + 0.1 * rng.standard_normal(v.shape).astype("float32"))
    model.set_active_adapters(Fuse("a", "b"))
    model.active_head = "ab"
    inputs = random_inputs()
    expected = model(inputs).numpy()
    model.save_adapter_fusion(tmp_path / "fusion", "a,b", with_head="ab")
    assert sorted(p.name for p in (tmp_path / "fusion").iterdir()) == [
        "adapter_fusion_config.json", "head.safetensors", "head_config.json",
        "model_adapter_fusion.safetensors"]
    meta = json.loads((tmp_path / "fusion" / "adapter_fusion_config.json").read_text())
    assert meta["adapters"] == ["a", "b"] and meta["config"] == AdapterFusionConfig().to_dict()
    fresh = _model(seed=1)
    assert fresh.load_adapter_fusion(tmp_path / "fusion", set_active=True) == "a,b"
    assert fresh.active_adapters == Fuse("a", "b") and fresh.active_head == "ab"
    np.testing.assert_allclose(fresh(inputs).numpy(), expected, atol=1e-6)
    # Loading needs the fused adapters, and a base of the same size.
    bare = AdapterBertModel.from_config(tiny_bert_config())
    with pytest.raises(ValueError, match="fuses 'a', 'b', which this model does not have"):
        bare.load_adapter_fusion(tmp_path / "fusion")
    wider = _model(hidden_size=48)
    with pytest.raises(ValueError, match=r"was trained for a base of another size: hidden_size=32 "
                                         r"\(this model: 48\)"):
        wider.load_adapter_fusion(tmp_path / "fusion")
    assert wider.fusions == {} and bare.fusions == {}
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="holds no saved fusion"):
        model.save_adapter_fusion(tmp_path / "other", "a,b")


def test_fusion_errors():
    model = _model()
    model.add_adapter("l", config="lora")
    model.add_adapter("h", config="double_seq_bn")
    with pytest.raises(ValueError, match="adapter 'l' has no bottleneck adapter to fuse"):
        model.add_adapter_fusion(Fuse("a", "l"))
    with pytest.raises(ValueError, match="must all have, or all lack, a bottleneck adapter at mh_adapter"):
        model.add_adapter_fusion(Fuse("a", "h"))
    with pytest.raises(ValueError, match="no AdapterFusion named 'a,b'; add it with add_adapter_fusion"):
        model.set_active_adapters(Fuse("a", "b"))
    with pytest.raises(ValueError, match="unknown AdapterFusion config 'fancy'"):
        model.add_adapter_fusion(Fuse("a", "b"), config="fancy")
    model.add_adapter_fusion(Fuse("a", "b"), set_active=True)
    with pytest.raises(ValueError, match="exists already"):
        model.add_adapter_fusion(Fuse("a", "b"))
    with pytest.raises(ValueError, match="adapter 'a' is fused in 'a,b'; delete_adapter_fusion first"):
        model.delete_adapter("a")
    model.delete_adapter_fusion("a,b")
    assert model.active_adapters is None and model.fusions == {}
    with pytest.raises(KeyError, match="no AdapterFusion named 'a,b'"):
        model.delete_adapter_fusion(Fuse("a", "b"))
    model.delete_adapter("a")
