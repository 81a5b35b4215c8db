"""Masked language modelling: reading text, BERT's masking, the MLM objective and `--task mlm`."""

import json
from pathlib import Path

import numpy as np
import pytest

from adapter_bert.glue.data import EncodedExamples
from adapter_bert.language_modeling import (MaskedLMData, hold_out, mask_tokens, masked_lm_metrics,
                                            max_predictions, read_text_lines)
from adapter_bert.training import TrainingArgs, run
from test_training import _cli_in_process, assert_refused_in_one_line, train_on_two_logical_cpus

WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "is", "good", "bad", "movie", "not", "very",
         "and", "it", "was"]


def tiny_text(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 12))) + " ." for _ in range(n)]


def _write(path: Path, lines) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- text files -----------------------------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    (None, "no text file"),
    (b"good line\n\xff\xfe bad\n", "is not UTF-8 text (line 2, byte 10)"),
    (b"\n   \n\n", "has no text"),
])
def test_unreadable_text_files_raise_one_line(tmp_path, content, message):
    path = tmp_path / "text.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises((FileNotFoundError, ValueError), match=message.replace("(", r"\(").replace(")", r"\)")):
        read_text_lines(path)


def test_held_out_dev_lines_are_five_percent_fixed_and_disjoint():
    lines = [f"line {i}" for i in range(200)]
    train, dev = hold_out(lines)
    assert len(dev) == 10 and len(train) == 190 and not set(train) & set(dev)
    assert hold_out(lines) == (train, dev)
    assert train == sorted(train, key=lines.index)  # file order kept
    with pytest.raises(ValueError, match="at least 2 lines"):
        hold_out(["only one"])


# --- masking --------------------------------------------------------------------------------------

SPECIAL = (0, 101, 102, 103)


def _corpus(rows=2000, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 40, size=rows)
    return EncodedExamples.from_rows([[101, *rng.integers(200, 1000, size=n - 2), 102] for n in lengths])


def test_masking_follows_bert_fifteen_percent_and_80_10_10():
    encoded = _corpus()
    masked, positions, labels = mask_tokens(encoded, np.random.default_rng(1), mask_id=103,
                                            vocab_size=1000, special_ids=SPECIAL, predictions=19)
    splits = encoded.row_splits
    chosen = mask_share = random_share = 0
    for row in range(len(encoded)):
        original = encoded.input_ids[splits[row]:splits[row + 1]]
        now = masked.input_ids[splits[row]:splits[row + 1]]
        keep = labels[row] >= 0
        count = int(keep.sum())
        maskable = len(original) - 2
        assert count == min(19, max(1, round(0.15 * maskable)))
        pos = positions[row][keep]
        assert len(set(pos.tolist())) == count and 0 not in pos and len(original) - 1 not in pos
        np.testing.assert_array_equal(labels[row][keep], original[pos])
        assert (positions[row][~keep] == 0).all() and (labels[row][~keep] == -1).all()
        # Only chosen positions change.
        unchosen = np.setdiff1d(np.arange(len(original)), pos)
        np.testing.assert_array_equal(now[unchosen], original[unchosen])
        chosen += count
        mask_share += int((now[pos] == 103).sum())
        random_share += int(((now[pos] != 103) & (now[pos] != original[pos])).sum())
    assert chosen > 5000
    # 80% [MASK], 10% random (a random id may equal the original: 1 in 800 here), 10% unchanged.
    assert mask_share / chosen == pytest.approx(0.8, abs=0.02)
    assert random_share / chosen == pytest.approx(0.1, abs=0.015)
    assert not np.isin(masked.input_ids[np.isin(encoded.input_ids, SPECIAL, invert=True)],
                       [0, 101, 102]).any()


def test_training_masks_change_every_epoch_and_repeat_for_the_same_seed(tiny_checkpoint):
    from adapter_bert import load_tokenizer

    data = MaskedLMData.from_lines(load_tokenizer(tiny_checkpoint), tiny_text(64), 32)
    assert data.predictions == max_predictions(32) == 5

    def masks(seed):
        return [(x["input_ids"].numpy(), x["mask_positions"].numpy(), y.numpy())
                for x, y in data.dataset(8, mask_seed=seed)]

    first, again, other = masks((0, 0)), masks((0, 0)), masks((0, 1))
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(first, again))
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(first, other))
    inputs, labels = next(iter(data.dataset(8, mask_seed=0)))
    assert set(inputs) == {"input_ids", "attention_mask", "token_type_ids", "mask_positions"}
    assert labels.shape == (8, 5) and inputs["mask_positions"].dtype == "int32"


def test_perplexity_is_exp_of_the_mean_token_cross_entropy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 7))
    labels = np.array([[1, 2, -1, -1], [0, -1, -1, -1], [6, 5, 4, 3]])
    keep = labels >= 0
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, np.maximum(labels, 0)[..., None], -1)[..., 0][keep]
    metrics = masked_lm_metrics(logits, labels)
    assert metrics["loss"] == pytest.approx(nll.mean(), rel=1e-9)
    assert metrics["perplexity"] == pytest.approx(np.exp(nll.mean()), rel=1e-9)
    assert metrics["accuracy"] == pytest.approx((logits.argmax(-1) == labels)[keep].mean())


def test_masked_lm_loss_weighs_every_predicted_token_of_the_global_batch_once():
    import tensorflow as tf

    from adapter_bert.objectives import MaskedLMObjective

    loss = MaskedLMObjective(None).loss(global_batch=2)
    logits = tf.random.stateless_normal((2, 3, 5), seed=(1, 2))
    labels = tf.constant([[1, -1, -1], [4, 0, 2]])
    expected = masked_lm_metrics(logits.numpy(), labels.numpy())["loss"]
    assert float(loss(labels, logits)) == pytest.approx(expected, rel=1e-6)


# --- the command ----------------------------------------------------------------------------------

def _mlm_args(tmp_path, checkpoint, **overrides):
    values = dict(task="mlm", casing=str(checkpoint), train_file=str(tmp_path / "train.txt"),
                  adapter_config="seq_bn_inv[reduction_factor=4]", adapter_name="en", batch_size=8,
                  epochs=3, max_seq_length=32, learning_rate=1e-2, saved_models_dir=str(tmp_path / "out"),
                  log_every=100)
    values.update(overrides)
    return TrainingArgs(**values)


def test_mlm_run_trains_a_language_adapter_and_reports_dev_perplexity(tmp_path, tiny_checkpoint):
    from safetensors.numpy import load_file

    _write(tmp_path / "train.txt", tiny_text(120))
    _write(tmp_path / "dev.txt", tiny_text(24, seed=1))
    results = run(_mlm_args(tmp_path, tiny_checkpoint, dev_file=str(tmp_path / "dev.txt")))
    out = tmp_path / "out" / "en"
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["task"] == "mlm" and on_disk["adapter_name"] == "en"
    assert on_disk["main_metric"] == "perplexity"
    assert [e["step"] for e in on_disk["epochs"]] == [15, 30, 45]
    perplexities = [e["dev"]["perplexity"] for e in on_disk["epochs"]]
    assert set(on_disk["epochs"][0]["dev"]) == {"perplexity", "loss", "accuracy"}
    # Lower is better: the best epoch has the lowest. The text is 16 words drawn uniformly, so
    # no model gets below a perplexity of about 16; the 32-token vocabulary is the ceiling.
    assert on_disk["best"]["dev"]["perplexity"] == min(perplexities)
    assert 16 < perplexities[-1] < perplexities[1] < perplexities[0] < 32
    assert results["best"] == on_disk["best"]
    assert "predictions" not in on_disk and "export" not in on_disk
    assert sorted(p.name for p in (out / "adapter").iterdir()) == [
        "adapter.safetensors", "adapter_config.json", "head.safetensors", "head_config.json"]
    adapter = load_file(str(out / "adapter" / "adapter.safetensors"))
    assert any("invertible" in k for k in adapter)
    head = load_file(str(out / "adapter" / "head.safetensors"))
    # The decoder is tied to the frozen word embeddings: not in the head's file.
    assert sorted(head) == ["output_bias", "transform.bias", "transform.kernel",
                            "transform_norm.beta", "transform_norm.gamma"]

    # The saved adapter and head give the recorded dev perplexity in a new model.
    from adapter_bert import AdapterBertModel, load_tokenizer
    from adapter_bert.language_modeling import DEV_MASK_SEED, masked_lm_sums, metrics_from_sums

    model = AdapterBertModel.from_pretrained(tiny_checkpoint)
    model.load_adapter(out / "adapter", set_active=True)
    data = MaskedLMData.from_lines(load_tokenizer(tiny_checkpoint), tiny_text(24, seed=1), 32)
    totals = np.zeros(3)
    for inputs, labels in data.dataset(16, mask_seed=DEV_MASK_SEED):
        totals += masked_lm_sums(model(inputs).numpy(), labels.numpy())
    assert metrics_from_sums(totals[0], int(totals[1]), int(totals[2]))["perplexity"] == \
        pytest.approx(on_disk["best"]["dev"]["perplexity"], rel=1e-4)


def test_mlm_without_dev_file_holds_out_lines_and_resumes_on_rerun(tmp_path, tiny_checkpoint):
    _write(tmp_path / "train.txt", tiny_text(100))
    args = _mlm_args(tmp_path, tiny_checkpoint, epochs=1, adapter_name=None, batch_size=10)
    results = run(args)
    assert results["adapter_name"] == "mlm" and results["train_steps"] == 10  # 95 train lines
    assert (tmp_path / "out" / "mlm" / "adapter" / "adapter_config.json").is_file()
    # The same flags resume (nothing left to do); a changed text file is another run.
    again = run(args)
    assert again["train_steps"] == 10 and again["best"] == results["best"]
    _write(tmp_path / "train.txt", tiny_text(100, seed=5))
    with pytest.raises(ValueError, match=r"train_file.* differ"):
        run(args)


@pytest.mark.parametrize("flags, message", [
    (["--task", "mlm"], "--task mlm needs --train_file"),
    (["--task", "mlm", "--train_file", "{tmp}/missing.txt"], "no text file"),
    (["--task", "mlm", "--train_file", "{tmp}/train.txt", "--data_dir", "{tmp}"],
     "--data_dir holds GLUE files"),
    (["--task", "mlm", "--train_file", "{tmp}/train.txt", "--fusion", "{tmp}/a,{tmp}/b"],
     "--fusion trains a fusion"),
    (["--task", "mlm", "--train_file", "{tmp}/train.txt", "--adapter_name", "en/x"],
     "--adapter_name: adapter name must be"),
    (["--task", "mrpc", "--train_file", "{tmp}/train.txt"], "--train_file is the text of --task mlm"),
    (["--task", "nope"], "unknown task 'nope'; known: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli, mlm"),
])
def test_bad_mlm_flags_exit_with_one_line_and_write_nothing(tmp_path, tiny_checkpoint, flags, message):
    _write(tmp_path / "train.txt", tiny_text(20))
    flags = [f.format(tmp=tmp_path) for f in flags]
    result = _cli_in_process("--casing", str(tiny_checkpoint), "--saved_models_dir",
                             str(tmp_path / "out"), *flags)
    assert_refused_in_one_line(result, message)
    assert not (tmp_path / "out").exists()


def test_mirrored_two_cpus_mlm_matches_one_device(tmp_path, tiny_checkpoint):
    """The token-weighted loss sums the masked count across replicas: 2 logical CPUs train the
    same weights as one device on the same global batches."""
    from safetensors.numpy import load_file

    _write(tmp_path / "train.txt", tiny_text(48))
    weights = {}
    for strategy in ("default", "mirrored"):
        train_on_two_logical_cpus(
            f"task='mlm', casing={str(tiny_checkpoint)!r}, train_file={str(tmp_path / 'train.txt')!r}, "
            f"adapter_config='seq_bn_inv', batch_size=8, epochs=2, max_seq_length=32, "
            f"learning_rate=1e-2, strategy={strategy!r}, saved_models_dir={str(tmp_path / strategy)!r}, "
            "eval_every=1000", strategy)
        out = tmp_path / strategy / "mlm" / "adapter"
        weights[strategy] = {**load_file(str(out / "adapter.safetensors")),
                             **load_file(str(out / "head.safetensors"))}
    assert len(weights["default"]) > 10
    for name, value in weights["default"].items():
        np.testing.assert_allclose(weights["mirrored"][name], value, atol=1e-5, err_msg=name)

