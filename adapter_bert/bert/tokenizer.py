"""BERT WordPiece tokenizers: one on the host (numpy) and one in the TensorFlow graph, same ids.

* `BertTokenizer.encode` runs Hugging Face's fast (Rust) tokenizer, read from the checkpoint's
  `tokenizer.json`, or built from `vocab.txt` for Google checkpoints. It is the reference.
* `InGraphTokenizer`, from `BertTokenizer.in_graph`, uses TensorFlow ops only, so it works inside a
  `tf.function`, a `tf.data` pipeline or a SavedModel signature that takes raw strings.

How the graph reproduces the host's ids
---------------------------------------
`tensorflow_text.FastBertTokenizer` does the WordPiece step only (`no_pretokenization=True`). Its
own normalizer (`lower_case_nfd_strip_accents=True`) is not used because it disagrees with BERT's:
it case-folds with compatibility mappings (ß -> ss, ﬁ -> fi, … -> ..., ² -> 2, Ⅻ -> xii) and
turns control characters into spaces where BERT deletes them. The graph instead repeats the steps of
`tokenizers`' `BertNormalizer` and `BertPreTokenizer`, in their order:

1. special tokens typed in the text ("[SEP]", "[MASK]") are cut out first and map to their own ids,
   as Hugging Face's added-token matching does (case-sensitive, before normalization);
2. control characters are deleted and whitespace becomes " ";
3. spaces go around CJK ideographs;
4. when stripping accents (uncased checkpoints): NFD, then non-spacing marks are deleted;
5. lower-casing, character by character: no final-sigma rule, unlike ICU's `tf.strings.lower`;
6. split on whitespace, every punctuation character becoming a word of its own;
7. a word longer than `max_input_chars_per_word` (100) characters becomes [UNK];
8. WordPiece, then [CLS]/[SEP], pair truncation, segment ids and padding.

Which characters are controls, whitespace, CJK, non-spacing marks or punctuation, and what each
lower-cases to, is not taken from TensorFlow's Unicode tables: RE2 and ICU follow a different
Unicode version than the Rust crates behind `tokenizers` (about 550 code points would disagree,
mostly combining marks added in Unicode 11 or later), and `tokenizers`' CJK range starts at U+2B920
where Unicode's Extension E starts at U+2B820. The tables are read off the host tokenizer itself by
running its normalizer and pre-tokenizer once over every code point of planes 0-3 and 14 (one to
two seconds, cached per process). Planes 4-13 (unassigned) and 15-16 (private use) are classified
by their first code point, apart from the two noncharacters that end every plane.

Pair truncation is Hugging Face's "longest_first": when both segments must be cut, the longer one
(the second on a tie) keeps the extra token of an odd budget. tensorflow_text's `RoundRobinTrimmer`
gives it to the first segment instead, so plain tf ops compute the lengths.

Known differences
-----------------
None in ids: the tests compare every MRPC dev pair (at 128, 24 and 41 tokens), SST-2 sentences,
accented, CJK, emoji and control-character text, and every code point of planes 0-3 and 14.
Differences that do not reach the ids:

* NFD comes from ICU in the graph and from the `unicode-normalization` crate on the host, which
  knows fewer characters: 25 code points of scripts added in Unicode 13-16 (Dives Akuru U+11938,
  Tulu-Tigalari, Gurung Khema, Kirat Rai, Todhri) are decomposed in the graph only. The word that
  holds one is [UNK] on both sides unless the vocabulary has word pieces in those scripts, and
  BERT vocabularies do not.
* Bytes that are not UTF-8 become [UNK] in the graph; the host only takes Python `str`.
* With `clean_text` off (no BERT checkpoint does this), the graph drops text after a NUL character:
  tensorflow_text's `regex_split` stops reading there. With it on, NUL is deleted first anyway.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

from adapter_bert.bert.checkpoint import CheckpointError, resolve_checkpoint

FEATURE_NAMES = ("input_ids", "attention_mask", "token_type_ids")
PADDINGS = ("longest", "max_length")
DEFAULT_MAX_POSITIONS = 512
# [CLS] a [SEP] b [SEP]: a pair needs 3 positions before any text fits.
_NUM_SPECIALS_PAIR = 3
_NUM_SPECIALS_SINGLE = 2
# Planes holding assigned characters; the others are unassigned (4-13) or private use (15-16) and
# behave uniformly, so one code point stands for each of them.
_PROBED_PLANES = (0, 1, 2, 3, 14)
_UNIFORM_PLANES = (4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 16)
_PROBE_SEPARATOR = "|"


def load_tokenizer(path_or_id: str | os.PathLike,
                   do_lower_case: bool | None = None) -> BertTokenizer:
    """Loads the tokenizer of a checkpoint directory, short name or hub id.

    Args:
        path_or_id: anything `resolve_checkpoint` accepts: a local directory, a short name such as
            "all-minilm-l6-v2", or a Hugging Face hub id already in the cache.
        do_lower_case: `None` reads it from `tokenizer_config.json` (or `tokenizer.json`); for a
            Google checkpoint with neither, it is True when the directory name contains "uncased".
            A bool overrides the files.

    Returns:
        A `BertTokenizer`.

    Raises:
        CheckpointError: the checkpoint cannot be found or has no `vocab.txt`.

    Example:
    >>> tok = load_tokenizer("all-minilm-l6-v2")
    >>> tok.do_lower_case, tok.vocab_size, tok.max_positions
    (True, 30522, 512)
    """
    return BertTokenizer(resolve_checkpoint(path_or_id), do_lower_case=do_lower_case)


class BertTokenizer:
    """The WordPiece tokenizer of one checkpoint, for host-side (numpy) encoding.

    Built by `load_tokenizer`. `encode` is Hugging Face's fast tokenizer; `in_graph` gives a
    TensorFlow-only tokenizer with the same output.

    Attributes:
        directory: the checkpoint directory.
        vocab_file: its `vocab.txt`.
        do_lower_case: whether text is lower-cased (and accents stripped) before WordPiece.
        vocab_size: number of token ids.
        max_positions: `max_position_embeddings` of the checkpoint's config (512 when absent), the
            longest `max_seq_length` allowed.
        hf_tokenizer: the underlying `transformers.BertTokenizerFast`.

    Example:
    >>> tok = load_tokenizer("all-minilm-l6-v2")
    >>> tok.encode(["Hello world!"], max_seq_length=8)["input_ids"].tolist()
    [[101, 7592, 2088, 999, 102]]
    """

    def __init__(self, directory: str | os.PathLike, do_lower_case: bool | None = None):
        self.directory = Path(directory)
        self.vocab_file = self.directory / "vocab.txt"
        if not self.vocab_file.is_file():
            raise CheckpointError(
                f"{self.directory} has no vocab.txt; the tokenizer needs the WordPiece vocabulary "
                "the checkpoint was pre-trained with")
        if do_lower_case is not None and not isinstance(do_lower_case, bool):
            raise TypeError(f"do_lower_case must be True, False or None, got {do_lower_case!r}")
        self.do_lower_case = (_lower_case_from_files(self.directory)
                              if do_lower_case is None else do_lower_case)
        self.max_positions = _max_positions(self.directory)
        self.hf_tokenizer = _hf_tokenizer(self.directory, self.vocab_file, self.do_lower_case)
        self.vocab_size = len(self.hf_tokenizer)

    def __repr__(self) -> str:
        return (f"BertTokenizer({str(self.directory)!r}, do_lower_case={self.do_lower_case}, "
                f"vocab_size={self.vocab_size})")

    def encode(self, texts_a: str | Iterable[str], texts_b: str | Iterable[str] | None = None,
               max_seq_length: int = 128, padding: str = "longest") -> dict[str, np.ndarray]:
        """Tokenizes a batch of texts or text pairs into BERT inputs.

        Args:
            texts_a: the first segments (a single string is a batch of one).
            texts_b: the second segments, one per `texts_a`, or None for single texts.
            max_seq_length: the longest row, [CLS] and [SEP] included. Pairs are truncated
                "longest_first" (the longer segment loses tokens first), single texts at the end.
            padding: "longest" pads to the batch's longest row, "max_length" to `max_seq_length`.

        Returns:
            `input_ids`, `attention_mask` and `token_type_ids`, int32 arrays of shape
            `[batch, seq]`, padded with 0 (`[PAD]`) on the right.

        Raises:
            ValueError: `max_seq_length` is below 3 or above `max_positions`, `padding` is unknown,
                or `texts_b` does not have one text per `texts_a`.
            TypeError: a text is not a string.

        Example:
        >>> tok = load_tokenizer("all-minilm-l6-v2")
        >>> feats = tok.encode(["A cat."], ["A dog sat."], max_seq_length=16)
        >>> feats["input_ids"].tolist()
        [[101, 1037, 4937, 1012, 102, 1037, 3899, 2938, 1012, 102]]
        >>> feats["token_type_ids"].tolist()
        [[0, 0, 0, 0, 0, 1, 1, 1, 1, 1]]
        """
        _check_max_seq_length(max_seq_length, self.max_positions)
        _check_padding(padding)
        texts_a = _text_list(texts_a, "texts_a")
        if texts_b is not None:
            texts_b = _text_list(texts_b, "texts_b")
            if len(texts_b) != len(texts_a):
                raise ValueError(f"texts_b has {len(texts_b)} texts but texts_a has "
                                 f"{len(texts_a)}; pairs need one second segment per first segment")
        if not texts_a:
            return {name: np.zeros((0, 0), np.int32) for name in FEATURE_NAMES}
        encoded = self.hf_tokenizer(
            texts_a, texts_b, max_length=int(max_seq_length), truncation="longest_first",
            padding=padding, return_attention_mask=True, return_token_type_ids=True,
            return_tensors="np")
        return {name: np.asarray(encoded[name], dtype=np.int32) for name in FEATURE_NAMES}

    def in_graph(self, max_seq_length: int = 128, padding: str = "longest") -> InGraphTokenizer:
        """A TensorFlow-only tokenizer with the same output as `encode`.

        Args:
            max_seq_length: as in `encode`.
            padding: "longest" (rows padded to the batch's longest) or "max_length" (always
                `max_seq_length` wide: static shapes, as TPUs need).

        Returns:
            An `InGraphTokenizer` (a `tf.Module`).

        Raises:
            ValueError: as `encode`, or the tokenizer uses a feature the graph does not reproduce
                (a non-BERT normalizer or pre-tokenizer, an added token outside `vocab.txt`).
            CheckpointError: `vocab.txt` disagrees with the host tokenizer's vocabulary.

        Example:
        >>> tok = load_tokenizer("all-minilm-l6-v2")
        >>> igt = tok.in_graph(max_seq_length=16)
        >>> igt(tf.constant(["Hello world!"]))["input_ids"].numpy().tolist()
        [[101, 7592, 2088, 999, 102]]
        """
        _check_max_seq_length(max_seq_length, self.max_positions)
        _check_padding(padding)
        return InGraphTokenizer(_graph_spec(self), max_seq_length=max_seq_length, padding=padding)


class InGraphTokenizer(tf.Module):
    """BERT tokenization in TensorFlow ops; build it with `BertTokenizer.in_graph`.

    Calling it with a 1-D string tensor (or two, for pairs) returns the same `input_ids`,
    `attention_mask` and `token_type_ids` as `BertTokenizer.encode`, as int32 tensors. It works
    eagerly, inside `tf.function` (`tf.TensorSpec([None], tf.string)` inputs) and in SavedModels;
    loading such a SavedModel needs `import tensorflow_text` first, which registers its ops.

    Attributes:
        max_seq_length: the longest row, specials included.
        padding: "longest" or "max_length".

    Example:
    >>> igt = load_tokenizer("all-minilm-l6-v2").in_graph(max_seq_length=8, padding="max_length")
    >>> @tf.function(input_signature=[tf.TensorSpec([None], tf.string)] * 2)
    ... def features(a, b):
    ...     return igt(a, b)
    >>> features(tf.constant(["A cat."]), tf.constant(["A dog sat."]))["input_ids"].numpy().tolist()
    [[101, 1037, 4937, 102, 1037, 3899, 2938, 102]]
    """

    def __init__(self, spec: _GraphSpec, max_seq_length: int, padding: str,
                 name: str = "bert_tokenizer"):
        super().__init__(name=name)
        self.max_seq_length = int(max_seq_length)
        self.padding = padding
        self._spec = spec
        self._wordpiece = tf_text.FastBertTokenizer(
            vocab=list(spec.vocab), suffix_indicator=spec.suffix_indicator,
            # UTF-8 needs up to 4 bytes a character; the character limit is applied beforehand.
            max_bytes_per_word=4 * spec.max_chars_per_word, token_out_type=tf.int32,
            unknown_token=spec.unk_token, no_pretokenization=True,
            lower_case_nfd_strip_accents=False)
        self._lower_keys = tf.constant(spec.tables.lower_keys, tf.int32)
        self._lower_values = tf.constant(spec.tables.lower_values, tf.int32)
        strings = tf.TensorSpec([None], tf.string)
        # No data-dependent Python control flow here, and AutoGraph would spend seconds converting
        # tensorflow_text's code on every trace.
        self._encode_single = tf.function(self._single, input_signature=[strings], autograph=False)
        self._encode_pair = tf.function(self._pair, input_signature=[strings, strings],
                                        autograph=False)

    def __call__(self, texts_a, texts_b=None) -> dict[str, tf.Tensor]:
        """Tokenizes a batch of texts, or of pairs when `texts_b` is given.

        Args:
            texts_a: 1-D string tensor (or list of str) of first segments.
            texts_b: 1-D string tensor of second segments, one per `texts_a`, or None.

        Returns:
            Dict of int32 tensors `[batch, seq]`: `input_ids`, `attention_mask`, `token_type_ids`.

        Raises:
            ValueError: an input is not 1-D, or the batch sizes are known to differ.
            tf.errors.InvalidArgumentError: batch sizes differ at run time.
        """
        texts_a = _string_batch(texts_a, "texts_a")
        if texts_b is None:
            return self._encode_single(texts_a)
        texts_b = _string_batch(texts_b, "texts_b")
        n_a, n_b = texts_a.shape[0], texts_b.shape[0]
        if n_a is not None and n_b is not None and n_a != n_b:
            raise ValueError(f"texts_b has {n_b} texts but texts_a has {n_a}; pairs need one "
                             "second segment per first segment")
        return self._encode_pair(texts_a, texts_b)

    def _single(self, texts_a):
        ids = self._word_ids(texts_a)
        keep = tf.minimum(ids.row_lengths(), self.max_seq_length - _NUM_SPECIALS_SINGLE)
        return self._assemble(ids, keep[tf.newaxis])

    def _pair(self, texts_a, texts_b):
        tf.debugging.assert_equal(
            tf.shape(texts_a)[0], tf.shape(texts_b)[0],
            message="texts_b needs one second segment per text of texts_a")
        # One pass over both segments: the graph is half the size, and so is the first call's wait.
        ids = self._word_ids(tf.concat([texts_a, texts_b], axis=0))
        lengths = tf.reshape(ids.row_lengths(), [2, -1])
        keep_a, keep_b = _longest_first(lengths[0], lengths[1],
                                        self.max_seq_length - _NUM_SPECIALS_PAIR)
        return self._assemble(ids, tf.stack([keep_a, keep_b]))

    def _assemble(self, ids, keep):
        """[CLS] a [SEP] (b [SEP]), padded.

        Args:
            ids: ragged `[segments * batch, None]` WordPiece ids, all first segments first.
            keep: `[segments, batch]`, how many leading ids of each row survive truncation.

        Scattering into a dense tensor takes a few dozen ops where tensorflow_text's
        combine_segments plus ragged padding take hundreds, and graph size is what makes the
        first call slow.
        """
        spec = self._spec
        num_segments = keep.shape[0]
        batch = tf.shape(keep, out_type=tf.int64)[1]
        # Segment k starts after [CLS] and the earlier segments with their [SEP]s.
        starts = 1 + tf.cumsum(keep + 1, axis=0, exclusive=True)
        seps = starts + keep
        length = seps[-1] + 1
        row = ids.value_rowids()
        offset = tf.range(tf.size(ids.values, out_type=tf.int64)) - tf.gather(ids.row_starts(), row)
        kept = offset < tf.gather(tf.reshape(keep, [-1]), row)
        rows = tf.range(batch)
        indices = tf.stack([
            tf.concat([tf.boolean_mask(row % tf.maximum(batch, 1), kept),
                       tf.tile(rows, [num_segments + 1])], axis=0),
            tf.concat([tf.boolean_mask(tf.gather(tf.reshape(starts, [-1]), row) + offset, kept),
                       tf.zeros_like(rows), tf.reshape(seps, [-1])], axis=0),
        ], axis=1)
        updates = tf.concat([
            tf.boolean_mask(ids.values, kept),
            tf.fill([batch], tf.constant(spec.cls_id, tf.int32)),
            tf.fill([num_segments * batch], tf.constant(spec.sep_id, tf.int32)),
        ], axis=0)
        if self.padding == "max_length":
            width = tf.constant(self.max_seq_length, tf.int64)
        else:
            width = tf.reduce_max(tf.concat([length, tf.zeros([1], tf.int64)], axis=0))
        input_ids = tf.scatter_nd(indices, updates, tf.stack([batch, width]))
        position = tf.range(width)[tf.newaxis, :]
        in_row = position < length[:, tf.newaxis]
        if spec.pad_id != 0:
            input_ids = tf.where(in_row, input_ids, tf.constant(spec.pad_id, tf.int32))
        if num_segments == 1:
            token_type_ids = tf.zeros_like(input_ids)
        else:
            token_type_ids = tf.cast(in_row & (position >= starts[1][:, tf.newaxis]), tf.int32)
        features = {"input_ids": input_ids, "attention_mask": tf.cast(in_row, tf.int32),
                    "token_type_ids": token_type_ids}
        static_width = self.max_seq_length if self.padding == "max_length" else None
        for value in features.values():
            value.set_shape([None, static_width])
        return features

    def _word_ids(self, texts):
        """Ragged `[batch, tokens]` WordPiece ids of each text, without specials."""
        spec = self._spec
        if spec.nul_stand_in is not None:
            # tensorflow_text's regex_split stops reading a string at NUL. clean_text deletes NUL
            # anyway, so another character it deletes takes its place.
            texts = tf.strings.regex_replace(texts, r"\x00", spec.nul_stand_in)
        if spec.added_pattern is None:
            pieces = tf.RaggedTensor.from_tensor(tf.expand_dims(texts, 1))
        else:
            pieces = tf_text.regex_split(texts, spec.added_pattern, spec.added_pattern)
        flat = pieces.flat_values
        if spec.added_pattern is None:
            words = self._words(self._normalize(flat))
        else:
            is_added = tf.strings.regex_full_match(flat, spec.added_pattern)
            # An added token is one word of its own, untouched by normalization; text pieces get
            # no words from that branch and added tokens none from the other, so a row-wise concat
            # keeps each piece's words in place.
            text_words = self._words(self._normalize(tf.where(is_added, "", flat)))
            added_words = tf.RaggedTensor.from_row_lengths(
                tf.boolean_mask(flat, is_added), tf.cast(is_added, tf.int64), validate=False)
            words = tf.concat([text_words, added_words], axis=1)
        words = words.with_flat_values(tf.where(
            tf.strings.length(words.flat_values, unit="UTF8_CHAR") > spec.max_chars_per_word,
            spec.unk_token, words.flat_values))
        word_ids = self._wordpiece.tokenize(words).merge_dims(1, 2)
        return tf.RaggedTensor.from_row_splits(word_ids, pieces.row_splits,
                                              validate=False).merge_dims(1, 2)

    def _normalize(self, texts):
        """`tokenizers`' BertNormalizer on a 1-D string tensor."""
        tables = self._spec.tables
        if tables.removed:
            texts = tf.strings.regex_replace(texts, tables.removed, "")
        if tables.to_space:
            texts = tf.strings.regex_replace(texts, tables.to_space, " ")
        if tables.cjk:
            texts = tf.strings.regex_replace(texts, f"({tables.cjk})", r" \1 ")
        if tables.strip_accents:
            texts = tf_text.normalize_utf8(texts, "NFD")
            if tables.marks:
                texts = tf.strings.regex_replace(texts, tables.marks, "")
        if tables.lowercase:
            for char, lowered in tables.lower_multi:
                texts = tf.strings.regex_replace(texts, _re2_literal(char), lowered)
            if tables.lower_keys.size:
                texts = self._lower_single_chars(texts)
        return texts

    def _lower_single_chars(self, texts):
        chars = tf.strings.unicode_decode(texts, "UTF-8")
        flat = chars.flat_values
        last = tf.size(self._lower_keys) - 1
        index = tf.minimum(tf.searchsorted(self._lower_keys, flat), last)
        hit = tf.equal(tf.gather(self._lower_keys, index), flat)
        lowered = tf.where(hit, tf.gather(self._lower_values, index), flat)
        return tf.strings.unicode_encode(chars.with_flat_values(lowered), "UTF-8")

    def _words(self, texts):
        """`tokenizers`' BertPreTokenizer: ragged `[len(texts), words]` strings."""
        tables = self._spec.tables
        return tf_text.regex_split(texts, tables.split_pattern, tables.punctuation)


# ----------------------------------------------------------------------------------------------
# Host tokenizer construction


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None


def _lower_case_from_files(directory: Path) -> bool:
    config_file = directory / "tokenizer_config.json"
    if config_file.is_file():
        value = _read_json(config_file).get("do_lower_case")
        if isinstance(value, bool):
            return value
    tokenizer_file = directory / "tokenizer.json"
    if tokenizer_file.is_file():
        normalizer = _read_json(tokenizer_file).get("normalizer") or {}
        if isinstance(normalizer.get("lowercase"), bool):
            return normalizer["lowercase"]
    # Google checkpoints say it only in their name (uncased_L-12_H-768_A-12). In the hub cache the
    # directory is a commit hash, and the repository's folder carries the name.
    name = directory.name
    if directory.parent.name == "snapshots":
        name = directory.parent.parent.name
    return "uncased" in name.lower()


def _max_positions(directory: Path) -> int:
    for name in ("config.json", "bert_config.json"):
        if (directory / name).is_file():
            value = _read_json(directory / name).get("max_position_embeddings",
                                                     DEFAULT_MAX_POSITIONS)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise CheckpointError(f"{directory / name}: max_position_embeddings must be a "
                                      f"positive integer, got {value!r}")
            return value
    return DEFAULT_MAX_POSITIONS


def _read_vocab(vocab_file: Path) -> list[str]:
    with open(vocab_file, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def _hf_tokenizer(directory: Path, vocab_file: Path, do_lower_case: bool):
    from tokenizers import normalizers
    from transformers import BertTokenizerFast

    if (directory / "tokenizer.json").is_file():
        tokenizer = BertTokenizerFast.from_pretrained(str(directory), local_files_only=True)
        state = json.loads(tokenizer.backend_tokenizer.to_str()).get("normalizer") or {}
        if state.get("type") == "BertNormalizer" and state.get("lowercase") != do_lower_case:
            # An explicit do_lower_case overrides tokenizer.json, as in older transformers.
            tokenizer.backend_tokenizer.normalizer = normalizers.BertNormalizer(
                clean_text=state.get("clean_text", True),
                handle_chinese_chars=state.get("handle_chinese_chars", True),
                strip_accents=state.get("strip_accents"), lowercase=do_lower_case)
        return tokenizer
    vocab = {token: index for index, token in enumerate(_read_vocab(vocab_file))}
    return BertTokenizerFast(vocab=vocab, do_lower_case=do_lower_case)


# ----------------------------------------------------------------------------------------------
# Argument checks shared by both tokenizers


def _check_max_seq_length(max_seq_length, max_positions: int) -> None:
    if not isinstance(max_seq_length, (int, np.integer)) or isinstance(max_seq_length, bool):
        raise TypeError(f"max_seq_length must be an int, got {max_seq_length!r}")
    if max_seq_length < _NUM_SPECIALS_PAIR:
        raise ValueError(f"max_seq_length {max_seq_length} leaves no room for text: [CLS] and two "
                         f"[SEP] take {_NUM_SPECIALS_PAIR} positions")
    if max_seq_length > max_positions:
        raise ValueError(f"max_seq_length {max_seq_length} is longer than the checkpoint's "
                         f"{max_positions} position embeddings (max_position_embeddings)")


def _check_padding(padding) -> None:
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")


def _text_list(texts, name: str) -> list[str]:
    if isinstance(texts, (str, bytes)):
        texts = [texts]
    out = []
    for i, text in enumerate(texts):
        if isinstance(text, bytes):
            text = text.decode("utf-8")  # tf.data and numpy string arrays hold UTF-8 bytes
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}] is {type(text).__name__}, not str")
        out.append(text)
    return out


def _string_batch(texts, name: str) -> tf.Tensor:
    texts = tf.convert_to_tensor(texts, dtype=tf.string)
    if texts.shape.rank is not None and texts.shape.rank != 1:
        raise ValueError(f"{name} must be a 1-D batch of strings, got shape {texts.shape}")
    return texts


# ----------------------------------------------------------------------------------------------
# Graph ops


def _longest_first(len_a, len_b, budget: int):
    """Lengths kept per pair, as `tokenizers`' LongestFirst truncation computes them."""
    budget = tf.constant(budget, len_a.dtype)
    short, long = tf.minimum(len_a, len_b), tf.maximum(len_a, len_b)
    long_keep = tf.where(short > budget, short, tf.maximum(short, budget - short))
    both_cut = short + long_keep > budget
    short_keep = tf.where(both_cut, budget // 2, short)
    long_keep = tf.where(both_cut, budget // 2 + budget % 2, long_keep)
    # The longer segment gets the larger share; on a tie `tokenizers` treats b as the longer.
    a_longer = len_a > len_b
    keep_a = tf.where(a_longer, long_keep, short_keep)
    keep_b = tf.where(a_longer, short_keep, long_keep)
    fits = len_a + len_b <= budget
    return tf.where(fits, len_a, keep_a), tf.where(fits, len_b, keep_b)


# ----------------------------------------------------------------------------------------------
# Character tables read off the host tokenizer


@dataclasses.dataclass(frozen=True)
class _CharTables:
    removed: str | None        # RE2 class of characters clean_text deletes
    nul_stand_in: str | None   # a character clean_text deletes other than NUL
    to_space: str | None       # ... that clean_text turns into " "
    cjk: str | None            # ... that get spaces around them
    strip_accents: bool
    marks: str | None          # ... deleted after NFD when stripping accents
    lowercase: bool
    lower_multi: tuple[tuple[str, str], ...]  # characters that lower-case to several
    lower_keys: np.ndarray     # sorted code points that lower-case to one other code point
    lower_values: np.ndarray
    split_pattern: str         # whitespace runs or one punctuation character
    punctuation: str           # RE2 class of characters that are words of their own


@dataclasses.dataclass(frozen=True)
class _GraphSpec:
    vocab: tuple[str, ...]
    unk_token: str
    suffix_indicator: str
    max_chars_per_word: int
    cls_id: int
    sep_id: int
    pad_id: int
    added_pattern: str | None
    nul_stand_in: str | None
    tables: _CharTables


def _graph_spec(tokenizer: BertTokenizer) -> _GraphSpec:
    hf = tokenizer.hf_tokenizer
    state = json.loads(hf.backend_tokenizer.to_str())
    normalizer = state.get("normalizer") or {}
    pre_tokenizer = state.get("pre_tokenizer") or {}
    model = state.get("model") or {}
    where = f"the tokenizer of {tokenizer.directory}"
    if normalizer.get("type") != "BertNormalizer":
        raise ValueError(f"{where} uses a {normalizer.get('type')} normalizer; in_graph reproduces "
                         "only BertNormalizer")
    if pre_tokenizer.get("type") != "BertPreTokenizer":
        raise ValueError(f"{where} uses a {pre_tokenizer.get('type')} pre-tokenizer; in_graph "
                         "reproduces only BertPreTokenizer")
    if model.get("type") != "WordPiece":
        raise ValueError(f"{where} is a {model.get('type')} model; in_graph reproduces only "
                         "WordPiece")

    vocab = _read_vocab(tokenizer.vocab_file)
    host_vocab = hf.get_vocab()
    mismatched = [t for i, t in enumerate(vocab) if host_vocab.get(t) != i]
    if mismatched or len(set(vocab)) != len(vocab):
        raise CheckpointError(f"{tokenizer.vocab_file} disagrees with {where} (e.g. token "
                              f"{(mismatched or ['(duplicate)'])[0]!r}); the graph reads vocab.txt")

    added = []
    for token_id, token in sorted(hf.backend_tokenizer.get_added_tokens_decoder().items()):
        if token.normalized or token.lstrip or token.rstrip or token.single_word:
            raise ValueError(f"{where} has added token {token.content!r} with normalized, lstrip, "
                             "rstrip or single_word set; in_graph does not reproduce those")
        if token_id >= len(vocab) or vocab[token_id] != token.content:
            raise ValueError(f"{where} has added token {token.content!r} (id {token_id}) that is "
                             "not in vocab.txt; in_graph maps tokens through vocab.txt only")
        added.append(token.content)
    # Longest first: RE2 alternation takes the first alternative that matches, `tokenizers` the
    # longest.
    added_pattern = "|".join(_re2_literal(t) for t in sorted(added, key=len, reverse=True)) or None

    strip_accents = normalizer.get("strip_accents")
    tables = _char_tables(
        clean_text=bool(normalizer.get("clean_text", True)),
        handle_chinese_chars=bool(normalizer.get("handle_chinese_chars", True)),
        strip_accents=bool(normalizer.get("lowercase") if strip_accents is None else strip_accents),
        lowercase=bool(normalizer.get("lowercase")))
    return _GraphSpec(
        vocab=tuple(vocab), unk_token=model.get("unk_token", "[UNK]"),
        suffix_indicator=model.get("continuing_subword_prefix", "##"),
        max_chars_per_word=int(model.get("max_input_chars_per_word", 100)),
        cls_id=hf.cls_token_id, sep_id=hf.sep_token_id,
        pad_id=hf.pad_token_id if hf.pad_token_id is not None else 0,
        added_pattern=added_pattern, nul_stand_in=tables.nul_stand_in, tables=tables)


def _re2_literal(text: str) -> str:
    return "".join(c if c.isascii() and c.isalnum() else f"\\x{{{ord(c):X}}}" for c in text)


def _re2_class(ranges: Sequence[tuple[int, int]]) -> str | None:
    """An RE2 character class matching the inclusive code point `ranges`, or None when empty."""
    if not ranges:
        return None
    parts = (f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges)
    return "[" + "".join(parts) + "]"


def _probe_code_points() -> tuple[list[int], dict[int, int]]:
    """Code points probed one by one, and one stand-in per uniform plane with the last code point
    it stands for."""
    probed = [c for plane in _PROBED_PLANES for c in range(plane << 16, (plane + 1) << 16)
              if not 0xD800 <= c <= 0xDFFF]
    # Every plane ends in two noncharacters (U+xFFFE, U+xFFFF), which are not private use.
    probed += [(plane << 16) + last for plane in _UNIFORM_PLANES for last in (0xFFFE, 0xFFFF)]
    stand_ins = {plane << 16: (plane << 16) + 0xFFFD for plane in _UNIFORM_PLANES}
    return probed, stand_ins


@functools.lru_cache(maxsize=8)
def _char_tables(clean_text: bool, handle_chinese_chars: bool, strip_accents: bool,
                 lowercase: bool) -> _CharTables:
    from tokenizers import normalizers, pre_tokenizers

    probed, stand_ins = _probe_code_points()
    code_points = probed + list(stand_ins)
    chars = [chr(c) for c in code_points]
    separator = ord(_PROBE_SEPARATOR)
    # All code points but the separator in one string, so each stage is one call into Rust.
    others = [(c, ch) for c, ch in zip(code_points, chars) if c != separator]
    joined = _PROBE_SEPARATOR.join(ch for _, ch in others)

    def changed_by(**stage) -> dict[int, str]:
        settings = dict(clean_text=False, handle_chinese_chars=False, strip_accents=False,
                        lowercase=False)
        settings.update(stage)
        normalizer = normalizers.BertNormalizer(**settings)
        outputs = normalizer.normalize_str(joined).split(_PROBE_SEPARATOR)
        if len(outputs) != len(others):
            raise RuntimeError("the normalizer probe lost its separators; cannot build tables")
        changed = {c: out for (c, ch), out in zip(others, outputs) if out != ch}
        if normalizer.normalize_str(_PROBE_SEPARATOR) != _PROBE_SEPARATOR:
            changed[separator] = normalizer.normalize_str(_PROBE_SEPARATOR)
        for c in stand_ins:
            # A stand-in may be deleted or spaced but not mapped: the mapping would depend on the
            # code point, and the uniform-plane shortcut would be wrong.
            if changed.get(c, "") not in ("", " "):
                raise RuntimeError(f"{', '.join(stage)} maps U+{c:X} to {changed[c]!r}; cannot "
                                   "build tables")
        return changed

    def ranges(selected: Iterable[int]) -> list[tuple[int, int]]:
        merged: list[list[int]] = []
        for first, last in sorted((c, stand_ins.get(c, c)) for c in selected):
            if merged and merged[-1][1] == first - 1:
                merged[-1][1] = last
            else:
                merged.append([first, last])
        return [(first, last) for first, last in merged]

    removed = to_space = cjk = marks = nul_stand_in = None
    if clean_text:
        changed = changed_by(clean_text=True)
        if any(out not in ("", " ") for out in changed.values()):
            raise RuntimeError("clean_text changed a character into text; cannot build tables")
        deleted = ranges(c for c, out in changed.items() if out == "")
        removed = _re2_class(deleted)
        if deleted and deleted[0][0] == 0:
            nul_stand_in = chr(1 if deleted[0][1] >= 1 else deleted[1][0])
        to_space = _re2_class(ranges(c for c, out in changed.items() if out == " "))
    if handle_chinese_chars:
        changed = changed_by(handle_chinese_chars=True)
        cjk = _re2_class(ranges(c for c, out in changed.items() if out == f" {chr(c)} "))
    if strip_accents:
        changed = changed_by(strip_accents=True)
        marks = _re2_class(ranges(c for c, out in changed.items() if out == ""))
    lower_multi, lower_keys, lower_values = [], [], []
    if lowercase:
        for c, out in sorted(changed_by(lowercase=True).items()):
            if len(out) == 1:
                lower_keys.append(c)
                lower_values.append(ord(out))
            else:
                lower_multi.append((chr(c), out))

    # One pre-tokenizer call over "c0xc1xc2...": a punctuation character comes back as a word at
    # its own position, a whitespace character is in no word, anything else merges with the x's.
    text = "x".join(chars)
    covered = bytearray(len(text))
    punctuation = []
    for _, (start, end) in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(text):
        covered[start:end] = b"\x01" * (end - start)
        if end == start + 1 and start % 2 == 0:
            punctuation.append(code_points[start // 2])
    whitespace = [c for i, c in enumerate(code_points) if not covered[2 * i]]
    punctuation_class = _re2_class(ranges(punctuation))
    whitespace_class = _re2_class(ranges(whitespace))
    split_pattern = "|".join(p for p in (whitespace_class and whitespace_class + "+",
                                         punctuation_class) if p)
    return _CharTables(
        removed=removed, nul_stand_in=nul_stand_in, to_space=to_space, cjk=cjk,
        strip_accents=strip_accents, marks=marks, lowercase=lowercase,
        lower_multi=tuple(lower_multi), lower_keys=np.asarray(lower_keys, np.int32),
        lower_values=np.asarray(lower_values, np.int32), split_pattern=split_pattern,
        punctuation=punctuation_class or "")
