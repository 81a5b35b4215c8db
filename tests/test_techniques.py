"""Fine-tuning techniques beside the adapters: layer-wise learning rates, L2-SP / EWC / learning
without forgetting, partial fine-tuning, gradual unfreezing and delta tuning (tiny BERTs, and the
packaged MiniLM for the layer-decay claim)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from adapter_bert import AdapterBertModel, techniques
from adapter_bert.bert.checkpoint import base_variables_by_part, encoder_state
from adapter_bert.testing import random_inputs, tiny_bert_config, write_tiny_hf_checkpoint
from adapter_bert.training import TrainingArgs, run, train, validate_args
from test_training import (_cli, _cli_in_process, assert_refused_in_one_line, kill_and_resume,
                           write_glue_task)


def _full_model(num_layers=2, config="full"):
    keras.utils.set_random_seed(0)
    model = AdapterBertModel.from_config(tiny_bert_config(num_hidden_layers=num_layers, dropout=0.0))
    model.add_adapter("t", config=config)
    model.add_classification_head("t", num_labels=2)
    model.train_adapter("t")
    model(random_inputs(batch=2, seq=8))
    return model


def _gradients(model, variables, seed=0):
    inputs = random_inputs(batch=4, seq=8, seed=seed)
    labels = np.array([0, 1, 1, 0], "int32")
    with tf.GradientTape() as tape:
        logits = model(inputs, training=True)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        # Scaled up so that every weight's largest gradient is far above Adam's epsilon.
        loss = loss * 1e4
    return tape.gradient(loss, variables)


def _args(tmp_path, checkpoint, **overrides):
    values = dict(task="mrpc", casing=str(checkpoint), data_dir=str(tmp_path / "glue"),
                  method="full", batch_size=4, epochs=2, max_seq_length=32, learning_rate=1e-2,
                  saved_models_dir=str(tmp_path / "out"), log_every=100, export=False,
                  predict_test=False)
    values.update(overrides)
    return TrainingArgs(**values)


@pytest.fixture()
def glue(tmp_path):
    write_glue_task(tmp_path / "glue", "mrpc", n=16)
    return tmp_path / "glue"


# --- layer-wise learning rates -------------------------------------------------------------------

def test_optimizer_with_unit_factors_computes_keras_adamw():
    model = _full_model()
    variables = model.trainable_weights
    start = [v.numpy().copy() for v in variables]
    grads = [[tf.convert_to_tensor(g).numpy() for g in _gradients(model, variables, seed=s)]
             for s in range(3)]
    finals = []
    for optimizer in (keras.optimizers.AdamW(1e-2, weight_decay=0.01),
                      techniques.make_techniques_adamw(1e-2, weight_decay=0.01)):
        for v, value in zip(variables, start):
            v.assign(value)
        for step_grads in grads:
            optimizer.apply_gradients(zip(step_grads, variables))
        finals.append([v.numpy().copy() for v in variables])
    for keras_value, ours in zip(*finals):
        np.testing.assert_allclose(ours, keras_value, atol=1e-6)


@pytest.mark.parametrize("decay", [0.5, 0.8])
def test_layer_decay_step_of_each_part_is_lr_times_decay_to_its_depth(decay):
    """Adam's first update of a weight is `-lr * factor * g / (|g| + eps')`: read back from the
    update, the factor of layer l of L is D**(L - l), of the embeddings D**L, of the head 1."""
    model = _full_model(num_layers=3)
    variables = model.trainable_weights
    parts = techniques.trained_parts(model, variables)
    assert {"embeddings", "layer_0", "layer_1", "layer_2", "top"} == set(parts)
    factors = techniques.layer_lr_factors(parts, num_layers=3, decay=decay)
    lr = 1e-3
    optimizer = techniques.make_techniques_adamw(
        lr, factors={id(v): f for v, f in zip(variables, factors)})
    before = [v.numpy().copy() for v in variables]
    grads = _gradients(model, variables)
    optimizer.apply_gradients(zip(grads, variables))
    depth = {"embeddings": 3, "layer_0": 2, "layer_1": 1, "layer_2": 0, "top": 0}
    for v, part, old, g in zip(variables, parts, before, grads):
        g = tf.convert_to_tensor(g).numpy().astype("float64")
        # The step at factor 1 (Keras' Adam adds epsilon before the bias correction).
        unit_step = lr * g / (np.abs(g) + optimizer.epsilon / np.sqrt(1 - optimizer.beta_2))
        largest = np.argmax(np.abs(unit_step))
        factor = (old - v.numpy()).ravel()[largest] / unit_step.ravel()[largest]
        np.testing.assert_allclose(factor, decay ** depth[part], rtol=1e-4, err_msg=v.path)
        np.testing.assert_allclose(old - v.numpy(), decay ** depth[part] * unit_step,
                                   atol=1e-7, err_msg=v.path)


@pytest.mark.slow
def test_layer_decay_through_the_command_on_minilm(tmp_path, glue_dir):
    """Full fine-tuning of the packaged MiniLM on MRPC: as D shrinks, layer 0 moves less
    relative to layer 5."""
    ratios = {}
    for decay in (1.0, 0.5):
        result = _cli("--task", "mrpc", "--data_dir", str(glue_dir / "MRPC"), "--method", "full",
                      "--layer_lr_decay", str(decay), "--learning_rate", "5e-5",
                      "--batch_size", "8", "--max_steps", "3", "--max_seq_length", "64",
                      "--max_train_examples", "64", "--warmup_ratio", "0",
                      "--eval_batch_size", "64", "--saved_models_dir", str(tmp_path / str(decay)),
                      "--export=false", "--predict_test=false")
        assert result.returncode == 0, result.stderr[-3000:]
        change = json.loads((tmp_path / str(decay) / "mrpc" / "results.json").read_text())[
            "weight_change"]
        assert set(change) == {"embeddings", "pooler", *(f"layer_{i}" for i in range(6))}
        ratios[decay] = change["layer_0"] / change["layer_5"]
    # lr * 0.5**5 against lr at layer 5: far below the undecayed ratio.
    assert ratios[0.5] < 0.25 * ratios[1.0], ratios


# --- cautious updating ---------------------------------------------------------------------------

@pytest.mark.parametrize("regularizer", ["l2sp", "ewc"])
def test_weight_pull_and_its_gradient_equal_the_hand_computed_values(tmp_path, regularizer):
    model = _full_model()
    weights = techniques.trained_base_weights(model, model.trainable_weights)
    assert len(weights) == len(encoder_state(model.bert))
    fisher = None
    rng = np.random.default_rng(0)
    if regularizer == "ewc":  # through a file, in Hugging Face orientation
        from adapter_bert.io_utils import Tensors, write_file

        values = {n: rng.uniform(0, 2, tuple(techniques._hf_orientation(n, v.numpy()).shape))
                  .astype("float32") for n, v in weights.items()}
        write_file(tmp_path / "fisher.safetensors", Tensors(values))
        fisher = techniques.read_fisher(tmp_path, model, weights)
    pull = techniques.WeightPull(weights, strength=3.0, fisher=fisher)
    start = {n: v.numpy().copy() for n, v in weights.items()}
    for v in weights.values():
        v.assign(v.numpy() + rng.normal(0, 0.1, tuple(v.shape)).astype("float32"))
    keras_fisher = {n: (np.ones_like(start[n]) if fisher is None
                        else techniques._hf_orientation(n, fisher[n])) for n in weights}
    expected = 0.5 * 3.0 * sum(float(np.sum(keras_fisher[n] * (v.numpy() - start[n]) ** 2))
                               for n, v in weights.items())
    with tf.GradientTape() as tape:
        value = pull()
    grads = tape.gradient(value, list(weights.values()))
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)
    for (n, v), g in zip(weights.items(), grads):
        np.testing.assert_allclose(np.asarray(tf.convert_to_tensor(g)),
                                   3.0 * keras_fisher[n] * (v.numpy() - start[n]), rtol=1e-5,
                                   atol=1e-7, err_msg=n)


def _total_change(results):
    return float(np.sqrt(sum(c ** 2 for c in results["weight_change"].values())))


def test_strong_penalty_keeps_the_weights_closer_than_none(tmp_path, tiny_checkpoint, glue):
    free = run(_args(tmp_path, tiny_checkpoint, epochs=3, adapter_name="free", save_fisher=True))
    assert (tmp_path / "out" / "free" / "fisher.safetensors").is_file()
    l2sp = run(_args(tmp_path, tiny_checkpoint, epochs=3, adapter_name="l2sp", regularizer="l2sp",
                     regularizer_strength=1e4))
    ewc = run(_args(tmp_path, tiny_checkpoint, epochs=3, adapter_name="ewc", regularizer="ewc",
                    regularizer_strength=1e6, fisher_from=str(tmp_path / "out" / "free")))
    assert _total_change(free) > 0
    assert _total_change(l2sp) < 0.5 * _total_change(free)
    assert _total_change(ewc) < _total_change(free)


def test_adapter_runs_report_zero_weight_change(tmp_path, tiny_checkpoint, glue):
    results = run(_args(tmp_path, tiny_checkpoint, method=None, adapter_config="lora[r=4]",
                        layer_lr_decay=0.5, max_steps=3))
    assert results["weight_change"] == {"embeddings": 0.0, "layer_0": 0.0, "layer_1": 0.0,
                                        "pooler": 0.0}


@pytest.fixture(scope="module")
def smaller_bert_fisher(tmp_path_factory):
    """The run directory of a Fisher estimate saved through the command for a smaller BERT."""
    root = tmp_path_factory.mktemp("smaller_bert")
    write_glue_task(root / "glue", "mrpc", n=16)
    write_tiny_hf_checkpoint(root / "ckpt", seed=1, hidden_size=16, intermediate_size=32)
    _cli_fisher(root, root / "ckpt", root / "out")
    return root / "out" / "mrpc"


@pytest.mark.parametrize("make_file, message", [
    (lambda root, other: root / "nowhere", "no fisher.safetensors there"),
    (lambda root, other: other, "written for a model of another size"),
    (lambda root, other: _foreign_fisher(root), "has no Fisher estimate of"),
])
def test_fisher_from_a_missing_or_mismatched_file_is_one_line(tmp_path, tiny_checkpoint, glue,
                                                              smaller_bert_fisher, make_file, message):
    """Refused before anything is written."""
    fisher = make_file(tmp_path, smaller_bert_fisher)
    result = _cli_in_process("--casing", str(tiny_checkpoint), "--data_dir", str(glue), "--method",
                             "full", "--regularizer", "ewc", "--fisher_from", str(fisher),
                             "--max_steps", "1", "--max_seq_length", "32",
                             "--saved_models_dir", str(tmp_path / "out"))
    assert_refused_in_one_line(result, message)
    assert not (tmp_path / "out").exists()


def _cli_fisher(tmp_path, checkpoint, out):
    result = _cli("--casing", str(checkpoint), "--data_dir", str(tmp_path / "glue"), "--method",
                  "full", "--max_steps", "1", "--batch_size", "4", "--max_seq_length", "32",
                  "--save_fisher", "--saved_models_dir", str(out), "--export=false",
                  "--predict_test=false", timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]


def _foreign_fisher(root):
    from adapter_bert.io_utils import Tensors, write_file

    write_file(root / "foreign.safetensors", Tensors({"some.weight": np.zeros(3, "float32")}))
    return root / "foreign.safetensors"


@pytest.mark.parametrize("overrides, message", [
    (dict(regularizer="ewc"), "--regularizer ewc needs --fisher_from"),
    (dict(fisher_from="x"), "--fisher_from weighs the pull of --regularizer ewc"),
    (dict(regularizer_strength=2.0), "--regularizer_strength weighs a --regularizer"),
    (dict(regularizer="l2sp", regularizer_strength=-1.0), "--regularizer_strength must be positive"),
    (dict(regularizer="nope"), "unknown --regularizer 'nope'; known: l2sp, ewc, kl"),
    (dict(regularizer="kl"), "--regularizer kl needs --load_adapter"),
    (dict(layer_lr_decay=1.5), "--layer_lr_decay must be in (0, 1]"),
    (dict(gradual_unfreezing="soon"), "--gradual_unfreezing takes a positive number"),
    (dict(save_fisher=True, mixed_precision="fp16"), "--save_fisher estimates the Fisher"),
])
def test_technique_flag_errors(tmp_path, tiny_checkpoint, glue, overrides, message):
    with pytest.raises(ValueError, match=None) as error:
        validate_args(_args(tmp_path, tiny_checkpoint, **overrides))
    assert message in str(error.value)


def test_l2sp_on_an_adapter_that_trains_no_base_weight_is_refused(tmp_path, tiny_checkpoint, glue):
    with pytest.raises(ValueError, match="this run trains none"):
        run(_args(tmp_path, tiny_checkpoint, method=None, adapter_config="lora", regularizer="l2sp"))
    assert not (tmp_path / "out").exists()


def test_learning_without_forgetting_keeps_the_earlier_head_closer(tmp_path, tiny_checkpoint, glue):
    """Full fine-tuning on task a, then on task b from a's weights: with the KL term, a's head
    predicts on b's inputs closer to how it did before."""
    run(_args(tmp_path, tiny_checkpoint, adapter_name="a", epochs=2))
    earlier = (str(tmp_path / "out" / "a" / "adapter"),)
    drift = {}
    for regularizer in (None, "kl"):
        args = _args(tmp_path, tiny_checkpoint, adapter_name=f"b_{regularizer}", epochs=3,
                     load_adapters=earlier, regularizer=regularizer,
                     regularizer_strength=50.0 if regularizer else None)
        validate_args(args)
        _, model = train(args)
        reference = AdapterBertModel.from_pretrained(str(tiny_checkpoint))
        reference.load_adapter(earlier[0])
        reference.set_active_adapters("a")
        reference.active_head = "a"
        inputs = random_inputs(batch=4, seq=12)
        before = tf.nn.softmax(reference(inputs)).numpy()
        # a's head (frozen in both runs) on the encoder that b's run left.
        after = tf.nn.softmax(reference.head_logits("a", model.bert(inputs), inputs)).numpy()
        drift[regularizer] = float(np.abs(after - before).sum())
    assert drift["kl"] < 0.5 * drift[None], drift


# --- partial fine-tuning -------------------------------------------------------------------------

def _base_values(model):
    return {part: {n: v.numpy().copy() for n, v in variables.items()}
            for part, variables in base_variables_by_part(model.bert).items()}


@pytest.mark.parametrize("config, changed", [
    ("partial[last_layers=2]", {"layer_1", "layer_2", "pooler"}),
    ("partial[last_layers=3]", {"layer_0", "layer_1", "layer_2", "pooler"}),
    ("linear_probe", set()),
])
def test_partial_fine_tuning_moves_only_its_parts(tmp_path, glue, config, changed):
    checkpoint = tmp_path / "ckpt3"
    write_tiny_hf_checkpoint(checkpoint, seed=0, dropout=0.0, num_hidden_layers=3)
    pretrained = _base_values(AdapterBertModel.from_pretrained(str(checkpoint)))
    args = _args(tmp_path, checkpoint, method=None, adapter_config=config, epochs=2)
    validate_args(args)
    results, model = train(args)
    after = _base_values(model)
    for part, values in pretrained.items():
        same = all(np.array_equal(after[part][n], v) for n, v in values.items())
        assert same == (part not in changed), part
        assert (results["weight_change"][part] > 0) == (part in changed), part
    assert results["trainable_params"] == (
        sum(int(np.prod(v.shape)) for p in changed for v in after[p].values())
        + sum(int(np.prod(v.shape)) for v in model.heads["mrpc"].weights))
    stored = set(_stored_names(tmp_path / "out" / "mrpc" / "adapter"))
    assert stored == {f"bert.{n}" for p in changed for n in after[p]}


def _stored_names(directory):
    from safetensors.numpy import load_file

    return load_file(str(directory / "adapter.safetensors")).keys()


# --- gradual unfreezing --------------------------------------------------------------------------

def test_unfreezing_schedule_adds_one_part_per_interval():
    model = _full_model(num_layers=2)
    trainable = model.trainable_weights
    parts = techniques.trained_parts(model, trainable)
    schedule = techniques.UnfreezingSchedule(
        trainable, techniques.unfreezing_stages(parts, num_layers=2), interval=3)
    expected = [{"top"}, {"top", "layer_1"}, {"top", "layer_1", "layer_0"},
                {"top", "layer_1", "layer_0", "embeddings"}]
    for step in range(14):
        stage = schedule.stage(step)
        assert stage == min(step // 3, 3)
        chosen = {id(v) for v in schedule.variables(stage)}
        assert {p for v, p in zip(trainable, parts) if id(v) in chosen} == expected[stage]
        assert chosen == {id(v) for v, p in zip(trainable, parts) if p in expected[stage]}


def test_gradual_unfreezing_trains_each_part_from_its_interval(tmp_path, tiny_checkpoint, glue):
    """Interval 2 steps, 5 steps: the top trains 5 steps, layer 1 from step 2, layer 0 from step
    4, the embeddings never; a weight's Adam moments start when it joins."""
    args = _args(tmp_path, tiny_checkpoint, gradual_unfreezing="2steps", max_steps=5, batch_size=2,
                 warmup_ratio=0.0)
    validate_args(args)
    results, model = train(args)
    change = results["weight_change"]
    assert change["embeddings"] == 0.0
    assert all(change[p] > 0 for p in ("layer_0", "layer_1", "pooler")), change
    # A one-step Adam update moves each weight by at most lr * schedule(step 4): layer 0 moved
    # once, layer 1 three times.
    from adapter_bert.training import make_schedule

    lr4 = float(make_schedule(1e-2, 5, 0)(4))
    start = _base_values(AdapterBertModel.from_pretrained(str(tiny_checkpoint)))
    after = _base_values(model)
    moved = {p: max(float(np.max(np.abs(after[p][n] - start[p][n]))) for n in start[p])
             for p in ("layer_0", "layer_1")}
    assert moved["layer_0"] <= lr4 * 1.001 < moved["layer_1"], moved


def test_gradual_unfreezing_run_killed_and_resumed_ends_at_the_same_weights(tmp_path):
    from safetensors.numpy import load_file

    checkpoint = tmp_path / "ckpt"
    write_tiny_hf_checkpoint(checkpoint, seed=0, dropout=0.1)
    write_glue_task(tmp_path / "glue", "rte", n=40)

    def flags(out):
        return ["--casing", str(checkpoint), "--task", "rte", "--data_dir", str(tmp_path / "glue"),
                "--method", "full", "--gradual_unfreezing", "3steps", "--layer_lr_decay", "0.7",
                "--batch_size", "4", "--epochs", "2", "--max_seq_length", "32",
                "--learning_rate", "5e-3", "--checkpoint_every", "2",
                "--saved_models_dir", str(out), "--predict_test=false", "--export=false"]

    reference = _cli(*flags(tmp_path / "whole"))
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert reference.stderr.count("gradual unfreezing: from step") == 4

    kill_and_resume(flags(tmp_path / "killed"), tmp_path / "killed" / "rte" / "checkpoints",
                    checkpoints=range(2, 9))
    a = load_file(str(tmp_path / "whole" / "rte" / "adapter" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "killed" / "rte" / "adapter" / "adapter.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(b[name], a[name], atol=1e-6, err_msg=name)


# --- delta tuning --------------------------------------------------------------------------------

DELTA = "delta[targets=['attention.query', 'attention.value', 'output', 'pooler']]"


def _trained_delta():
    model = _full_model(config=DELTA)
    rng = np.random.default_rng(1)
    for v in model.adapter_modules["t"].named_variables().values():
        v.assign(rng.normal(0, 0.05, tuple(v.shape)).astype("float32"))
    return model


def test_delta_merge_then_reset_is_exact():
    model = _trained_delta()
    pretrained = encoder_state(model.bert)
    inputs = random_inputs(batch=3, seq=10)
    with_delta = model(inputs).numpy()
    model.merge_adapter("t")
    np.testing.assert_allclose(model(inputs).numpy(), with_delta, atol=1e-5)
    merged = encoder_state(model.bert)
    assert any(not np.array_equal(merged[n], pretrained[n]) for n in pretrained)
    model.reset_adapter("t")
    restored = encoder_state(model.bert)
    for name, value in pretrained.items():
        assert np.array_equal(restored[name], value), name
    np.testing.assert_allclose(model(inputs).numpy(), with_delta, atol=1e-5)


def test_delta_file_holds_only_the_deltas(tmp_path):
    model = _trained_delta()
    model.save_adapter(tmp_path / "d", "t")
    names = set(_stored_names(tmp_path / "d"))
    own = set(model.adapter_modules["t"].named_variables())
    assert names == own
    assert names and all(n.startswith("delta.") for n in names)
    size = sum(int(np.prod(v.shape)) for v in model.adapter_modules["t"].named_variables().values())
    layer = model.config.hidden_size
    # query, value, output per layer and the pooler: kernel + bias each.
    per_layer = 2 * (layer * layer + layer) + (model.config.intermediate_size * layer + layer)
    assert size == 2 * per_layer + layer * layer + layer
    keras.utils.set_random_seed(0)  # the same random base as _full_model's
    fresh = AdapterBertModel.from_config(tiny_bert_config(dropout=0.0))
    fresh.load_adapter(tmp_path / "d")
    fresh.set_active_adapters("t")
    inputs = random_inputs(batch=2, seq=8)
    np.testing.assert_allclose(fresh(inputs).numpy(), model(inputs).numpy(), atol=1e-6)
