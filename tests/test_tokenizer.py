"""Host (Hugging Face) and in-graph (TensorFlow) tokenizers give the same BERT inputs.

The host side is the reference; its ids are also checked against the checkpoint's own
`BertTokenizerFast`. No documented exceptions: every comparison below must match exactly.
"""

import csv
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from adapter_bert.bert.checkpoint import CheckpointError, resolve_checkpoint  # noqa: E402
from adapter_bert.bert.tokenizer import (  # noqa: E402
    FEATURE_NAMES, BertTokenizer, InGraphTokenizer, load_tokenizer)

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"

# Accents, CJK, emoji, controls and zero-width characters, plus the cases tensorflow_text's own
# BERT normalizer gets wrong (ß, ﬁ, …, ², Ⅻ, full-width letters, deleted controls), ICU's
# final sigma, a special token typed in the text, CJK Extension E (outside `tokenizers`' CJK
# range), and words over 100 characters or 100 bytes.
UNICODE_TEXTS = [
    "Café naïve résumé", "Straße", "東京は日本", "emoji 😀 x", "a\u200bb\tc", "ÀÉÎÕÜ",
    "ﬁne … ² Ⅻ ｆｕｌｌ", "a\x00b\x7fc\ufffdd\x85e", "x\u00a0y\u3000z\u2028w", "ΑΣ Σ σς", "İstanbul",
    "Hello [SEP] [MASK] x [sep] [SEP[CLS]]", "\U0002B820\U0002B920", "Ǆ ǅ ǆ", "¿Qué? ¡Sí!",
    "한국어 नमस्ते مرحبا", "👍🏽 👨‍👩‍👧", "a" * 101, "ж" * 60, "", "   ",
]


def read_tsv(name: str, columns: list[str], limit: int | None = None) -> list[list[str]]:
    path = GLUE / name
    if not path.is_file():
        pytest.fail(f"{path} not found; ../shared must sit beside the checkout")
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = rows[:limit] if limit else rows
    return [[row[c] for row in rows] for c in columns]


def assert_same(host: dict, graph: dict, texts) -> None:
    for name in FEATURE_NAMES:
        h, g = host[name], graph[name].numpy()
        assert h.dtype == np.int32 and g.dtype == np.int32, name
        assert h.shape == g.shape, (name, h.shape, g.shape)
        bad = np.nonzero((h != g).any(axis=1))[0]
        assert not len(bad), f"{name} differs on rows {bad[:10].tolist()}: {texts[bad[0]]!r}"


@pytest.fixture(scope="module")
def tok() -> BertTokenizer:
    return load_tokenizer("all-minilm-l6-v2")


@pytest.fixture(scope="module")
def igt128(tok) -> InGraphTokenizer:
    return tok.in_graph(max_seq_length=128)


@pytest.fixture(scope="module")
def mrpc():
    a, b = read_tsv("MRPC/dev.tsv", ["#1 String", "#2 String"])
    assert len(a) == 408  # the whole dev set, not a csv quoting accident
    return a, b


def test_attributes(tok):
    directory = resolve_checkpoint("all-minilm-l6-v2")
    assert tok.vocab_file == directory / "vocab.txt"
    assert tok.do_lower_case is True
    assert tok.vocab_size == 30522
    assert tok.max_positions == 512


@pytest.mark.parametrize("max_seq_length", [128, 24, 41])
def test_mrpc_pairs(tok, igt128, mrpc, max_seq_length):
    a, b = mrpc
    igt = igt128 if max_seq_length == 128 else tok.in_graph(max_seq_length)
    host = tok.encode(a, b, max_seq_length=max_seq_length)
    assert_same(host, igt(tf.constant(a), tf.constant(b)), list(zip(a, b)))
    if max_seq_length < 128:
        # Both longest_first branches (only the longer segment cut, or both) with an odd (21)
        # and an even (38) text budget: at 24, 407 pairs lose tokens from both segments; at 41,
        # 278 from both and 50 from one.
        whole = tok.encode(a, b, max_seq_length=512)
        len_b = whole["token_type_ids"].sum(axis=1) - 1
        len_a = whole["attention_mask"].sum(axis=1) - len_b - 3
        kept_b = host["token_type_ids"].sum(axis=1) - 1
        kept_a = host["attention_mask"].sum(axis=1) - kept_b - 3
        cut_a, cut_b = len_a > kept_a, len_b > kept_b
        assert (cut_a & cut_b).sum() > 250 and (cut_a ^ cut_b).any()


def test_sst2_single_sentences(tok, igt128):
    (sentences,) = read_tsv("SST-2/dev.tsv", ["sentence"], limit=200)
    host = tok.encode(sentences, max_seq_length=128)
    assert_same(host, igt128(tf.constant(sentences)), sentences)


def test_unicode_matches_checkpoint_tokenizer(tok, igt128):
    from transformers import BertTokenizerFast

    reference = BertTokenizerFast.from_pretrained(str(resolve_checkpoint("all-minilm-l6-v2")))
    host = tok.encode(UNICODE_TEXTS, max_seq_length=128)
    expected = reference(UNICODE_TEXTS, truncation=True, max_length=128)["input_ids"]
    for row, ids, text in zip(host["input_ids"], expected, UNICODE_TEXTS):
        assert row[: len(ids)].tolist() == ids and not row[len(ids):].any(), text
    assert_same(host, igt128(tf.constant(UNICODE_TEXTS)), UNICODE_TEXTS)
    reversed_texts = UNICODE_TEXTS[::-1]
    assert_same(tok.encode(UNICODE_TEXTS, reversed_texts, max_seq_length=128),
                igt128(UNICODE_TEXTS, reversed_texts), list(zip(UNICODE_TEXTS, reversed_texts)))
    # tensorflow_text's normalizer would split these differently; the in-graph one must not.
    assert host["input_ids"][1].tolist()[:4] == [101, 2358, 27807, 102]  # st ##raße, not ##rasse
    assert 103 in host["input_ids"][11]  # [MASK] typed in the text stays a special token


def test_every_code_point(tok):
    """Each code point, between letters: all of planes 0-3 and 14 (where characters are assigned)
    and the first and last 16 of every other plane (unassigned or private use)."""
    code_points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF and (
        c >> 16 in (0, 1, 2, 3, 14) or (c & 0xFFFF) < 16 or (c & 0xFFFF) >= 0xFFF0)]
    per_text = 32
    texts = [" ".join(f"a{chr(c)}b" for c in code_points[i:i + per_text])
             for i in range(0, len(code_points), per_text)]
    host = tok.encode(texts, max_seq_length=512)
    assert host["attention_mask"].sum(axis=1).max() < 512  # nothing truncated
    assert_same(host, tok.in_graph(512)(tf.constant(texts)), texts)


def test_tf_function_and_saved_model(tok, mrpc, tmp_path):
    a, b = (texts[:64] for texts in mrpc)
    igt = tok.in_graph(max_seq_length=32, padding="max_length")

    class Serving(tf.Module):
        def __init__(self):
            super().__init__()
            self.tokenizer = igt

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)] * 2)
        def pairs(self, texts_a, texts_b):
            return self.tokenizer(texts_a, texts_b)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def singles(self, texts):
            return self.tokenizer(texts)

    module = Serving()
    graph_out = module.pairs(tf.constant(a), tf.constant(b))
    concrete = module.pairs.get_concrete_function()
    assert concrete.structured_outputs["input_ids"].shape.as_list() == [None, 32]
    assert_same(tok.encode(a, b, 32, padding="max_length"), graph_out, a)
    singles = tok.encode(a, max_seq_length=32, padding="max_length")
    assert (singles["attention_mask"][:, -1] == 1).sum() > 10  # single texts truncated too
    assert_same(singles, module.singles(a), a)

    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.pairs})
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    out = loaded.signatures["serving_default"](texts_a=tf.constant(a), texts_b=tf.constant(b))
    assert_same(tok.encode(a, b, 32, padding="max_length"), out, a)


def test_google_directories_and_lower_case_override(tok, tmp_path):
    packaged = resolve_checkpoint("all-minilm-l6-v2")
    texts = ["Hello World, Café NAÏVE 東京", "Straße [SEP] İ"]
    for name in ("uncased_L-6_H-384", "cased_L-6_H-384"):
        directory = tmp_path / name
        directory.mkdir()
        shutil.copy(packaged / "vocab.txt", directory / "vocab.txt")
        (directory / "bert_config.json").write_text(json.dumps({"max_position_embeddings": 64}))
        google = load_tokenizer(directory)
        assert google.do_lower_case is name.startswith("uncased")
        assert google.max_positions == 64
        host = google.encode(texts, texts[::-1], max_seq_length=64)
        if google.do_lower_case:  # same vocabulary and settings as the packaged tokenizer.json
            np.testing.assert_array_equal(host["input_ids"],
                                          tok.encode(texts, texts[::-1], 64)["input_ids"])
        else:
            assert_same(host, google.in_graph(64)(texts, texts[::-1]), texts)
    cased = load_tokenizer("all-minilm-l6-v2", do_lower_case=False)
    assert cased.do_lower_case is False
    host = cased.encode(texts, max_seq_length=32)
    assert (host["input_ids"] != tok.encode(texts, max_seq_length=32)["input_ids"]).any()
    assert_same(host, cased.in_graph(32)(texts), texts)


def test_errors(tok, igt128, tmp_path):
    for make in (lambda n: tok.encode(["x"], max_seq_length=n), lambda n: tok.in_graph(n)):
        with pytest.raises(ValueError, match=r"max_seq_length 513 .*\b512 position embeddings"):
            make(513)
        with pytest.raises(ValueError, match=r"max_seq_length 2 leaves no room"):
            make(2)
    with pytest.raises(ValueError, match="padding must be one of"):
        tok.encode(["x"], padding="max")
    with pytest.raises(ValueError, match="texts_b has 1 texts but texts_a has 2"):
        tok.encode(["x", "y"], ["z"])
    with pytest.raises(ValueError, match="texts_b has 1 texts but texts_a has 2"):
        igt128(["x", "y"], ["z"])
    with pytest.raises(TypeError, match=r"texts_a\[1\] is float"):
        tok.encode(["x", float("nan")])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)] * 2)
    def pairs(a, b):
        return igt128(a, b)

    with pytest.raises(tf.errors.InvalidArgumentError, match="one second segment per text"):
        pairs(tf.constant(["x", "y"]), tf.constant(["z"]))

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="has no vocab.txt"):
        load_tokenizer(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
