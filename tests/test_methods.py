"""Every adapter method as a table of cases: parameter counts, identity at init, freezing,
no forgetting, merge / reset, eject, save / load."""

import numpy as np
import pytest
import tensorflow as tf

import keras

from adapter_bert import AdapterBertModel, BertConfig, MAMConfig
from adapter_bert.configuration import AdapterConfig
from adapter_bert.model import AdapterModule
from adapter_bert.testing import random_inputs, tiny_bert_config, tiny_encoder

# bert-base-uncased counts of the adapters library's adapter_summary() (adapter weights only: no
# head, no LayerNorm copies); scaled_par_bn adds one learned scalar per adapter.
BERT_BASE_COUNTS = [
    ("seq_bn", 894_528),
    ("double_seq_bn", 1_789_056),
    ("double_seq_bn[reduction_factor=24]", 1_198_848),
    ("par_bn", 7_091_712),
    ("scaled_par_bn", 7_091_712 + 12),
    ("lora", 294_912),
    ("ia3", 55_296),
    ("prefix_tuning", 9_872_384),
    ("prefix_tuning_flat", 552_960),
    ("mam", 22_493_984),
    ("dora", 313_344),
    ("prompt_tuning", 7_680),
    ("compacter", 57_088),
    ("compacter++", 28_576),
    ("unipelt", 11_083_376),
    ("loreft", 36_888),
    ("noreft", 36_888),
    ("direft", 36_888),
    ("vera", 14_169_600),  # the frozen shared pair included, as the library counts it
    ("seq_bn_inv", 1_190_592),
    ("double_seq_bn_inv", 2_085_120),
]


@pytest.mark.parametrize("config, expected", BERT_BASE_COUNTS, ids=[c for c, _ in BERT_BASE_COUNTS])
def test_parameter_counts_equal_the_adapters_library(config, expected):
    module = AdapterModule("a", AdapterConfig.load(config), BertConfig())
    assert module.num_params() == expected


def test_prefix_tuning_count_after_eject_at_bert_base_size():
    model = AdapterBertModel.from_config(BertConfig())
    model.add_adapter("prefix", config="prefix_tuning")
    assert model.adapter_summary(as_dict=True)[0]["params"] == 9_872_384
    model.eject_prefix_tuning("prefix")
    assert model.adapter_summary(as_dict=True)[0]["params"] == 552_960


def test_bitfit_counts_every_bias():
    module = AdapterModule("a", AdapterConfig.load("bitfit"), BertConfig())
    # per layer: q, k, v, attention output (4 x 768) + intermediate 3072 + output 768 + 2 LN betas;
    # plus the pooler bias and the embeddings LayerNorm beta.
    assert module.num_params() == 12 * (4 * 768 + 3072 + 768 + 2 * 768) + 768 + 768


def _model(seed=0, **overrides):
    keras.utils.set_random_seed(seed)
    return AdapterBertModel.from_config(tiny_bert_config(**overrides))


EXACT_IDENTITY = ["seq_bn[init_weights='mam_adapter']", "double_seq_bn[init_weights='mam_adapter']",
                  "par_bn", "scaled_par_bn", "lora", "lora[attn_matrices=['q','k','v'], output_lora=True]",
                  "ia3", "bitfit", "double_seq_bn[init_weights='mam_adapter', task_layer_norm=True]",
                  "vera"]


@pytest.mark.parametrize("config", EXACT_IDENTITY)
def test_exact_identity_at_initialisation(config):
    model = _model()
    inputs = random_inputs()
    base = model.bert(inputs)
    model.add_adapter("a", config=config, set_active=True)
    out = model.bert(inputs)
    for key in base:
        np.testing.assert_array_equal(out[key], base[key])


def test_dora_starts_as_the_base_to_float_rounding():
    model = _model()
    inputs = random_inputs()
    base = model.bert(inputs)["sequence_output"].numpy()
    model.add_adapter("d", config="dora[intermediate_lora=True]", set_active=True)
    # m / ||W0|| is 1 up to rounding of the norm.
    np.testing.assert_allclose(model.bert(inputs)["sequence_output"], base, atol=1e-5)
    m = model.adapters["d"].named_variables()["lora.layer_0_attention_query.m"].numpy()
    np.testing.assert_allclose(m, np.linalg.norm(model.bert.layers[0].attention.query.kernel.numpy(),
                                                  axis=0), rtol=1e-6)


def test_houlsby_init_is_near_identity():
    model = _model()
    inputs = random_inputs()
    base = model.bert(inputs)["sequence_output"].numpy()
    model.add_adapter("a", config="double_seq_bn[init_weights='houlsby']", set_active=True)
    out = model.bert(inputs)["sequence_output"].numpy()
    assert np.abs(out - base).max() > 0  # the adapter does act
    assert np.linalg.norm(out - base) / np.linalg.norm(base) < 1e-2


# Methods whose every weight must move in 20 steps (prefix/LoRA start from zero-grad spots
# that the Adam steps leave quickly). ReFT units sit where the pooled [CLS] output can see them:
# a suffix unit after the last layer gets no gradient from a classification head by design.
TRAINABLE = ["seq_bn", "double_seq_bn[task_layer_norm=True, init_weights='houlsby']", "par_bn",
             "scaled_par_bn", "lora[output_lora=True, intermediate_lora=True]", "ia3",
             "prefix_tuning[prefix_length=4, bottleneck_size=8]", "prefix_tuning_flat[prefix_length=4]",
             "prefix_tuning[prefix_length=4]|par_bn", "bitfit",
             "seq_bn[ln_before=True, ln_after=True, scaling='channel']", "dora", "vera[vera_b=0.1]",
             "prompt_tuning[prompt_length=3]",
             "prompt_tuning[prompt_length=2, combine='prefix_after_bos']|lora",
             "compacter[reduction_factor=4, phm_init_range=0.1]",
             "compacter++[reduction_factor=4, shared_W_phm=True, phm_init_range=0.1]",
             "unipelt", "seq_bn[use_gating=True]|lora[use_gating=True, intermediate_lora=True]",
             "prefix_tuning[prefix_length=3, use_gating=True, shared_gating=False]",
             "loreft[dropout=0.0, suffix_positions=1, layers=[0]]", "noreft[r=2, tied_weights=True]",
             "direft[layers=[0], suffix_positions=2, non_linearity='tanh']",
             "seq_bn_inv", "double_seq_bn_inv[inv_adapter='glow', inv_adapter_reduction_factor=4]"]


def _train(model, inputs, labels, steps=20, learning_rate=1e-2):
    optimizer = keras.optimizers.Adam(learning_rate)
    head = model.heads[model.active_head]
    weights = model.trainable_weights
    optimizer.build(weights)

    @tf.function  # traced per call: the active adapter's hooks are fixed at trace time
    def step(inputs, labels):
        with tf.GradientTape() as tape:
            loss = head.loss(labels, model(inputs, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights))
        return loss

    for _ in range(steps):
        loss = step(inputs, labels)
    return float(loss)


@pytest.mark.parametrize("config", TRAINABLE)
def test_training_changes_only_the_adapter_and_head(config):
    model = _model(dropout=0.1)
    model.add_adapter("other", config="lora")
    model.add_adapter("a", config=config)
    model.add_classification_head("a", num_labels=3)
    model.train_adapter("a")
    base = {v.path: v.numpy().copy() for v in model.bert.weights}
    other = {k: v.numpy().copy() for k, v in model.adapter_modules["other"].named_variables().items()}
    trained = {k: v.numpy().copy() for k, v in model.adapter_modules["a"].named_variables().items()}
    head = {v.path: v.numpy().copy() for v in model.heads["a"].weights}
    assert {id(v) for v in model.trainable_weights} == {
        id(v) for v in list(model.adapter_modules["a"].named_variables().values())
        + list(model.heads["a"].weights) if v.trainable}
    inputs = random_inputs(batch=6, seq=10, seed=3)
    _train(model, inputs, np.array([0, 1, 2, 0, 1, 2]))
    for v in model.bert.weights:
        np.testing.assert_array_equal(v.numpy(), base[v.path], err_msg=v.path)
    for k, v in model.adapter_modules["other"].named_variables().items():
        np.testing.assert_array_equal(v.numpy(), other[k])
    for k, v in model.adapter_modules["a"].named_variables().items():
        if v.trainable:
            assert np.abs(v.numpy() - trained[k]).max() > 0, f"{k} did not train"
        else:  # VeRA's shared pair stays frozen
            np.testing.assert_array_equal(v.numpy(), trained[k])
    for v in model.heads["a"].weights:
        assert np.abs(v.numpy() - head[v.path]).max() > 0, f"{v.path} did not train"


def test_full_finetuning_trains_the_base():
    model = _model()
    model.add_adapter("full", config="full")
    model.add_classification_head("full")
    model.train_adapter("full")
    before = [v.numpy().copy() for v in model.bert.weights]
    _train(model, random_inputs(batch=4), np.array([0, 1, 0, 1]), steps=3)
    changed = [np.abs(v.numpy() - b).max() > 0 for v, b in zip(model.bert.weights, before)]
    assert sum(changed) > 0.9 * len(changed)


def test_no_forgetting_switching_back_is_bit_identical():
    model = _model(dropout=0.1)
    inputs = random_inputs(batch=6, seed=5)
    labels = np.array([0, 1, 1, 0, 1, 0])
    model.add_adapter("A", config="double_seq_bn[reduction_factor=4]")
    model.add_classification_head("A")
    model.train_adapter("A")
    _train(model, inputs, labels)
    model.set_active_adapters("A")
    predictions_a = model(inputs).numpy()
    for config in ("lora", "bitfit", "prefix_tuning[prefix_length=3]"):
        name = f"B_{config.split('[')[0]}"
        model.add_adapter(name, config=config)
        model.add_classification_head(name)
        model.train_adapter(name)
        _train(model, inputs, 1 - labels)
        model.set_active_adapters("A")
        np.testing.assert_array_equal(model(inputs).numpy(), predictions_a)
        assert model.active_head == "A"


@pytest.mark.parametrize("config", ["lora[r=4, alpha=16, intermediate_lora=True, output_lora=True]",
                                    "dora[r=4, alpha=16, intermediate_lora=True]", "vera",
                                    "ia3", "ia3[alpha=3, output_lora=True]",
                                    "lora[attn_matrices=['q','k','v']]|seq_bn",
                                    "lora[leave_out=[1]]|ia3[leave_out=[0]]"])
def test_merge_then_reset(config):
    model = _model()
    inputs = random_inputs()
    model.add_adapter("a", config=config)
    # Move the weights away from their identity init so merging has something to do.
    rng = np.random.default_rng(0)
    for v in model.adapter_modules["a"].named_variables().values():
        v.assign(v.numpy() + 0.1 * rng.standard_normal(v.shape).astype("float32"))
    base_weights = [v.numpy().copy() for v in model.bert.weights]
    model.set_active_adapters("a")
    unmerged = model.bert(inputs)["sequence_output"].numpy()
    model.merge_adapter("a")
    merged = model.bert(inputs)["sequence_output"].numpy()
    np.testing.assert_allclose(merged, unmerged, atol=1e-5)
    assert any(np.abs(v.numpy() - b).max() > 0 for v, b in zip(model.bert.weights, base_weights))
    model.reset_adapter("a")
    np.testing.assert_allclose(model.bert(inputs)["sequence_output"], unmerged, atol=1e-5)
    for v, b in zip(model.bert.weights, base_weights):
        np.testing.assert_array_equal(v.numpy(), b)  # reset restores the base bit for bit
    with pytest.raises(ValueError, match="is not merged"):
        model.reset_adapter("a")


def test_merge_errors():
    model = _model()
    model.add_adapter("bn", config="seq_bn")
    with pytest.raises(TypeError, match="no LoRA or \\(IA\\)\\^3 part to merge"):
        model.merge_adapter("bn")
    with pytest.raises(KeyError, match="no adapter named 'nope'"):
        model.merge_adapter("nope")


@pytest.mark.parametrize("config", ["prefix_tuning[prefix_length=6, bottleneck_size=16]", "mam"])
def test_eject_prefix_tuning_keeps_outputs(config):
    model = _model()
    inputs = random_inputs()
    model.add_adapter("p", config=config, set_active=True)
    before = model.bert(inputs)["sequence_output"].numpy()
    params_before = model.adapter_summary(as_dict=True)[0]["params"]
    model.eject_prefix_tuning("p")
    np.testing.assert_allclose(model.bert(inputs)["sequence_output"], before, atol=1e-5)
    assert model.adapter_summary(as_dict=True)[0]["params"] < params_before
    assert "prefix_tuning_flat" in model.adapter_summary(as_dict=True)[0]["architecture"]
    with pytest.raises(TypeError, match="no prefix tuning part"):
        model.add_adapter("l", config="lora") or model.eject_prefix_tuning("l")


@pytest.mark.parametrize("config", ["double_seq_bn[task_layer_norm=True, init_weights='houlsby']",
                                    "lora", "ia3", "prefix_tuning[prefix_length=5]", "mam", "bitfit",
                                    "full", "scaled_par_bn", "dora", "vera",
                                    "prompt_tuning[prompt_length=3]", "compacter[reduction_factor=4]",
                                    "unipelt", "loreft[dropout=0.0]", "direft[dropout=0.0]",
                                    "seq_bn_inv", "seq_bn_inv[inv_adapter='glow']"])
def test_save_then_load_into_a_fresh_model(tmp_path, config):
    model = _model(seed=1)
    inputs = random_inputs()
    model.add_adapter("task", config=config)
    model.add_classification_head("task", num_labels=3, pooling="mean", layers=2)
    rng = np.random.default_rng(1)
    for v in model.adapter_modules["task"].named_variables().values():
        v.assign(v.numpy() + 0.05 * rng.standard_normal(v.shape).astype("float32"))
    model.set_active_adapters("task")
    expected = model(inputs).numpy()
    model.save_adapter(tmp_path / "task", "task")
    assert sorted(p.name for p in (tmp_path / "task").iterdir()) == [
        "adapter.safetensors", "adapter_config.json", "head.safetensors", "head_config.json"]
    fresh = _model(seed=1)  # same base weights, no adapters
    if config == "full":
        fresh.bert.set_weights([w + 1 for w in fresh.bert.get_weights()])
    name = fresh.load_adapter(tmp_path / "task", set_active=True)
    assert name == "task" and fresh.active_head == "task"
    np.testing.assert_allclose(fresh(inputs).numpy(), expected, atol=1e-6)


def test_loading_into_another_size_is_a_clear_error(tmp_path):
    model = _model()
    model.add_adapter("a", config="seq_bn")
    model.save_adapter(tmp_path / "a", "a")
    other = AdapterBertModel.from_config(tiny_bert_config(hidden_size=48, num_attention_heads=4))
    with pytest.raises(ValueError, match=r"trained for a base of another size: hidden_size=32 "
                                         r"\(this model: 48\)"):
        other.load_adapter(tmp_path / "a")
    assert other.adapters == {}


def test_load_errors_are_one_line(tmp_path):
    model = _model()
    with pytest.raises(FileNotFoundError, match="adapter directory .* does not exist"):
        model.load_adapter(tmp_path / "missing")
    model.add_adapter("a", config="seq_bn")
    model.save_adapter(tmp_path / "a", "a")
    (tmp_path / "a" / "adapter.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read .*adapter.safetensors"):
        model.load_adapter(tmp_path / "a", load_as="b")
    (tmp_path / "a" / "adapter_config.json").write_text("{")
    with pytest.raises(ValueError, match="is not valid JSON"):
        model.load_adapter(tmp_path / "a", load_as="b")
    assert list(model.adapters) == ["a"]


def test_save_is_atomic_a_crash_leaves_the_old_files(tmp_path, monkeypatch):
    model = _model()
    model.add_adapter("a", config="seq_bn")
    model.save_adapter(tmp_path / "a", "a")
    old = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    model.adapter_modules["a"].named_variables()["bottleneck.layer_0_output_adapter.up.bias"].assign(
        np.ones(32, "float32"))
    import safetensors.numpy

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        model.save_adapter(tmp_path / "a", "a")
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temporary directory left


def test_active_adapter_selection_and_errors():
    model = _model()
    inputs = random_inputs()
    base = model.bert(inputs)["sequence_output"].numpy()
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("b", config="seq_bn[init_weights='houlsby']")
    model.set_active_adapters("a")
    out_a = model.bert(inputs)["sequence_output"].numpy()
    model.set_active_adapters("b")
    out_b = model.bert(inputs)["sequence_output"].numpy()
    model.set_active_adapters(None)
    np.testing.assert_array_equal(model.bert(inputs)["sequence_output"], base)
    assert np.abs(out_a - out_b).max() > 0
    with pytest.raises(ValueError, match="exists already"):
        model.add_adapter("a")
    with pytest.raises(ValueError, match="adapter name must be"):
        model.add_adapter("bad/name")
    model.delete_adapter("a")
    with pytest.raises(KeyError, match=r"no adapter named 'a' \(adapters: b\)"):
        model.set_active_adapters("a")
    model.add_adapter("u", config="prefix_tuning|par_bn")
    # Accepted on its own (both have a leave_out), refused by a model with a layer 2 for both.
    deeper = _model(num_hidden_layers=3)
    with pytest.raises(ValueError, match="same location in layer 2"):
        deeper.add_adapter("bad", config="seq_bn[leave_out=[0]]|seq_bn[leave_out=[1]]")


def test_summary_line_is_peft_style():
    model = _model()
    model.add_adapter("lora", config="lora")
    model.add_classification_head("lora")
    model.train_adapter("lora")
    lines = model.adapter_summary().splitlines()
    trainable = 2 * 2 * (32 * 8 + 8 * 32) + 32 * 2 + 2
    total = model.bert.count_params() + 2 * 2 * (32 * 8 + 8 * 32) + 32 * 2 + 2
    assert lines[-1] == (f"trainable params: {trainable:,} || all params: {total:,} || "
                         f"trainable%: {100 * trainable / total:.4f}")
    assert model.adapter_summary(as_dict=True) == [
        {"name": "lora", "architecture": "lora", "params": 2048, "active": True, "train": True}]


def test_two_merges_into_one_dense_are_refused():
    model = _model()
    model.add_adapter("a", config="lora")
    model.add_adapter("b", config="lora[r=4]")
    model.merge_adapter("a")
    with pytest.raises(ValueError, match="already holds merged adapter"):
        model.merge_adapter("b")
    with pytest.raises(ValueError, match="is merged into the base; reset_adapter"):
        model.train_adapter("a")
    assert model.adapter_summary(as_dict=True)[0]["architecture"] == "lora (merged)"
    model.reset_adapter("a")
    model.merge_adapter("b")
    model.reset_adapter("b")


def test_overwriting_keeps_weights_tracked_once_and_bad_config_keeps_the_old_adapter():
    model = _model()
    model.add_classification_head("h", num_labels=2)
    count = len(model.weights)
    model.add_classification_head("h", num_labels=3, overwrite_ok=True)
    assert len(model.weights) == count
    model.add_adapter("a", config="seq_bn")
    with pytest.raises(ValueError, match="unknown adapter config"):
        model.add_adapter("a", config="nonsense", overwrite_ok=True)
    assert model.adapter_summary(as_dict=True)[0]["architecture"] == "seq_bn"


def test_failed_activation_keeps_the_previous_setup():
    from adapter_bert.composition import Average, Stack

    model = _model()
    inputs = random_inputs()
    model.add_adapter("a", config="seq_bn[init_weights='houlsby']", set_active=True)
    expected = model.bert(inputs)["sequence_output"].numpy()
    model.add_adapter("p", config="prefix_tuning[prefix_length=3]")
    with pytest.raises(ValueError, match="Average cannot hold adapter 'p': its prefix_tuning "
                                         "method composes only with BatchSplit, MultiTask, Parallel, Stack"):
        model.set_active_adapters(Average("a", "p"))
    with pytest.raises(KeyError, match="no adapter named 'nope'"):
        model.set_active_adapters(Stack("a", "nope"))
    assert model.active_adapters == "a"
    np.testing.assert_array_equal(model.bert(inputs)["sequence_output"], expected)


def test_save_adapter_refuses_a_foreign_directory(tmp_path):
    model = _model()
    model.add_adapter("a", config="seq_bn")
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="holds no saved adapter"):
        model.save_adapter(tmp_path, "a")
    assert (tmp_path / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("config", ["double_seq_bn[reduction_factor=4]", "par_bn", "lora", "ia3",
                                    "prefix_tuning[prefix_length=3]", "bitfit", "mam", "full"])
def test_skipping_padding_keeps_real_token_outputs_and_gradients(config):
    """`BertEncoder.skip_padding` runs dense layers on real tokens only: same function there."""
    model = AdapterBertModel(tiny_encoder())
    model.add_adapter("t", config=config)
    model.add_classification_head("t", num_labels=2, pooling="mean")
    model.train_adapter("t")
    rng = np.random.default_rng(1)
    for variable in model.trainable_weights:  # away from identity, so every method matters
        variable.assign(variable.numpy() + rng.normal(0, 0.05, variable.shape).astype("float32"))
    inputs = random_inputs(batch=4, seq=12)
    mask = inputs["attention_mask"].astype(bool)

    def run(skip):
        model.bert.skip_padding = skip
        with tf.GradientTape() as tape:
            logits = model(inputs, training=False)
            loss = tf.reduce_sum(logits * np.array([1.0, -2.0], "float32"))
        sequence = model.bert(inputs, training=False)["sequence_output"].numpy()
        grads = tape.gradient(loss, model.trainable_weights)  # None: unused (BitFit's pooler bias)
        return logits.numpy(), sequence, [None if g is None else tf.convert_to_tensor(g).numpy()
                                          for g in grads]

    logits, sequence, grads = run(False)
    logits_skip, sequence_skip, grads_skip = run(True)
    np.testing.assert_allclose(logits_skip, logits, atol=1e-5)
    np.testing.assert_allclose(sequence_skip[mask], sequence[mask], atol=1e-5)
    assert not sequence_skip[~mask].any()  # padding rows are zeros
    for g_skip, g in zip(grads_skip, grads):
        assert (g_skip is None) == (g is None)
        if g is not None:
            np.testing.assert_allclose(g_skip, g, atol=1e-4, rtol=1e-4)


# --- (IA)^3 honours alpha and init_weights as the adapters library does -------------------------

@pytest.mark.parametrize("alpha", [1, 2.5])
def test_ia3_output_is_alpha_times_the_learned_scale(alpha):
    model = _model()
    dense = model.bert.layers[1].sublayer("intermediate")
    x = np.random.default_rng(0).standard_normal((2, 5, 32)).astype("float32")
    plain = dense(x).numpy()
    model.add_adapter("a", config=f"ia3[alpha={alpha}]", set_active=True)
    vector = np.linspace(0.5, 1.5, 64).astype("float32")
    model.adapter_modules["a"].named_variables()["lora.layer_1_intermediate.scale"].assign(vector)
    np.testing.assert_allclose(dense(x).numpy(), plain * alpha * vector, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("init_weights", ["ia3", "lora", "bert"])
def test_ia3_init_weights(init_weights):
    keras.utils.set_random_seed(0)
    module = AdapterModule("a", AdapterConfig.load(f"ia3[init_weights={init_weights!r}]"),
                           BertConfig())
    values = np.concatenate([v.numpy().ravel() for v in module.named_variables().values()])
    assert values.size == 55_296
    if init_weights == "ia3":
        assert (values == 1).all()
    elif init_weights == "lora":
        assert (values == 0).all()  # the library's "LoRA zero init" of the vector
    else:
        assert abs(values.mean()) < 1e-3 and abs(values.std() - 0.02) < 5e-4


def test_ia3_and_lora_refuse_what_the_library_refuses():
    from adapter_bert.methods.ia3 import IA3Scale
    from adapter_bert.methods.lora import LoRADense

    unknown = "init_weights must be 'lora', 'bert' or 'ia3', got 'xavier'"
    with pytest.raises(ValueError, match=unknown):
        IA3Scale(8, init_weights="xavier")
    with pytest.raises(ValueError, match=unknown):
        LoRADense(8, 4, init_weights="xavier")
    with pytest.raises(ValueError, match="init_weights must be"):
        AdapterConfig.load("ia3[init_weights='xavier']")
    model = _model()
    with pytest.raises(ValueError, match=r"\(IA\)\^3 .* needs r=1, got r=2"):
        model.add_adapter("r", config="ia3[r=2]")
    with pytest.raises(ValueError, match=r"\(IA\)\^3 .* has no dropout, got dropout=0.1"):
        model.add_adapter("d", config="ia3[dropout=0.1]")
    assert model.adapters == {}
    # LoRA's "ia3" init is the library's: A and B all ones.
    ones = LoRADense(8, 4, r=2, init_weights="ia3")
    assert (ones.lora_A.numpy() == 1).all() and (ones.lora_B.numpy() == 1).all()


# --- prefix dropout draws one mask per example ----------------------------------------------------

@pytest.mark.parametrize("config", [
    "prefix_tuning[prefix_length=4, bottleneck_size=8, dropout=0.5]",
    "prefix_tuning_flat[prefix_length=4, dropout=0.5]"])
def test_prefix_dropout_masks_each_example(config):
    model = _model(dropout=0.0)  # no base dropout: only the prefix's can tell the rows apart
    model.add_adapter("p", config=config, set_active=True)
    model.add_adapter("no_dropout", config=config.replace("dropout=0.5", "dropout=0.0"))
    for source, target in zip(model.adapter_modules["p"].named_variables().values(),
                              model.adapter_modules["no_dropout"].named_variables().values()):
        target.assign(source)
    inputs = {k: np.repeat(v, 2, axis=0) for k, v in random_inputs(batch=1).items()}  # twin rows
    keras.utils.set_random_seed(0)
    trained = model.bert(inputs, training=True)["sequence_output"].numpy()
    assert np.abs(trained[0] - trained[1]).max() > 1e-2
    inferred = model.bert(inputs, training=False)["sequence_output"].numpy()
    # Not bit-equal: the base alone gives twin rows ~5e-7 apart (oneDNN kernels are not
    # batch-position invariant); a shared or absent mask shows as that, a per-row one as > 1e-2.
    np.testing.assert_allclose(inferred[0], inferred[1], atol=1e-5)
    model.set_active_adapters("no_dropout")
    np.testing.assert_array_equal(model.bert(inputs, training=False)["sequence_output"], inferred)
    assert np.abs(trained - inferred).max() > 1e-2


# --- mam keeps its identity through save / load -------------------------------------------------

def test_mam_save_load_keeps_its_identity(tmp_path):
    model = _model()
    model.add_adapter("m", config="mam")
    assert model.adapter_summary(as_dict=True)[0]["architecture"] == "mam"
    model.save_adapter(tmp_path / "m", "m")
    fresh = _model()
    fresh.load_adapter(tmp_path / "m")
    config = fresh.adapters["m"].config
    assert type(config) is MAMConfig and config == MAMConfig()
    assert repr(config) == repr(MAMConfig())
    assert fresh.adapter_summary(as_dict=True)[0]["architecture"] == "mam"
    assert fresh.adapters["m"].num_params() == model.adapters["m"].num_params()


# --- unions of one method at disjoint places, decided with the model's layers --------------------

def test_union_of_two_loras_in_disjoint_layers_is_one_lora_per_layer():
    model = _model()
    inputs = random_inputs()
    model.add_adapter("u", config="lora[leave_out=[1]]|lora[leave_out=[0], r=4]")
    module = model.adapters["u"]
    # layer 0: q and v of rank 8; layer 1: q and v of rank 4 (32 x r + r x 32 each).
    assert module.num_params() == 2 * 2 * 32 * 8 + 2 * 2 * 32 * 4
    assert sorted(module.named_variables()) == sorted(
        [f"lora_0.layer_0_attention_{m}.lora_{ab}" for m in ("query", "value") for ab in "AB"]
        + [f"lora_1.layer_1_attention_{m}.lora_{ab}" for m in ("query", "value") for ab in "AB"])
    rng = np.random.default_rng(0)
    for v in module.named_variables().values():
        v.assign(rng.standard_normal(v.shape).astype("float32") * 0.1)
    model.set_active_adapters("u")
    out = model.bert(inputs)["sequence_output"].numpy()
    assert np.abs(out - _model().bert(inputs)["sequence_output"].numpy()).max() > 1e-3
    # A LoRA in one layer and an FFN LoRA in another location of the same layer also combine.
    model.add_adapter("v", config="lora[leave_out=[1]]"
                                  "|lora[selfattn_lora=False, intermediate_lora=True]")
    assert model.adapters["v"].num_params() == 2 * 32 * 8 * 2 + 2 * (32 * 8 + 8 * 64)


@pytest.mark.parametrize("config, match", [
    ("lora[leave_out=[0]]|lora[leave_out=[0]]",
     "two LoRA / \\(IA\\)\\^3 configs of a union sit at the same location in layer 1 "
     "\\(selfattn_lora\\)"),
    ("lora[leave_out=[1]]|ia3", "same location in layer 0 \\(selfattn_lora\\)"),
    ("prefix_tuning[leave_out=[0]]|prefix_tuning[leave_out=[1]]", "two prefix_tuning configs"),
    ("seq_bn[leave_out=[1]]|seq_bn", "two bottleneck adapters of a union sit at the same location "
                                     "in layer 0 \\(output_adapter\\)"),
])
def test_union_conflicts_found_with_the_models_layers(config, match):
    model = _model()
    AdapterConfig.load(config)  # accepted on its own, as by the library
    with pytest.raises(ValueError, match=match):
        model.add_adapter("u", config=config)
    assert model.adapters == {}


def test_prompt_tuning_from_string_starts_at_the_word_embeddings(tmp_path):
    from adapter_bert import load_tokenizer
    from adapter_bert.testing import write_tiny_hf_checkpoint

    write_tiny_hf_checkpoint(tmp_path, seed=0)
    model = AdapterBertModel.from_pretrained(tmp_path)
    model.add_adapter("p", config="prompt_tuning[prompt_length=7, prompt_init='from_string', "
                                  "prompt_init_text='the cat sat']")
    ids = load_tokenizer(tmp_path).encode(["the cat sat"], max_seq_length=16)["input_ids"][0].tolist()
    assert len(ids) == 5  # [CLS] the cat sat [SEP]
    expected = model.bert.embeddings.word_embeddings.embeddings.numpy()[(ids * 2)[:7]]
    np.testing.assert_array_equal(model.adapters["p"].named_variables()
                                  ["prompt_tuning.prompt.prompt_embedding"].numpy(), expected)
    with pytest.raises(ValueError, match="needs prompt_init_text"):
        model.add_adapter("q", config="prompt_tuning[prompt_init='from_string']")
    with pytest.raises(ValueError, match="Parallel cannot hold adapter 'p': its prompt_tuning "
                                         "method composes only with Stack"):
        model.add_adapter("r", config="lora")
        from adapter_bert import Parallel

        model.set_active_adapters(Parallel("p", "r"))


def test_compacter_shares_its_rules_once_per_adapter():
    model = _model(num_hidden_layers=3)
    model.add_adapter("c", config="compacter[reduction_factor=4]")
    names = [k for k in model.adapters["c"].named_variables() if "phm_rule" in k]
    assert names == ["bottleneck.shared.phm_rule"]  # one variable for the 6 PHM layers
    assert len({id(v) for v in model.adapters["c"].weights}) == len(model.adapters["c"].weights)
    model.add_adapter("d", config="seq_bn[use_phm=True, reduction_factor=4, learn_phm=False]")
    assert model.adapters["d"].config.phm_layer
    model.train_adapter("d")
    frozen = [v.path for v in model.adapters["d"].weights if not v.trainable]
    assert len(frozen) == 1 and frozen[0].endswith("phm_rule")  # learn_phm=False is honoured
    for config, match in (("compacter[init_weights='houlsby']", "init_weights must be 'bert'"),
                          ("compacter[reduction_factor=3]", "divisible by phm_dim=4"),
                          ("compacter[shared_W_phm=True, factorized_phm_W=False]",
                           "shared_W_phm needs factorized_phm_W"),
                          ("compacter[hypercomplex_nonlinearity='phm']", "hypercomplex_nonlinearity")):
        with pytest.raises(ValueError, match=match):
            model.add_adapter("bad", config=config)


def test_gates_and_reft_details():
    from adapter_bert import AdapterConfig, UniPELTConfig, DiReftConfig

    model = _model()
    model.add_adapter("u", config="unipelt")
    assert type(model.adapters["u"].config) is UniPELTConfig
    assert model.adapter_summary(as_dict=True)[0]["architecture"] == "unipelt"
    with pytest.raises(ValueError, match="a gated LoRA update depends on the input"):
        model.merge_adapter("u")
    assert not any(v.numpy().any() for v in model.bert.weights if False)  # nothing merged
    # DiReFT keeps its identity through a save (its subtract_projection is a field here).
    again = AdapterConfig.load(AdapterConfig.load("direft").config_dict())
    assert type(again) is DiReftConfig and again.subtract_projection is False
    # LoReFT's projection has orthonormal rows whatever the free matrix holds.
    model.add_adapter("r", config="loreft[r=2]")
    unit = model.adapters["r"].methods[0].interventions[0].units[0]
    unit.projection.assign(np.random.default_rng(0).standard_normal((2, 32)).astype("float32"))
    rotation = unit.rotation().numpy()
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(2), atol=1e-5)
    with pytest.raises(ValueError, match="ReFT layers \\[5\\] are beyond the model's 2 layers"):
        model.add_adapter("bad", config="loreft[layers=[5]]")
    with pytest.raises(ValueError, match="needs prefix_positions or suffix_positions"):
        model.add_adapter("bad", config="noreft[prefix_positions=0]")
