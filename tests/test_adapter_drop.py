"""AdapterDrop (`--adapter_drop N`): a preset's adapters left out of the N lowest layers, whose
outputs stay the base's and which get no backward pass."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from adapter_bert import AdapterBertModel
from adapter_bert.testing import random_inputs, tiny_bert_config
from adapter_bert.training import TrainingArgs, make_train_step, resolve_adapter_config
from test_training import _cli_in_process, assert_refused_in_one_line, write_glue_task

METHODS = {"houlsby": dict(method="houlsby", bottleneck_size=8), "lora": dict(method="lora")}


def _model(method=None, drop=2):
    keras.utils.set_random_seed(0)
    model = AdapterBertModel.from_config(tiny_bert_config(num_hidden_layers=3, dropout=0.0))
    if method is not None:
        config = resolve_adapter_config(TrainingArgs(**METHODS[method], adapter_drop=drop), 32)
        model.add_adapter("t", config=config)
        rng = np.random.default_rng(0)
        for v in model.adapter_modules["t"].named_variables().values():  # away from identity
            v.assign(rng.normal(0, 0.3, tuple(v.shape)).astype("float32"))
        model.set_active_adapters("t")
    return model


def _layer_outputs(model, inputs):
    """Each encoder layer's output, caught on the way (eager)."""
    outputs = []
    for layer in model.bert.layers:
        def spy(*args, _call=layer.call, **kwargs):
            result = _call(*args, **kwargs)
            outputs.append(np.asarray(result))
            return result
        layer.call = spy
    model.bert(inputs)
    return outputs


@pytest.mark.parametrize("method", list(METHODS))
def test_dropped_layers_compute_the_bases_outputs_bit_identically(method):
    inputs = random_inputs(batch=3, seq=10)
    base = _layer_outputs(_model(), inputs)
    model = _model(method, drop=2)
    names = list(model.adapter_modules["t"].named_variables())
    assert names and all("layer_2" in n for n in names), names
    dropped = _layer_outputs(model, inputs)
    for i in (0, 1):
        assert np.array_equal(dropped[i], base[i]), i
    assert not np.allclose(dropped[2], base[2], atol=1e-4)


@pytest.mark.parametrize("method", list(METHODS))
def test_no_backward_work_runs_below_the_lowest_adapter(method):
    """The traced training step holds gradient ops of layer 2 (adapted) and none of layers 0-1."""
    from adapter_bert.objectives import GlueObjective
    from adapter_bert.glue import get_task

    model = _model(method, drop=2)
    model.add_classification_head("t", num_labels=2)
    model.train_adapter("t")
    step = make_train_step(model, keras.optimizers.AdamW(1e-3), model.trainable_weights,
                           GlueObjective(None, get_task("sst2")).loss(global_batch=2))
    spec = tf.TensorSpec([None, None], tf.int32)
    graph = tf.function(step).get_concrete_function(
        {k: spec for k in ("input_ids", "attention_mask", "token_type_ids")},
        tf.TensorSpec([None], tf.int32)).graph
    backward = [op.name for op in graph.get_operations() if op.name.startswith("gradient_tape/")]

    def of(layer):  # name scopes carry Keras' uniquifying suffix: layer_2_1/...
        return [n for n in backward if re.search(rf"/{layer}(_\d+)?/", n)]

    assert of("layer_2")
    for layer in ("layer_0", "layer_1", "embeddings"):
        assert not of(layer), (layer, of(layer)[:3])


def test_preset_config_strings():
    assert (resolve_adapter_config(TrainingArgs(method="lora", adapter_drop=3), 384)
            == "lora[leave_out=[0, 1, 2]]")
    houlsby = resolve_adapter_config(TrainingArgs(bottleneck_size=32, adapter_drop=1), 384)
    assert houlsby.startswith("double_seq_bn[") and houlsby.endswith(", leave_out=[0]]")


@pytest.mark.parametrize("flags, message", [
    (["--adapter_drop", "1", "--adapter_config", "lora"], "set leave_out in the config string"),
    (["--adapter_drop", "1", "--method", "prefix"], "--adapter_drop applies to houlsby"),
    (["--adapter_drop", "0"], "--adapter_drop must be a positive integer"),
    (["--adapter_drop", "2"], "--adapter_drop 2 would leave the adapters out of every layer"),
])
def test_bad_adapter_drop_is_one_line_and_writes_nothing(tmp_path, tiny_checkpoint, flags, message):
    write_glue_task(tmp_path / "glue", "mrpc")
    result = _cli_in_process("--casing", str(tiny_checkpoint), "--data_dir", str(tmp_path / "glue"),
                             "--max_seq_length", "32", "--saved_models_dir", str(tmp_path / "out"),
                             *flags)
    assert_refused_in_one_line(result, message)
    assert not (tmp_path / "out").exists()
