"""Checkpoint loading: the real MiniLM against PyTorch, Google TF1 checkpoints, HF dirs, errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from adapter_bert.bert.checkpoint import (CheckpointError, encoder_state, load_pretrained_encoder,
                                          read_checkpoint, resolve_checkpoint, save_hf_checkpoint)
from adapter_bert.testing import random_inputs, tiny_encoder, write_tiny_hf_checkpoint, write_vocab

FIXTURE = Path(__file__).parent / "fixtures" / "minilm_reference.npz"


@pytest.mark.slow
def test_packaged_minilm_matches_pytorch_bertmodel():
    """Reference written by fixtures/make_minilm_reference.py (torch 2.13, transformers 5)."""
    ref = np.load(FIXTURE)
    inputs = {k: ref[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    assert inputs["input_ids"].shape[0] >= 8
    lengths = inputs["attention_mask"].sum(1)
    assert len(set(lengths)) >= 8 and lengths.min() < lengths.max()  # mixed lengths, padding
    assert (inputs["token_type_ids"].max(1) == 1).sum() >= 4  # sentence pairs among them
    encoder = load_pretrained_encoder("all-minilm-l6-v2")
    real = inputs["attention_mask"].astype(bool)
    for skip_padding in (True, False):
        encoder.skip_padding = skip_padding
        out = encoder(inputs)
        seq_diff = np.abs(out["sequence_output"].numpy() - ref["last_hidden_state"])
        assert seq_diff[real].max() < 1e-4
        if skip_padding:  # the default: padded rows are never computed
            assert not out["sequence_output"].numpy()[~real].any()
        else:
            # Padded positions are never read by a head; they agree less tightly because their
            # LayerNorm inputs have small variance, which amplifies float rounding.
            assert seq_diff[~real].max() < 1e-3
        np.testing.assert_allclose(out["pooled_output"], ref["pooler_output"], atol=1e-4, rtol=0)


def test_short_names_resolve_to_the_packaged_checkpoint():
    directory = resolve_checkpoint("all-minilm-l6-v2")
    assert (directory / "model.safetensors").is_file() and (directory / "vocab.txt").is_file()
    for name in ("minilm", "sentence-transformers/all-MiniLM-L6-v2", "ALL-MiniLM-L6-v2"):
        assert resolve_checkpoint(name) == directory


def _write_google_checkpoint(directory: Path, encoder, extra=True, extra_variables=None):
    """Writes a TF1 checkpoint with Google's variable names, as `bert_model.ckpt`
    (`extra_variables`: more Google-named arrays, e.g. a `cls/predictions` head)."""
    state = encoder_state(encoder)
    variables = {}
    for name, value in state.items():
        google = "bert/" + name.replace(".", "/")
        google = google.replace("encoder/layer/", "encoder/layer_")
        if "LayerNorm" in google:
            google = google.replace("/weight", "/gamma").replace("/bias", "/beta")
        elif google.endswith("_embeddings/weight"):
            google = google[: -len("/weight")]
        else:
            google = google.replace("/weight", "/kernel")
            if google.endswith("/kernel"):
                value = value.T
        variables[google] = value
    if extra:  # what real Google checkpoints also hold
        variables["global_step"] = np.array(1000, np.int64)
        variables["cls/seq_relationship/output_bias"] = np.zeros(2, np.float32)
        variables["bert/pooler/dense/kernel/adam_m"] = np.zeros_like(variables["bert/pooler/dense/kernel"])
    variables.update(extra_variables or {})
    with tf.Graph().as_default():
        tf_vars = [tf.compat.v1.Variable(v, name=k) for k, v in variables.items()]
        saver = tf.compat.v1.train.Saver(tf_vars)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(directory / "bert_model.ckpt"), write_meta_graph=False)
    config = dict(encoder.bert_config.to_dict())
    config.pop("pad_token_id")
    (directory / "bert_config.json").write_text(json.dumps(config))
    write_vocab(directory)
    return variables


def test_google_tf1_checkpoint_loads_to_identical_outputs(tmp_path):
    source = tiny_encoder(seed=3)
    variables = _write_google_checkpoint(tmp_path, source)
    assert "bert/encoder/layer_0/attention/self/query/kernel" in variables
    loaded = load_pretrained_encoder(tmp_path)
    inputs = random_inputs(seed=1)
    expected, got = source(inputs), loaded(inputs)
    for key in ("sequence_output", "pooled_output"):
        np.testing.assert_array_equal(got[key], expected[key])
    for a, b in zip(source.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_hf_directory_round_trip_and_name_variants(tmp_path):
    source = write_tiny_hf_checkpoint(tmp_path / "hf", seed=5)
    loaded = load_pretrained_encoder(tmp_path / "hf")
    inputs = random_inputs(seed=2)
    np.testing.assert_array_equal(loaded(inputs)["sequence_output"], source(inputs)["sequence_output"])
    # A BertFor* checkpoint: "bert." prefix, old gamma/beta names, pre-training heads.
    from safetensors.numpy import save_file

    variant = tmp_path / "variant"
    variant.mkdir()
    state = {}
    for name, value in encoder_state(source).items():
        name = name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        state["bert." + name] = np.ascontiguousarray(value)
    state["cls.predictions.bias"] = np.zeros(10, np.float32)
    state["bert.embeddings.position_ids"] = np.arange(64, dtype=np.int64)[None]
    save_file(state, str(variant / "model.safetensors"))
    (variant / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    np.testing.assert_array_equal(load_pretrained_encoder(variant)(inputs)["sequence_output"],
                                  source(inputs)["sequence_output"])


def _error(path_or_id) -> str:
    with pytest.raises(CheckpointError) as info:
        load_pretrained_encoder(path_or_id)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_path_is_one_clear_line(tmp_path):
    assert _error(tmp_path / "nope") == f"checkpoint directory {tmp_path / 'nope'} does not exist"
    assert "does not exist" in _error("./not/here")


def test_directory_without_weights(tmp_path):
    write_tiny_hf_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    assert "has no weights (expected model.safetensors" in _error(tmp_path)
    (tmp_path / "config.json").unlink()
    assert "has no config.json or bert_config.json" in _error(tmp_path)


def test_pytorch_bin_only_says_how_to_convert(tmp_path):
    write_tiny_hf_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    message = _error(tmp_path)
    assert "pytorch_model.bin" in message and "safe_serialization=True" in message


def test_config_disagreeing_with_weights_names_the_weight(tmp_path):
    write_tiny_hf_checkpoint(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 48
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert _error(tmp_path) == (f"weight encoder.layer.0.intermediate.dense.weight in {tmp_path} has "
                                "shape (64, 32) but the config implies (48, 32)")


def test_missing_and_unexpected_weights_are_named(tmp_path):
    from safetensors.numpy import load_file, save_file

    write_tiny_hf_checkpoint(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    del state["pooler.dense.bias"]
    save_file(state, str(tmp_path / "model.safetensors"))
    assert _error(tmp_path) == f"missing weight in {tmp_path}: pooler.dense.bias"
    state["pooler.dense.bias"] = np.zeros(32, np.float32)
    state["encoder.layer.7.output.dense.weight"] = np.zeros((2, 2), np.float32)
    save_file(state, str(tmp_path / "model.safetensors"))
    assert _error(tmp_path) == f"unexpected weight in {tmp_path}: encoder.layer.7.output.dense.weight"


def test_failed_load_leaves_encoder_untouched(tmp_path):
    from adapter_bert.bert.checkpoint import load_state_into_encoder

    encoder = tiny_encoder(seed=1)
    before = [w.numpy().copy() for w in encoder.weights]
    state = encoder_state(tiny_encoder(seed=2))
    state["pooler.dense.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(CheckpointError, match="pooler.dense.weight"):
        load_state_into_encoder(encoder, state)
    for a, w in zip(before, encoder.weights):
        np.testing.assert_array_equal(a, w.numpy())


def test_corrupt_safetensors_is_a_clear_error(tmp_path):
    write_tiny_hf_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00\x01garbage")
    assert _error(tmp_path).startswith(f"cannot read {tmp_path / 'model.safetensors'}")
    (tmp_path / "config.json").write_text("{not json")
    assert "config.json is not valid JSON" in _error(tmp_path)


def test_uncached_hub_id_offline_fails_fast_with_one_line(tmp_path):
    """In a fresh process with an empty cache, so no retries and no file outside tmp_path."""
    code = ("from adapter_bert.bert.checkpoint import load_pretrained_encoder, CheckpointError\n"
            "try:\n    load_pretrained_encoder('bert-base-uncased')\n"
            "except CheckpointError as e:\n    print('ERR', e)\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.strip() == (
        "ERR 'bert-base-uncased' is neither a local directory nor in the Hugging Face cache, and "
        "HF_HUB_OFFLINE is set; download it once with network access or pass a local checkpoint "
        "directory")


def test_hub_id_loads_from_cache_offline(tmp_path, monkeypatch):
    """A hub id whose files sit in the HF cache loads with HF_HUB_OFFLINE=1 (cache laid out by hand)."""
    repo = tmp_path / "hub" / "models--someone--tiny-bert"
    snapshot = repo / "snapshots" / ("0" * 40)
    source = write_tiny_hf_checkpoint(snapshot, seed=7)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    code = ("import numpy as np\nfrom adapter_bert.bert.checkpoint import resolve_checkpoint\n"
            "print(resolve_checkpoint('someone/tiny-bert'))\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.strip() == str(snapshot), result.stderr[-2000:]
    config, state, _ = read_checkpoint(snapshot)
    assert config == source.bert_config and len(state) == len(source.weights)


def test_save_is_atomic_no_temporary_files_left(tmp_path):
    save_hf_checkpoint(tiny_encoder(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_the_packaged_minilm_pooler_was_never_trained():
    """The peers' classification head reads [CLS] through this pooler, frozen: a zero bias and
    weights at initialisation scale (std 0.009, against 0.039 in a trained layer) say it is
    random, which the benchmark comparisons rely on when they explain a gap by the head."""
    _, weights, _ = read_checkpoint("all-minilm-l6-v2")
    assert not np.any(np.asarray(weights["pooler.dense.bias"]))
    pooler = float(np.std(weights["pooler.dense.weight"]))
    trained = float(np.std(weights["encoder.layer.5.output.dense.weight"]))
    assert pooler < 0.01 < 0.03 < trained
