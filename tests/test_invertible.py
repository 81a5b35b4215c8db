"""Invertible adapters (MAD-X) and the masked-LM head: invertibility, which adapter acts in a
setup, the tied decoder staying frozen, pretrained heads from checkpoints, save / load."""

import numpy as np
import pytest
import tensorflow as tf

import keras

from adapter_bert import AdapterBertModel, Stack
from adapter_bert.bert.checkpoint import CheckpointError, read_masked_lm_head
from adapter_bert.methods.invertible import GLOWCouplingBlock, NICECouplingBlock
from adapter_bert.testing import random_inputs, tiny_bert_config, write_tiny_hf_checkpoint
from test_checkpoint import _write_google_checkpoint


def _model(seed=0, **overrides):
    keras.utils.set_random_seed(seed)
    return AdapterBertModel.from_config(tiny_bert_config(**overrides))


@pytest.mark.parametrize("block_class, hidden", [(NICECouplingBlock, 32), (NICECouplingBlock, 33),
                                                 (GLOWCouplingBlock, 32), (GLOWCouplingBlock, 33)])
def test_coupling_blocks_invert_exactly(block_class, hidden):
    block = block_class(hidden, reduction_factor=2, non_linearity="swish")
    for v in block.weights:  # well away from the near-zero init, so the map is far from identity
        v.assign(np.random.default_rng(0).normal(0, 0.3, v.shape).astype("float32"))
    x = np.random.default_rng(1).normal(size=(3, 7, hidden)).astype("float32")
    y = block(x).numpy()
    assert np.abs(y - x).max() > 0.5
    np.testing.assert_allclose(block.inverse(y).numpy(), x, atol=1e-4)
    np.testing.assert_allclose(block(block.inverse(x)).numpy(), x, atol=1e-4)


def test_nice_weights_are_the_library_shapes_and_init():
    block = NICECouplingBlock(768, reduction_factor=2)
    shapes = {k: tuple(v.shape) for k, v in
              {f"{s.name}.{d.name}.{w.name}": w for s in (block.F, block.G)
               for d in (s.first, s.second) for w in d.weights}.items()}
    assert shapes == {"F.0.kernel": (384, 192), "F.0.bias": (192,), "F.2.kernel": (192, 384),
                      "F.2.bias": (384,), "G.0.kernel": (384, 192), "G.0.bias": (192,),
                      "G.2.kernel": (192, 384), "G.2.bias": (384,)}
    kernel = block.F.first.kernel.numpy()
    assert abs(kernel.std() - 0.02) < 2e-3 and not block.F.first.bias.numpy().any()


def test_only_the_first_adapter_of_a_setup_acts_at_the_embeddings():
    model = _model()
    inputs = random_inputs()
    model.add_adapter("lang", config="seq_bn_inv")
    model.add_adapter("task", config="seq_bn")
    embeddings = {}
    base = model.bert.embeddings(inputs["input_ids"], inputs["token_type_ids"]).numpy()
    block = model.adapter_modules["lang"].methods[0].invertible
    for setup in ("lang", Stack("lang", "task"), Stack("task", "lang"), "task"):
        model.set_active_adapters(setup)
        point = model.bert.hook_point("embeddings.output")
        mask = inputs["attention_mask"]
        with model.bert._hooks.calling(model.bert._hooks.context):
            hidden, _, _ = point.run(tf.constant(base), mask, tf.range(base.shape[1]))
        embeddings[str(setup)] = hidden.numpy()
    np.testing.assert_allclose(embeddings["lang"], block(base).numpy(), atol=1e-6)
    np.testing.assert_allclose(embeddings["Stack[lang, task]"], block(base).numpy(), atol=1e-6)
    np.testing.assert_array_equal(embeddings["Stack[task, lang]"], base)
    np.testing.assert_array_equal(embeddings["task"], base)


def test_masked_lm_head_inverts_the_first_adapter_and_decodes_with_the_embeddings():
    model = _model()
    inputs = dict(random_inputs(batch=2, seq=8), mask_positions=np.array([[1, 4], [2, 2]]))
    model.add_adapter("en", config="seq_bn_inv")
    model.add_adapter("task", config="seq_bn")
    model.add_masked_lm_head("en")
    model.set_active_adapters(Stack("en", "task"))
    model.active_head = "en"
    head = model.heads["en"]
    block = model.adapter_modules["en"].methods[0].invertible
    sequence = model.bert(inputs)["sequence_output"].numpy()
    picked = np.take_along_axis(sequence, inputs["mask_positions"][..., None], axis=1)
    transformed = head.transform_norm(keras.ops.convert_to_tensor(
        _gelu(head.transform(picked).numpy()))).numpy()
    table = model.bert.embeddings.word_embeddings.embeddings.numpy()
    expected = block.inverse(transformed).numpy() @ table.T + head.output_bias.numpy()
    np.testing.assert_allclose(model(inputs).numpy(), expected, atol=1e-4)
    model.set_active_adapters(Stack("task", "en"))  # "task" first: nothing to invert
    sequence = model.bert(inputs)["sequence_output"].numpy()
    picked = np.take_along_axis(sequence, inputs["mask_positions"][..., None], axis=1)
    transformed = head.transform_norm(keras.ops.convert_to_tensor(
        _gelu(head.transform(picked).numpy()))).numpy()
    np.testing.assert_allclose(model(inputs).numpy(),
                               transformed @ table.T + head.output_bias.numpy(), atol=1e-4)


def _gelu(x):
    from scipy.special import erf

    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def test_mlm_training_changes_adapter_and_head_but_not_the_base_or_tied_decoder():
    model = _model(dropout=0.1)
    model.add_adapter("en", config="seq_bn_inv[reduction_factor=4]")
    model.add_masked_lm_head("en")
    model.train_adapter("en")
    head = model.heads["en"]
    trainable = {id(v) for v in model.trainable_weights}
    assert id(model.bert.embeddings.word_embeddings.embeddings) not in trainable
    assert trainable == {id(v) for v in list(model.adapter_modules["en"].named_variables().values())
                         + list(head.weights)}
    base = {v.path: v.numpy().copy() for v in model.bert.weights}
    adapter = {k: v.numpy().copy() for k, v in model.adapter_modules["en"].named_variables().items()}
    head_before = {v.path: v.numpy().copy() for v in head.weights}
    inputs = dict(random_inputs(batch=4, seq=10, seed=2),
                  mask_positions=np.array([[1, 3], [2, 5], [4, 0], [6, 7]]))
    labels = np.array([[5, 6], [7, 8], [9, -1], [10, 11]])
    optimizer = keras.optimizers.Adam(1e-2)
    weights = model.trainable_weights
    losses = []
    for _ in range(20):
        with tf.GradientTape() as tape:
            loss = head.loss(labels, model(inputs, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights))
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    for v in model.bert.weights:
        np.testing.assert_array_equal(v.numpy(), base[v.path], err_msg=v.path)
    for k, v in model.adapter_modules["en"].named_variables().items():
        assert np.abs(v.numpy() - adapter[k]).max() > 0, f"{k} did not train"
    for v in head.weights:
        assert np.abs(v.numpy() - head_before[v.path]).max() > 0, f"{v.path} did not train"


def test_masked_lm_loss_ignores_padding_labels():
    model = _model()
    model.add_masked_lm_head("lm")
    head = model.heads["lm"]
    logits = np.random.default_rng(0).normal(size=(2, 3, 32)).astype("float32")
    labels = np.array([[1, 2, -1], [3, -1, -1]])
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.mean([log_probs[0, 0, 1], log_probs[0, 1, 2], log_probs[1, 0, 3]])
    np.testing.assert_allclose(float(head.loss(labels, logits)), expected, rtol=1e-5)


def _mlm_head_tensors(hidden, vocab, seed=0):
    rng = np.random.default_rng(seed)
    return {"cls.predictions.transform.dense.weight": rng.normal(size=(hidden, hidden)).astype("float32"),
            "cls.predictions.transform.dense.bias": rng.normal(size=hidden).astype("float32"),
            "cls.predictions.transform.LayerNorm.gamma": rng.normal(size=hidden).astype("float32"),
            "cls.predictions.transform.LayerNorm.beta": rng.normal(size=hidden).astype("float32"),
            "cls.predictions.bias": rng.normal(size=vocab).astype("float32"),
            "cls.predictions.decoder.weight": rng.normal(size=(vocab, hidden)).astype("float32")}


def test_pretrained_masked_lm_head_loads_from_hf_and_google_checkpoints(tmp_path):
    encoder = write_tiny_hf_checkpoint(tmp_path / "plain")
    assert read_masked_lm_head(tmp_path / "plain") is None
    cfg = encoder.bert_config
    tensors = _mlm_head_tensors(cfg.hidden_size, cfg.vocab_size)
    from adapter_bert.bert.checkpoint import save_hf_checkpoint

    save_hf_checkpoint(encoder, tmp_path / "mlm", extra_tensors=tensors)
    write_tiny_hf_checkpoint(tmp_path / "mlm_tok")  # vocab and tokenizer files
    for name in ("vocab.txt", "tokenizer_config.json"):
        (tmp_path / "mlm" / name).write_bytes((tmp_path / "mlm_tok" / name).read_bytes())
    model = AdapterBertModel.from_pretrained(tmp_path / "mlm")
    model.add_masked_lm_head("lm")
    head = model.heads["lm"]
    np.testing.assert_array_equal(head.transform.kernel.numpy(),
                                  tensors["cls.predictions.transform.dense.weight"].T)
    np.testing.assert_array_equal(head.transform_norm.gamma.numpy(),
                                  tensors["cls.predictions.transform.LayerNorm.gamma"])
    np.testing.assert_array_equal(head.output_bias.numpy(), tensors["cls.predictions.bias"])

    google = tmp_path / "google"
    google.mkdir()
    _write_google_checkpoint(google, encoder, extra_variables={
        "cls/predictions/transform/dense/kernel": tensors["cls.predictions.transform.dense.weight"].T,
        "cls/predictions/transform/dense/bias": tensors["cls.predictions.transform.dense.bias"],
        "cls/predictions/transform/LayerNorm/gamma": tensors["cls.predictions.transform.LayerNorm.gamma"],
        "cls/predictions/transform/LayerNorm/beta": tensors["cls.predictions.transform.LayerNorm.beta"],
        "cls/predictions/output_bias": tensors["cls.predictions.bias"]})
    weights = read_masked_lm_head(google)
    np.testing.assert_array_equal(weights["transform.kernel"], head.transform.kernel.numpy())
    np.testing.assert_array_equal(weights["output_bias"], head.output_bias.numpy())

    del tensors["cls.predictions.bias"]
    save_hf_checkpoint(encoder, tmp_path / "partial", extra_tensors=tensors)
    with pytest.raises(CheckpointError, match="partial masked-LM head: no output_bias"):
        read_masked_lm_head(tmp_path / "partial")


def test_masked_lm_head_saves_and_loads_tied_to_the_new_model(tmp_path):
    model = _model(seed=1)
    model.add_adapter("en", config="seq_bn_inv")
    model.add_masked_lm_head("en")
    rng = np.random.default_rng(0)
    for v in list(model.adapter_modules["en"].named_variables().values()) + model.heads["en"].weights:
        v.assign(v.numpy() + 0.05 * rng.standard_normal(v.shape).astype("float32"))
    model.set_active_adapters("en")
    inputs = random_inputs()
    expected = model(inputs).numpy()
    model.save_adapter(tmp_path / "en", "en")
    fresh = _model(seed=1)
    fresh.load_adapter(tmp_path / "en", set_active=True)
    assert fresh.active_head == "en"
    np.testing.assert_allclose(fresh(inputs).numpy(), expected, atol=1e-5)
    other = _model(seed=1, vocab_size=50)
    with pytest.raises(ValueError, match=r"decodes 32 x 32 embeddings; the table to tie is \(50, 32\)"):
        other.load_adapter(tmp_path / "en")
    assert other.adapters == {}


def test_averaged_invertible_adapters_average_their_coupling_weights():
    model = _model()
    model.add_adapter("a", config="seq_bn_inv")
    model.add_adapter("b", config="seq_bn_inv")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        for v in model.adapter_modules[name].named_variables().values():
            v.assign(rng.normal(size=v.shape).astype("float32"))
    model.average_adapter("avg", ["a", "b"], weights=[0.25, 0.75])
    get = {n: model.adapter_modules[n].named_variables() for n in ("a", "b", "avg")}
    key = "bottleneck.invertible.F.0.kernel"
    np.testing.assert_allclose(get["avg"][key].numpy(),
                               0.25 * get["a"][key].numpy() + 0.75 * get["b"][key].numpy(),
                                   rtol=1e-6, atol=1e-7)


def test_invertible_acts_before_prompt_tuning_inserts_its_prompts():
    model = _model()
    inputs = random_inputs()
    model.add_adapter("p", config="seq_bn_inv|prompt_tuning[prompt_length=2]", set_active=True)
    methods = model.adapter_modules["p"].methods
    block = next(m for m in methods if getattr(m, "invertible", None) is not None).invertible
    prompt = next(m for m in methods if hasattr(m, "prompt")).prompt
    base = model.bert.embeddings(inputs["input_ids"], inputs["token_type_ids"])
    with model.bert._hooks.calling(model.bert._hooks.context):
        hidden, mask, positions = model.bert.hook_point("embeddings.output").run(
            base, inputs["attention_mask"], tf.range(base.shape[1]))
    assert hidden.shape[1] == base.shape[1] + 2
    np.testing.assert_allclose(hidden[:, 2:].numpy(), block(base).numpy(), atol=1e-6)
    np.testing.assert_allclose(hidden[0, :2].numpy(), prompt.prompts.numpy(), atol=1e-6)
