"""Composition blocks: invariants on tiny random BERTs, nesting rules, setups, averaging, traces."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from adapter_bert import (AdapterBertModel, Average, BatchSplit, Fuse, MultiTask, Parallel, Split,
                          Stack)
from adapter_bert.composition import (parse_composition, parse_heads_from_composition,
                                      parse_setup_string, setup_from_dict, setup_to_dict)
from adapter_bert.testing import random_inputs, tiny_bert_config

# Configs whose initialisation is not the identity, so that every adapter acts.
ACTING = {
    "seq_bn": "seq_bn[reduction_factor=4]",
    "double_seq_bn": "double_seq_bn[reduction_factor=4, task_layer_norm=True]",
    "par_bn": "par_bn[reduction_factor=4]",
    "lora": "lora[r=4, intermediate_lora=True]",
    "ia3": "ia3",
    "prefix": "prefix_tuning_flat[prefix_length=3]",
    "bitfit": "bitfit",
    "mam": "mam[prefix_length=2, bottleneck_size=8]",
}


def _model(seed=0, **overrides):
    keras.utils.set_random_seed(seed)
    return AdapterBertModel.from_config(tiny_bert_config(**overrides))


def _randomise(model, name, seed, scale=0.2):
    rng = np.random.default_rng(seed)
    for variable in model.adapters[name].named_variables().values():
        variable.assign(variable.numpy() + scale * rng.standard_normal(variable.shape).astype("float32"))


def _with(model, config_a, config_b=None, randomise=True):
    model.add_adapter("a", config=config_a)
    model.add_adapter("b", config=config_b or config_a)
    if randomise:
        _randomise(model, "a", 1)
        _randomise(model, "b", 2)
    return model


def _seq(model, setup, inputs, **kwargs):
    model.set_active_adapters(setup, **kwargs)
    out = model.bert(inputs)
    if isinstance(out, list):
        return [o["sequence_output"].numpy() for o in out]
    return out["sequence_output"].numpy()


# --- invariants ---------------------------------------------------------------------------------

@pytest.mark.parametrize("family", sorted(ACTING))
def test_stack_of_one_equals_the_adapter(family):
    model = _with(_model(), ACTING[family])
    inputs = random_inputs()
    alone = _seq(model, "a", inputs)
    np.testing.assert_array_equal(_seq(model, Stack("a"), inputs), alone)
    assert np.abs(alone - _seq(model, None, inputs)).max() > 1e-3  # the adapter does act


# An acting config and an identity-initialised one of the same placement (a stack ends with its
# last member's LayerNorm, so per-task LayerNorms are left out). LoRA, prefix tuning and parallel
# adapters have no identity member for Stack: the library stacks LoRA by chaining updates (a zero
# second update drops the first), a parallel adapter in a stack ignores what ran before it, and a
# prefix always changes attention.
IDENTITY = {"seq_bn": ("seq_bn[reduction_factor=4]", "seq_bn[init_weights='mam_adapter']"),
            "double_seq_bn": ("double_seq_bn[reduction_factor=4]",
                              "double_seq_bn[init_weights='mam_adapter']"),
            "ia3": ("ia3", "ia3"), "bitfit": ("bitfit", "bitfit")}


@pytest.mark.parametrize("family", sorted(IDENTITY))
def test_stack_with_an_identity_member_equals_the_first(family):
    model = _model()
    acting, identity = IDENTITY[family]
    model.add_adapter("a", config=acting)
    _randomise(model, "a", 1)
    model.add_adapter("b", config=identity)
    inputs = random_inputs()
    alone = _seq(model, "a", inputs)
    np.testing.assert_allclose(_seq(model, Stack("a", "b"), inputs), alone, atol=1e-6)
    np.testing.assert_allclose(_seq(model, Stack("b", "a"), inputs), alone, atol=1e-6)


PAIRS = [(ACTING[f], ACTING[f]) for f in sorted(ACTING)] + [
    (ACTING["seq_bn"], ACTING["par_bn"]),          # the library mixes these up in one block
    (ACTING["seq_bn"], ACTING["double_seq_bn"]),
    ("prefix_tuning_flat[prefix_length=2]", "prefix_tuning_flat[prefix_length=5]"),
    (ACTING["lora"], ACTING["ia3"]),
    (ACTING["seq_bn"], ACTING["lora"]),            # different families at different points
    (ACTING["bitfit"], ACTING["ia3"]),
]
PAIR_IDS = [f"{a.split('[')[0]}+{b.split('[')[0]}" for a, b in PAIRS]


@pytest.mark.parametrize("config_a, config_b", PAIRS, ids=PAIR_IDS)
def test_batch_split_rows_equal_each_adapters_own_rows(config_a, config_b):
    model = _with(_model(), config_a, config_b)
    inputs = random_inputs(batch=5, seq=9)
    own_a, own_b = _seq(model, "a", inputs), _seq(model, "b", inputs)
    split = _seq(model, BatchSplit("a", "b", batch_sizes=[2, 3]), inputs)
    mask = inputs["attention_mask"].astype(bool)
    np.testing.assert_allclose(split[:2][mask[:2]], own_a[:2][mask[:2]], atol=1e-6)
    np.testing.assert_allclose(split[2:][mask[2:]], own_b[2:][mask[2:]], atol=1e-6)
    # Groups may be empty, and the same adapter may take several groups.
    split = _seq(model, BatchSplit("b", "a", "b", batch_sizes=[0, 4, 1]), inputs)
    np.testing.assert_allclose(split[:4][mask[:4]], own_a[:4][mask[:4]], atol=1e-6)
    np.testing.assert_allclose(split[4:][mask[4:]], own_b[4:][mask[4:]], atol=1e-6)


@pytest.mark.parametrize("config_a, config_b", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("skip_padding", [True, False])
def test_parallel_branches_equal_each_adapter_alone(config_a, config_b, skip_padding):
    model = _with(_model(), config_a, config_b)
    model.bert.skip_padding = skip_padding
    inputs = random_inputs(batch=4, seq=9)
    mask = inputs["attention_mask"].astype(bool)
    own_a, own_b = _seq(model, "a", inputs), _seq(model, "b", inputs)
    branch_a, branch_b = _seq(model, Parallel("a", "b"), inputs)
    np.testing.assert_allclose(branch_a[mask], own_a[mask], atol=1e-6)
    np.testing.assert_allclose(branch_b[mask], own_b[mask], atol=1e-6)


def test_parallel_gives_each_branch_its_head():
    model = _with(_model(), ACTING["seq_bn"], ACTING["lora"])
    model.add_classification_head("a", num_labels=2)
    model.add_regression_head("b")
    inputs = random_inputs()
    model.set_active_adapters("a")
    logits_a = model(inputs).numpy()
    model.set_active_adapters("b")
    score_b = model(inputs).numpy()
    model.set_active_adapters(Parallel("a", "b"))
    assert model.active_head == ["a", "b"]
    out_a, out_b = model(inputs)
    np.testing.assert_allclose(out_a, logits_a, atol=1e-6)
    np.testing.assert_allclose(out_b, score_b, atol=1e-6)
    model.set_active_adapters(BatchSplit("a", "b", batch_sizes=[1, 2]))
    assert model.active_head == BatchSplit("a", "b", batch_sizes=[1, 2])
    part_a, part_b = model(inputs)
    np.testing.assert_allclose(part_a, logits_a[:1], atol=1e-6)
    np.testing.assert_allclose(part_b, score_b[1:], atol=1e-6)


@pytest.mark.parametrize("family", sorted(set(ACTING) - {"prefix", "mam"}))
def test_average_with_weights_one_zero_equals_the_first(family):
    model = _with(_model(), ACTING[family])
    inputs = random_inputs()
    alone = _seq(model, "a", inputs)
    np.testing.assert_allclose(_seq(model, Average("a", "b", weights=[1, 0]), inputs), alone,
                               atol=1e-6)
    assert np.abs(_seq(model, Average("a", "b", weights=[0.5, 0.5]), inputs) - alone).max() > 1e-4


def test_average_of_identical_adapters_is_the_adapter():
    model = _with(_model(), ACTING["lora"], randomise=False)
    _randomise(model, "a", 1)
    for source, target in zip(model.adapters["a"].named_variables().values(),
                              model.adapters["b"].named_variables().values()):
        target.assign(source)
    inputs = random_inputs()
    np.testing.assert_allclose(_seq(model, Average("a", "b", weights=[0.3, 0.7]), inputs),
                               _seq(model, "a", inputs), atol=1e-5)


# Per-token configs in the last layer only: positions cannot mix after them, so a Split's
# positions equal each member's own positions exactly.
SPLIT = {"seq_bn": "seq_bn[reduction_factor=4, leave_out=[0]]",
         "double_seq_bn": "double_seq_bn[reduction_factor=4, leave_out=[0]]",
         "par_bn": "par_bn[reduction_factor=4, leave_out=[0]]",
         "lora": "lora[selfattn_lora=False, intermediate_lora=True, output_lora=True, leave_out=[0]]",
         "ia3": "ia3[selfattn_lora=False, leave_out=[0]]"}


@pytest.mark.parametrize("family", sorted(SPLIT))
@pytest.mark.parametrize("skip_padding", [True, False])
def test_split_positions_equal_the_members_positions(family, skip_padding):
    model = _with(_model(), SPLIT[family])
    model.bert.skip_padding = skip_padding
    inputs = random_inputs(batch=3, seq=10)
    mask = inputs["attention_mask"].astype(bool)
    own_a, own_b = _seq(model, "a", inputs), _seq(model, "b", inputs)
    for setup in (Split("a", "b", splits=[4]), Split("a", "b", splits=[4, 6])):
        out = _seq(model, setup, inputs)
        np.testing.assert_allclose(out[:, :4][mask[:, :4]], own_a[:, :4][mask[:, :4]], atol=1e-6)
        np.testing.assert_allclose(out[:, 4:][mask[:, 4:]], own_b[:, 4:][mask[:, 4:]], atol=1e-6)
    with pytest.raises(ValueError, match=r"needs batches of 11 positions \(its Split segment "
                                         r"lengths\); this one has 10"):
        _seq(model, Split("a", "b", splits=[4, 7]), inputs)


def test_nested_blocks_the_library_allows_compose_their_parts():
    model = _model()
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        model.add_adapter(name, config=ACTING["seq_bn"])
        _randomise(model, name, seed)
    inputs = random_inputs(batch=3)
    mask = inputs["attention_mask"].astype(bool)
    stack_ab = _seq(model, Stack("a", "b"), inputs)
    own_c = _seq(model, "c", inputs)
    branch_ab, branch_c = _seq(model, Parallel(Stack("a", "b"), "c"), inputs)
    np.testing.assert_allclose(branch_ab[mask], stack_ab[mask], atol=1e-6)
    np.testing.assert_allclose(branch_c[mask], own_c[mask], atol=1e-6)
    split = _seq(model, BatchSplit(Stack("a", "b"), "c", batch_sizes=[1, 2]), inputs)
    np.testing.assert_allclose(split[:1][mask[:1]], stack_ab[:1][mask[:1]], atol=1e-6)
    np.testing.assert_allclose(split[1:][mask[1:]], own_c[1:][mask[1:]], atol=1e-6)
    stack_a_bc = _seq(model, Stack("a", Parallel("b", "c")), inputs)
    np.testing.assert_allclose(stack_a_bc[0][mask], stack_ab[mask], atol=1e-6)
    np.testing.assert_allclose(stack_a_bc[1][mask], _seq(model, Stack("a", "c"), inputs)[mask],
                               atol=1e-6)
    average = _seq(model, Average(Stack("a", "b"), "c", weights=[1, 0]), inputs)
    assert average.shape == stack_ab.shape
    _seq(model, Split(BatchSplit("a", "b", batch_sizes=[2, 1]), "c", splits=[3]), inputs)


@pytest.mark.parametrize("build, match", [
    (lambda: Stack("a", Stack("b", "c")), "cannot nest Stack\\[b, c\\] in Stack"),
    (lambda: Parallel("a", Parallel("b", "c")), "cannot nest Parallel\\[b, c\\] in Parallel"),
    (lambda: Average("a", Parallel("b", "c")), "cannot nest Parallel\\[b, c\\] in Average"),
    (lambda: Fuse("a", Fuse("b", "c")), "cannot nest Fuse\\[b, c\\] in Fuse"),
    (lambda: Stack("a", Parallel("b", BatchSplit("c", "d", batch_sizes=1))),
     "too deep: cannot have BatchSplit\\[c, d\\] at level 2"),
    (lambda: BatchSplit("a", "b", batch_sizes=[1]), "one non-negative int batch size per member"),
    (lambda: Average("a", "b", weights=[1, -1]), "sum to 0"),
    (lambda: Split("a", "b", splits=[1, 2, 3]), "needs 1 split positions"),
    (lambda: Stack(), "needs at least one adapter"),
    (lambda: Stack("bad name"), "adapter name must be"),
])
def test_nestings_the_library_refuses_are_clear_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_setups_are_checked_against_the_model_before_anything_changes():
    model = _with(_model(), ACTING["seq_bn"])
    model.add_adapter("p", config=ACTING["prefix"])
    model.add_adapter("c", config=ACTING["seq_bn"])
    model.set_active_adapters("a")
    with pytest.raises(ValueError, match="Split cannot hold adapter 'p'"):
        model.set_active_adapters(Split("a", "p", splits=[2]))
    with pytest.raises(ValueError, match="different numbers of branches \\(2, 3\\)"):
        model.set_active_adapters(Stack(Parallel("a", "b"), Parallel("a", "b", "c")))
    with pytest.raises(ValueError, match="no AdapterFusion named 'a,b'; add it"):
        model.set_active_adapters(Fuse("a", "b"))
    with pytest.raises(ValueError, match="cannot nest Stack\\[b, c\\] in Stack"):
        model.set_active_adapters("Stack(a, Stack(b, c))")
    assert model.active_adapters == "a"


# --- AdapterDrop ----------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["seq_bn", "double_seq_bn", "lora", "prefix", "ia3"])
def test_skip_layers_equals_leaving_those_layers_out(family):
    model = _model(num_hidden_layers=3)
    model.add_adapter("a", config=ACTING[family])
    _randomise(model, "a", 1)
    left_out = ACTING[family].replace("]", ", leave_out=[0, 1]]") if "[" in ACTING[family] \
        else ACTING[family] + "[leave_out=[0, 1]]"
    model.add_adapter("l", config=left_out)
    full = model.adapters["a"].named_variables()
    for key, variable in model.adapters["l"].named_variables().items():
        if family == "prefix":  # the pool keeps only the kept layer's columns
            width = variable.shape[1]
            variable.assign(full[key].numpy()[:, 2 * width:3 * width])
        else:
            variable.assign(full[key])  # same names: the kept layer is layer 2 in both
    inputs = random_inputs()
    skipped = _seq(model, "a", inputs, skip_layers=[0, 1])
    np.testing.assert_array_equal(skipped, _seq(model, "l", inputs))
    # A later call without skip_layers switches them all on again, as in the library.
    assert np.abs(_seq(model, "a", inputs) - skipped).max() > 1e-4
    np.testing.assert_array_equal(_seq(model, "a", inputs, skip_layers=[0, 1, 2]),
                                  _seq(model, None, inputs))


def test_skipped_layers_outputs_are_the_bases():
    model = _with(_model(num_hidden_layers=3), ACTING["seq_bn"])
    inputs = random_inputs()
    captured = {}
    base_call = model.bert.layers[0].call

    def spy(*args, **kwargs):
        captured["out"] = base_call(*args, **kwargs)
        return captured["out"]

    model.bert.layers[0].call = spy
    _seq(model, None, inputs)
    base = captured["out"].numpy()
    _seq(model, Stack("a", "b"), inputs, skip_layers=[0])
    np.testing.assert_array_equal(captured["out"].numpy(), base)


# --- setups and training -------------------------------------------------------------------------

def test_training_inside_a_stack_changes_only_the_new_adapter_and_head():
    model = _model(dropout=0.1)
    model.add_adapter("lang", config=ACTING["seq_bn"])
    _randomise(model, "lang", 1)
    model.add_adapter("task", config="seq_bn[reduction_factor=4, init_weights='houlsby']")
    model.add_classification_head("task", num_labels=2)
    model.add_classification_head("lang", num_labels=2)
    model.train_adapter("task")
    model.set_active_adapters(Stack("lang", "task"))
    assert model.active_head == "task"
    frozen = {v.path: v.numpy().copy() for v in model.bert.weights + model.heads["lang"].weights
              + list(model.adapters["lang"].named_variables().values())}
    trained = {v.path: v.numpy().copy() for v in model.trainable_weights}
    assert {id(v) for v in model.trainable_weights} == {
        id(v) for v in list(model.adapters["task"].named_variables().values())
        + model.heads["task"].weights}
    optimizer = keras.optimizers.Adam(1e-2)
    weights = model.trainable_weights
    inputs, labels = random_inputs(batch=4), np.array([0, 1, 1, 0])
    for _ in range(5):
        with tf.GradientTape() as tape:
            loss = model.heads["task"].loss(labels, model(inputs, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights))
    for v in model.bert.weights + model.heads["lang"].weights + list(
            model.adapters["lang"].named_variables().values()):
        np.testing.assert_array_equal(v.numpy(), frozen[v.path], err_msg=v.path)
    for v in model.trainable_weights:
        assert np.abs(v.numpy() - trained[v.path]).max() > 0, v.path
    # train_adapter on a block trains every member.
    model.train_adapter(Stack("lang", "task"))
    assert model.adapter_summary(as_dict=True)[0]["train"] and model.heads["lang"].trainable


def test_switching_setups_is_bit_identical_to_never_switching():
    model = _model()
    for name, config, seed in (("a", ACTING["seq_bn"], 1), ("b", ACTING["lora"], 2),
                               ("c", ACTING["prefix"], 3)):
        model.add_adapter(name, config=config)
        _randomise(model, name, seed)
    inputs = random_inputs()
    setup = Stack("a", "b", "c")
    first = _seq(model, setup, inputs)
    for other in (Parallel("a", "c"), BatchSplit("b", "c", batch_sizes=[1, 2]), None, "a",
                  Average("a", "b")):
        _seq(model, other, inputs)
    np.testing.assert_array_equal(_seq(model, setup, inputs), first)


def test_traced_functions_are_kept_per_setup():
    model = _with(_model(), ACTING["seq_bn"], ACTING["lora"])
    model.add_classification_head("a", num_labels=2)
    model.add_classification_head("b", num_labels=2)
    traces = []
    call = model.call

    def counting(inputs, training=None):
        traces.append(str(model.active_adapters))
        return call(inputs, training=training)

    model.call = counting
    inputs = random_inputs(batch=4)
    expected = {}
    for setup in ("a", "b", Stack("a", "b")):
        model.set_active_adapters(setup)
        expected[str(setup)] = model(inputs).numpy()
    traces.clear()
    for setup in ("a", "b", "a", Stack("a", "b"), "b", Stack("a", "b")):
        model.set_active_adapters(setup)
        out = model.predict(inputs, batch_size=4, verbose=0)
        np.testing.assert_allclose(out, expected[str(setup)], atol=1e-6)  # never a stale graph
    assert sorted(set(traces)) == ["Stack[a, b]", "a", "b"]
    assert len(traces) == 3  # one trace per setup, none when switching back


def test_setup_strings_dicts_and_lists():
    setup = parse_setup_string("Stack(lang, Parallel(a, Stack(b, c)), "
                               "BatchSplit(d, e, batch_sizes=[2, 3]))")
    assert setup == Stack("lang", Parallel("a", Stack("b", "c")),
                          BatchSplit("d", "e", batch_sizes=[2, 3]))
    assert parse_setup_string(repr(Stack("a", "b"))) == Stack("a", "b")
    assert parse_setup_string("Split(a, b, splits=[64])").splits == [64]
    for block in (setup, Average("a", "b", weights=[3, 1]), Split("a", "b", splits=[4, 6]),
                  Fuse("a", "b", name="ab"), "a"):
        again = setup_from_dict(json.loads(json.dumps(setup_to_dict(block))))
        assert again == block
    assert setup_to_dict(Average("a", "b", weights=[3, 1]))["kwargs"] == {"weights": [0.75, 0.25]}
    assert parse_composition(["a", ["b", "c"]]) == Stack("a", Fuse("b", "c"))
    assert parse_heads_from_composition(Stack("x", Parallel("a", Stack("b", "c")))) == ["a", "c"]
    for text, match in (("Stack(a, b", "cannot parse adapter setup"), ("Blend(a, b)", "unknown composition block 'Blend'"),
                        ("Average(a, b, weights=numpy.ones(2))", "not a Python literal"),
                        ("BatchSplit(a, b, sizes=[1, 2])", "bad options for BatchSplit"),
                        ("", "empty adapter setup")):
        with pytest.raises(ValueError, match=match):
            parse_setup_string(text)
    assert Average("a", "b", weights=[3, 1], normalize_weights=False).weights == [3.0, 1.0]
    assert hash(Stack("a", "b")) == hash(Stack("a", "b")) and Stack("a") != Stack("a", "b")


def test_summary_shows_the_active_setup():
    model = _with(_model(), ACTING["seq_bn"])
    model.set_active_adapters(Stack("a", "b"), skip_layers=[0])
    lines = model.adapter_summary().splitlines()
    assert lines[-2] == "active setup: Stack[a, b] (adapters skipped in layers 0)"
    assert [r["active"] for r in model.adapter_summary(as_dict=True)] == [True, True]
    model.set_active_adapters("a")
    assert [r["active"] for r in model.adapter_summary(as_dict=True)] == [True, False]


def test_save_and_load_a_whole_setup(tmp_path):
    model = _with(_model(seed=1), ACTING["seq_bn"], ACTING["lora"])
    model.add_classification_head("a", num_labels=2)
    model.add_classification_head("b", num_labels=3)
    setup = Parallel("a", "b")
    model.set_active_adapters(setup)
    inputs = random_inputs()
    expected = [o.numpy() for o in model(inputs)]
    model.save_adapter_setup(tmp_path / "setup")
    assert sorted(p.name for p in (tmp_path / "setup").iterdir()) == ["a", "adapter_setup.json", "b"]
    meta = json.loads((tmp_path / "setup" / "adapter_setup.json").read_text())
    assert meta["adapter_setup"] == {"type": "Parallel", "children": [
        {"type": "single", "children": ["a"]}, {"type": "single", "children": ["b"]}]}
    assert meta["head_setup"] == ["a", "b"]
    fresh = _model(seed=1)
    assert fresh.load_adapter_setup(tmp_path / "setup") == setup
    assert fresh.active_adapters == setup and fresh.active_head == ["a", "b"]
    for out, want in zip(fresh(inputs), expected):
        np.testing.assert_allclose(out.numpy(), want, atol=1e-6)
    # A broken member leaves the model as it was.
    other = _model(seed=1)
    (tmp_path / "setup" / "b" / "adapter.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read .*b/adapter.safetensors"):
        other.load_adapter_setup(tmp_path / "setup")
    assert other.adapters == {} and other.active_adapters is None
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds no saved adapter setup"):
        model.save_adapter_setup(tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_replacing_or_deleting_an_active_adapter():
    model = _with(_model(), ACTING["seq_bn"])
    model.set_active_adapters(Stack("a", "b"))
    model.add_adapter("b", config=ACTING["lora"], overwrite_ok=True)
    assert model.active_adapters == Stack("a", "b")  # the new "b" takes the old one's place
    model.delete_adapter("b")
    assert model.active_adapters is None and list(model.adapters) == ["a"]
    assert model.bert.hook_point("layer_0.output_residual").adapters() == ("a",)


# --- averaging ------------------------------------------------------------------------------------

def test_average_adapter_linear_is_the_weighted_sum_of_every_weight():
    model = _with(_model(), "double_seq_bn[reduction_factor=4, task_layer_norm=True, scaling='learned']")
    model.average_adapter("avg", ["a", "b"], weights=[3, 1])
    for key, variable in model.adapters["avg"].named_variables().items():
        expected = (0.75 * model.adapters["a"].named_variables()[key].numpy()
                    + 0.25 * model.adapters["b"].named_variables()[key].numpy())
        np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6, atol=1e-7)
    assert model.active_adapters is None


def test_average_adapter_lora_strategies():
    model = _with(_model(), "lora[r=4, alpha=8]")
    a, b = model.adapters["a"].named_variables(), model.adapters["b"].named_variables()
    model.average_adapter("neg", ["a", "b"], weights=[1.0, -0.5], combine_strategy="lora_linear_only_negate_b",
                          normalize_weights=False)
    for key, variable in model.adapters["neg"].named_variables().items():
        factor = 0.5 if key.endswith("lora_A") else -0.5
        np.testing.assert_allclose(variable.numpy(), a[key].numpy() + factor * b[key].numpy(),
                                   rtol=1e-6, atol=1e-7)
    inputs = random_inputs()
    for rank in (4, 2):
        model.average_adapter(f"svd{rank}", ["a", "b"], weights=[0.5, 0.5],
                              combine_strategy="lora_delta_w_svd", svd_rank=rank)
        assert model.adapters[f"svd{rank}"].config.r == rank
    # Rank 4 holds the sum of two rank-4 updates only approximately, but the two updates of rank
    # 8 in total span at most 8 dimensions: at svd_rank=4 the merged update is their best rank-4
    # approximation; the exact weighted sum shows with an Average of the two LoRAs.
    exact = _seq(model, Average("a", "b"), inputs)
    merged = _seq(model, "svd4", inputs)
    assert np.abs(merged - exact).max() < np.abs(_seq(model, "svd2", inputs) - exact).max()
    model.add_adapter("c", config="lora[r=4, alpha=8]")
    _randomise(model, "c", 5)
    model.add_adapter("d", config="lora[r=4, alpha=8]")
    for v in model.adapters["d"].named_variables().values():
        v.assign(np.zeros(v.shape, "float32"))
    model.average_adapter("svd_c", ["c", "d"], weights=[2.0, 0.0], normalize_weights=False,
                          combine_strategy="lora_delta_w_svd", svd_rank=4)
    np.testing.assert_allclose(_seq(model, "svd_c", inputs),
                               _seq(model, Average("c", "c", weights=[1.0, 1.0],
                                                   normalize_weights=False), inputs), atol=1e-5)


@pytest.mark.parametrize("call, match", [
    (lambda m: m.average_adapter("x", ["a", "c"]), "cannot average adapters of different configs"),
    (lambda m: m.average_adapter("x", ["a", "b"], combine_strategy="ties"), "unknown combine_strategy 'ties'"),
    (lambda m: m.average_adapter("x", ["a", "b"], combine_strategy="lora_delta_w_svd"),
     "needs a positive integer svd_rank"),
    (lambda m: m.average_adapter("x", ["c", "c"], combine_strategy="lora_linear_only_negate_b"),
     "is for LoRA adapters"),
    (lambda m: m.average_adapter("x", []), "no adapters to average"),
    (lambda m: m.average_adapter("a", ["a", "b"]), "exists already"),
    (lambda m: m.average_head("x", ["ha", "hc"]), "cannot average heads of different configs"),
])
def test_average_errors(call, match):
    model = _with(_model(), "lora[r=4]")
    model.add_adapter("c", config="seq_bn")
    model.add_classification_head("ha", num_labels=2)
    model.add_classification_head("hc", num_labels=3)
    with pytest.raises(ValueError, match=match):
        call(model)
    assert sorted(model.adapters) == ["a", "b", "c"]


def test_average_head():
    model = _model()
    model.add_classification_head("x", num_labels=3, layers=2)
    model.add_classification_head("y", num_labels=3, layers=2, dropout=0.3)
    model.average_head("xy", ["x", "y"], weights=[0.2, 0.8])
    for vx, vy, v in zip(model.heads["x"].weights, model.heads["y"].weights, model.heads["xy"].weights):
        np.testing.assert_allclose(v.numpy(), 0.2 * vx.numpy() + 0.8 * vy.numpy(), rtol=1e-6, atol=1e-7)
    assert model.active_head == "y"  # adding a head without set_active leaves the active one


# --- review findings: mixed families, sizes, dynamic shapes, replaced adapters --------------------

def test_split_of_members_of_different_families():
    model = _model()
    model.add_adapter("l", config=SPLIT["lora"])
    model.add_adapter("s", config=SPLIT["seq_bn"])
    model.add_adapter("l2", config=SPLIT["lora"])
    for name, seed in (("l", 1), ("s", 2), ("l2", 3)):
        _randomise(model, name, seed)
    inputs = random_inputs(batch=3, seq=10)
    mask = inputs["attention_mask"].astype(bool)
    own = {n: _seq(model, n, inputs) for n in ("l", "s", "l2")}
    out = _seq(model, Split("l", "s", "l2", splits=[2, 5]), inputs)
    for name, (lo, hi) in (("l", (0, 2)), ("s", (2, 5)), ("l2", (5, 10))):
        np.testing.assert_allclose(out[:, lo:hi][mask[:, lo:hi]], own[name][:, lo:hi][mask[:, lo:hi]],
                                   atol=1e-6)


def test_batch_split_sizes_must_fit_the_batch():
    model = _with(_model(), ACTING["seq_bn"])
    model.set_active_adapters(BatchSplit("a", "b", batch_sizes=[2, 3]))
    with pytest.raises(ValueError, match=r"needs batches of 5 rows \(its BatchSplit sizes\); this one has 4"):
        model.bert(random_inputs(batch=4))
    model.bert(random_inputs(batch=5))
    spec = tf.TensorSpec([None, None], tf.int32)
    traced = tf.function(lambda x: model.bert(x)["sequence_output"],
                         input_signature=[{"input_ids": spec, "attention_mask": spec,
                                           "token_type_ids": spec}])
    assert traced(random_inputs(batch=5)).shape[0] == 5
    with pytest.raises(tf.errors.InvalidArgumentError, match="needs batches of 5 rows"):
        traced(random_inputs(batch=4))
    with pytest.raises(ValueError, match=r"splits 3 rows; its group has 2"):
        model.set_active_adapters(BatchSplit("a", BatchSplit("a", "b", batch_sizes=[1, 2]),
                                             batch_sizes=[1, 2]))
    with pytest.raises(ValueError, match="add up to different totals \\(3, 5\\)"):
        model.set_active_adapters(Stack(BatchSplit("a", "b", batch_sizes=[1, 2]),
                                        BatchSplit("a", "b", batch_sizes=[2, 3])))
    model.set_active_adapters(Split("a", "b", splits=[4, 6]))
    with pytest.raises(ValueError, match=r"needs batches of 10 positions"):
        model.bert(random_inputs(seq=9))


def test_prefixes_of_different_lengths_in_a_traced_function_with_dynamic_shapes():
    model = _with(_model(), "prefix_tuning_flat[prefix_length=2]", "prefix_tuning_flat[prefix_length=5]")
    inputs = random_inputs(batch=4, seq=9)
    mask = inputs["attention_mask"].astype(bool)
    own_a, own_b = _seq(model, "a", inputs), _seq(model, "b", inputs)
    spec = tf.TensorSpec([None, None], tf.int32)
    for setup in (Parallel("a", "b"), BatchSplit("a", "b", batch_sizes=[1, 3])):
        model.set_active_adapters(setup)
        traced = tf.function(lambda x: model.bert(x), input_signature=[
            {"input_ids": spec, "attention_mask": spec, "token_type_ids": spec}])
        out = traced(inputs)
        if isinstance(setup, Parallel):
            np.testing.assert_allclose(out[0]["sequence_output"].numpy()[mask], own_a[mask], atol=1e-6)
            np.testing.assert_allclose(out[1]["sequence_output"].numpy()[mask], own_b[mask], atol=1e-6)
        else:
            seq = out["sequence_output"].numpy()
            np.testing.assert_allclose(seq[:1][mask[:1]], own_a[:1][mask[:1]], atol=1e-6)
            np.testing.assert_allclose(seq[1:][mask[1:]], own_b[1:][mask[1:]], atol=1e-6)


def test_parallel_needs_a_head_per_branch():
    model = _with(_model(), ACTING["seq_bn"])
    model.add_classification_head("a", num_labels=2)
    model.set_active_adapters(Parallel("a", "b"))  # "b" has no head: the active head stays "a"
    with pytest.raises(ValueError, match="has 2 branches but the active head is a; give each "
                                         "branch a head"):
        model(random_inputs())
    assert len(model.bert(random_inputs())) == 2


def test_merged_adapters_stay_out_of_blocks():
    model = _with(_model(), "lora[init_weights='bert']")
    model.merge_adapter("a")
    with pytest.raises(ValueError, match="adapter 'a' is merged into the base weights, where every "
                                         "row and branch of Parallel\\[a, b\\] would see it"):
        model.set_active_adapters(Parallel("a", "b"))
    model.reset_adapter("a")
    model.set_active_adapters(Stack("a", "b"))
    with pytest.raises(ValueError, match="'a' is part of the active setup Stack\\[a, b\\]"):
        model.merge_adapter("a")


def test_replacing_adapters_and_heads_never_runs_a_stale_graph():
    model = _with(_model(), ACTING["seq_bn"])
    model.add_classification_head("a", num_labels=2)
    inputs = random_inputs(batch=4)
    model.set_active_adapters("a", skip_layers=[1])
    first = model.predict(inputs, batch_size=4, verbose=0)
    model.add_adapter("a", config=ACTING["lora"], overwrite_ok=True)
    _randomise(model, "a", 7)
    assert model.active_adapters == "a" and model.bert.skip_layers == frozenset([1])
    replaced = model.predict(inputs, batch_size=4, verbose=0)
    np.testing.assert_allclose(replaced, model(inputs).numpy(), atol=1e-6)
    assert np.abs(replaced - first).max() > 1e-6
    model.add_classification_head("a", num_labels=2, overwrite_ok=True)
    np.testing.assert_allclose(model.predict(inputs, batch_size=4, verbose=0), model(inputs).numpy(),
                               atol=1e-6)
    model.set_active_adapters(Average("a", "b"))
    model.add_adapter("p", config=ACTING["prefix"])
    model.set_active_adapters(Stack("a", "p"))
    with pytest.raises(ValueError, match="cannot take its place in the active setup: Average "
                                         "cannot hold adapter 'b'"):
        model.set_active_adapters(Average("a", "b")) or model.add_adapter(
            "b", config=ACTING["prefix"], overwrite_ok=True)
    assert model.active_adapters is None


# --- MultiTask: each row through its own member ---------------------------------------------------

@pytest.mark.parametrize("skip_padding", [True, False])
def test_multi_task_rows_equal_each_members_own_rows(skip_padding):
    model = _model()
    members = {"s": ACTING["seq_bn"], "l": ACTING["lora"], "p": ACTING["prefix"],
               "u": ACTING["mam"], "h": ACTING["double_seq_bn"]}
    for seed, (name, config) in enumerate(members.items()):
        model.add_adapter(name, config=config)
        _randomise(model, name, seed + 1)
    model.bert.skip_padding = skip_padding
    inputs = random_inputs(batch=7, seq=9)
    mask = inputs["attention_mask"].astype(bool)
    setup = MultiTask("s", "l", "p", Stack("u", "h"))
    own = [_seq(model, m, inputs) for m in ("s", "l", "p", Stack("u", "h"))]
    task_ids = np.array([3, 0, 2, 2, 1, 0, 3], "int32")
    model.set_active_adapters(setup)
    out = model.bert({**inputs, "task_ids": task_ids})["sequence_output"].numpy()
    for row, task in enumerate(task_ids):
        np.testing.assert_allclose(out[row][mask[row]], own[task][row][mask[row]], atol=1e-6)
    # Tasks absent from the batch are fine.
    out = model.bert({**inputs, "task_ids": np.full(7, 1, "int32")})["sequence_output"].numpy()
    np.testing.assert_allclose(out[mask], own[1][mask], atol=1e-6)


def test_multi_task_heads_and_errors():
    model = _with(_model(), ACTING["seq_bn"], ACTING["lora"])
    model.add_classification_head("a", num_labels=2)
    model.add_regression_head("b")
    inputs = random_inputs(batch=4)
    model.set_active_adapters("a")
    logits_a = model(inputs).numpy()
    model.set_active_adapters("b")
    score_b = model(inputs).numpy()
    model.set_active_adapters(MultiTask("a", "b"))
    assert model.active_head == MultiTask("a", "b")
    task_ids = np.array([1, 0, 0, 1], "int32")
    out = model({**inputs, "task_ids": task_ids}).numpy()
    np.testing.assert_allclose(out[[1, 2]], logits_a[[1, 2]], atol=1e-6)
    np.testing.assert_allclose(out[[0, 3], 0], score_b[[0, 3], 0], atol=1e-6)
    assert np.isneginf(out[[0, 3], 1]).all()  # a regression row's padding
    with pytest.raises(ValueError, match="needs `task_ids` in the inputs"):
        model(inputs)
    with pytest.raises(tf.errors.InvalidArgumentError, match="task_ids must be member indices 0..1"):
        model.bert({**inputs, "task_ids": np.array([0, 2, 0, 0], "int32")})
    with pytest.raises(ValueError, match="holds both Parallel and MultiTask"):
        model.set_active_adapters(Stack(Parallel("a", "b"), MultiTask("a", "b")))
