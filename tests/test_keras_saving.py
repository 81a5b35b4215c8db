"""Whole models the Keras way (`model.save("m.keras")`, `keras.models.load_model`), and every
layer's `get_config()` / `from_config()`."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from adapter_bert import AdapterBertModel
from adapter_bert.composition import Fuse, Stack
from adapter_bert.testing import random_inputs, tiny_bert_config

# One adapter of every method family (non-trivial initial weights where the method allows it).
CONFIGS = ["seq_bn[init_weights='bert']", "double_seq_bn[ln_before=True, ln_after=True, use_gating=True]",
           "par_bn", "lora[init_weights='bert']",
           "ia3[init_weights='bert', target_modules=['output'], feedforward_modules=['output']]",
           "prefix_tuning", "prefix_tuning_flat[shift_positions=True]", "mam", "unipelt",
           "compacter[reduction_factor=8]", "seq_bn_inv", "double_seq_bn_inv", "prompt_tuning",
           "prompt_tuning[input_embeddings=True, prompt_length=2]", "dora", "vera", "loreft",
           "direft", "bitfit", "seq_bn[task_layer_norm=True]", "lora|bitfit[targets=['pooler']]"]


def _full_model():
    model = AdapterBertModel.from_config(tiny_bert_config())
    for index, config in enumerate(CONFIGS):
        model.add_adapter(f"a{index}", config=config)
    model.add_adapter_fusion(Fuse("a0", "a2"))
    model.add_classification_head("h", num_labels=3, layers=2, pooling="cls_token")
    model.add_regression_head("r")
    model.add_masked_lm_head("mlm")
    return model


def _randomise(model, seed=0):
    """Every weight non-zero and different from a fresh model's, so a load that drops one shows."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(0.05 * rng.standard_normal(variable.shape).astype(variable.dtype)
                        + (1.0 if "gamma" in variable.path or "scale" in variable.path else 0.0))


# A fusion inside a stack with AdapterDrop; prompts among the word embeddings after a shifted
# prefix; the masked-LM head of an invertible adapter.
SETUPS = [(Stack("a3", Fuse("a0", "a2")), [0], "h"), (Stack("a13", "a6"), None, "r"),
          ("a10", None, "mlm")]


@pytest.mark.parametrize("setup,skip,head", SETUPS, ids=[str(s[0]) for s in SETUPS])
def test_keras_file_round_trips_adapters_heads_and_setup(setup, skip, head, tmp_path):
    model = _full_model()
    _randomise(model)
    model.set_active_adapters(setup, skip_layers=skip)
    model.active_head = head
    inputs = random_inputs(batch=3, seq=9)
    expected = model(inputs).numpy()
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, AdapterBertModel)
    assert str(loaded.active_adapters) == str(model.active_adapters)
    assert loaded.bert.skip_layers == model.bert.skip_layers and loaded.active_head == head
    assert sorted(loaded.adapters) == sorted(model.adapters) and sorted(loaded.heads) == sorted(model.heads)
    assert list(loaded.fusions) == list(model.fusions)
    np.testing.assert_allclose(loaded(inputs).numpy(), expected, atol=1e-6, rtol=0)
    for name, module in model.adapters.items():
        theirs = loaded.adapters[name].named_variables()
        for key, variable in module.named_variables().items():
            np.testing.assert_array_equal(theirs[key].numpy(), variable.numpy(), err_msg=f"{name}.{key}")


def test_keras_file_loads_in_a_fresh_process(tmp_path):
    model = AdapterBertModel.from_config(tiny_bert_config())
    model.add_adapter("a", config="lora[init_weights='bert']", set_active=True)
    model.add_classification_head("a", num_labels=2)
    _randomise(model, seed=3)
    inputs = random_inputs(batch=2, seq=7)
    np.savez(tmp_path / "inputs.npz", **inputs)
    np.save(tmp_path / "expected.npy", model(inputs).numpy())
    model.save(tmp_path / "m.keras")
    script = (
        "import numpy as np, keras, adapter_bert\n"
        f"inputs = dict(np.load({str(tmp_path / 'inputs.npz')!r}))\n"
        f"model = keras.models.load_model({str(tmp_path / 'm.keras')!r})\n"
        f"expected = np.load({str(tmp_path / 'expected.npy')!r})\n"
        "print(float(np.abs(model(inputs).numpy() - expected).max()))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) <= 1e-6


def test_a_merged_adapter_is_reset_before_saving(tmp_path):
    model = AdapterBertModel.from_config(tiny_bert_config())
    model.add_adapter("a", config="lora", set_active=True)
    model.merge_adapter("a")
    with pytest.raises(ValueError, match="merged into the base; reset_adapter before saving"):
        model.save(tmp_path / "m.keras")
    assert not (tmp_path / "m.keras").exists()


@pytest.mark.slow
def test_keras_file_round_trips_the_packaged_minilm(tmp_path):
    model = AdapterBertModel.from_pretrained("all-minilm-l6-v2")
    model.add_adapter("a", config="seq_bn[init_weights='bert']", set_active=True)
    model.add_classification_head("a", num_labels=2)
    inputs = random_inputs(batch=2, seq=12, vocab_size=30000)
    expected = model(inputs).numpy()
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded(inputs).numpy(), expected, atol=1e-6, rtol=0)


def _layers():
    seen = {}
    for layer in _full_model()._flatten_layers(include_self=False):
        seen.setdefault(type(layer), layer)
    return seen


LAYERS = _layers()


@pytest.mark.parametrize("layer_class", list(LAYERS), ids=[c.__name__ for c in LAYERS])
def test_every_layer_round_trips_its_config(layer_class):
    layer = LAYERS[layer_class]
    config = layer.get_config()
    clone = layer_class.from_config(config)
    assert clone.get_config() == config
    if clone.built:  # layers their parent builds lazily are checked through the parent
        assert sorted(tuple(w.shape) for w in clone.weights) == \
            sorted(tuple(w.shape) for w in layer.weights)
