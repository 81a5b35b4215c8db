"""GLUE examples from TSV files or `tensorflow_datasets`, tokenized, as `tf.data` pipelines.

The path of a GLUE split to a training batch:

1. `read_glue_tsv` (the GLUE download's files) or `read_tfds_examples` (`glue/*` in TFDS) gives
   `Example`s: texts, and the label as a class id into `task.labels` (a float for STS-B).
2. `encode_examples` tokenizes them into `EncodedExamples`: unpadded rows stored flat, so a
   400k-example task costs its tokens and nothing per row.
3. `make_dataset` turns those into batches of `({"input_ids", "attention_mask",
   "token_type_ids"}, labels)`, padded per batch, per length bucket or to a fixed length.

Example:
>>> from adapter_bert import load_tokenizer
>>> examples = read_glue_tsv("mrpc", "../shared/data/glue", "dev")
>>> encoded = encode_examples(load_tokenizer("all-minilm-l6-v2"), examples, max_seq_length=128)
>>> dataset = make_dataset(encoded, label_array("mrpc", examples), batch_size=32)
>>> inputs, labels = next(iter(dataset))
>>> inputs["input_ids"].shape[0], labels.dtype.name
(32, 'int32')
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from adapter_bert.glue.tasks import GlueTask, get_task
from adapter_bert.io_utils import read_text

# Long texts are legal data (the tokenizer truncates them); csv's default limit is 131,072.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

FEATURE_NAMES = ("input_ids", "attention_mask", "token_type_ids")
PADDINGS = ("dynamic", "max_length")
# Rows tokenized per tokenizer call: large enough to amortise the call, small enough that the
# padded chunk (chunk x longest row) stays a few megabytes even for QQP's 400k pairs.
DEFAULT_CHUNK_SIZE = 1000
# Labels of examples that have none (test splits), so every batch has the same structure.
NO_LABEL = -1


@dataclasses.dataclass
class Example:
    """One GLUE example.

    Attributes:
        guid: a unique id; for test splits the file's index column, which submissions need.
        text_a: the first (or only) text.
        text_b: the second text, or None for single-sentence tasks.
        label: the class id into `task.labels`, the float score for STS-B, or None (test).

    Example:
    >>> Example("dev-0", "A cat.", "A dog.", 1).label
    1
    """

    guid: str
    text_a: str
    text_b: str | None
    label: int | float | None


def _as_task(task: GlueTask | str) -> GlueTask:
    return task if isinstance(task, GlueTask) else get_task(task)


# ----------------------------------------------------------------------------------------------
# GLUE TSV files


def find_tsv(task: GlueTask | str, data_dir: str | os.PathLike, split: str) -> Path:
    """The TSV file of one split, under the GLUE root or the task's own directory.

    Args:
        task: a `GlueTask` or task name.
        data_dir: the GLUE data root (holding `MRPC/`, `SST-2/`, ...) or the task's directory
            itself when it is named like the task ("MRPC", "mrpc", "SST-2", "sst2").
        split: "train", "dev", "test" (MNLI also "dev_mismatched", "test_mismatched").

    Returns:
        The path of the existing file.

    Raises:
        FileNotFoundError: no candidate file exists.

    Example:
    >>> find_tsv("mrpc", "../shared/data/glue", "dev").name
    'dev.tsv'
    """
    task = _as_task(task)
    names = task.file_names(split)
    data_dir = Path(data_dir)
    roots = [data_dir / task.dir_name]
    # A directory given directly is accepted only when its name says which task it is, so that a
    # wrong --data_dir cannot silently feed one task's file to another task.
    if data_dir.name.lower() in (task.dir_name.lower(), task.name):
        roots.append(data_dir)
    candidates = [root / name for root in roots for name in names]
    for path in candidates:
        if path.is_file():
            return path
    expected = ", ".join(name for split_names in task.files.values() for name in split_names)
    raise FileNotFoundError(
        f"no {task.name} {split} file: tried {', '.join(map(str, candidates))}; a GLUE "
        f"{task.dir_name}/ directory holds {expected}")


def read_glue_tsv(task: GlueTask | str, data_dir: str | os.PathLike, split: str) -> list[Example]:
    """Reads one split of a GLUE task from the TSV files of the GLUE download.

    Files are read as UTF-8 with an optional BOM (MRPC's headers start with one) and with CSV
    quoting disabled: many sentences begin with a bare `"`, and quote handling would merge rows.
    Columns are found by name in the header row; CoLA's headerless train/dev files use the
    registry's column names.

    Args:
        task: a `GlueTask` or task name.
        data_dir: see `find_tsv`.
        split: a split of the task (`task.splits`).

    Returns:
        The examples in file order. Train/dev guids are "<split>-<row>"; test guids are the
        file's index column.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the split is unknown, the file is empty, a column is missing, a row has the
            wrong number of fields, or a label is not one of the task's labels.

    Example:
    >>> examples = read_glue_tsv("mrpc", "../shared/data/glue", "dev")
    >>> len(examples), examples[0].label
    (408, 1)
    """
    task = _as_task(task)
    path = find_tsv(task, data_dir, split)
    with_labels = task.has_labels(split)
    with io.StringIO(read_text(path, "GLUE file"), newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if task.has_header(split):
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path} is empty; expected a header row")
        else:
            header = list(task.headerless_columns)
        columns = _column_positions(task, header, with_labels, path)
        examples = []
        for row in reader:
            if not row:  # a blank line (e.g. at the end of a hand-edited file)
                continue
            where = f"{path}, line {reader.line_num}"
            if len(row) != len(header):
                raise ValueError(f"{where}: {len(row)} tab-separated fields, expected "
                                 f"{len(header)} ({', '.join(header)})")
            examples.append(_example_from_row(task, split, row, columns, len(examples), where))
    return examples


def _column_positions(task: GlueTask, header: list[str], with_labels: bool,
                      path: Path) -> dict[str, int]:
    wanted = {"text_a": task.text_a, "text_b": task.text_b}
    wanted.update({"label": task.label} if with_labels else {"index": task.index})
    positions = {}
    for role, column in wanted.items():
        if column is None:
            continue
        if column not in header:
            raise ValueError(f"{path} has no column {column!r} ({task.name} {role}); its columns "
                             f"are: {', '.join(header)}")
        positions[role] = header.index(column)
    return positions


def _example_from_row(task: GlueTask, split: str, row: list[str], columns: dict[str, int],
                      number: int, where: str) -> Example:
    text_b = row[columns["text_b"]] if "text_b" in columns else None
    if "index" in columns:
        return Example(row[columns["index"]], row[columns["text_a"]], text_b, None)
    label = _parse_label(task, row[columns["label"]], where)
    return Example(f"{split}-{number}", row[columns["text_a"]], text_b, label)


def _parse_label(task: GlueTask, value: str, where: str) -> int | float:
    if task.is_regression:
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{where}: label {value!r} is not a number") from None
    try:
        return task.labels.index(value)
    except ValueError:
        known = ", ".join(task.labels)
        raise ValueError(f"{where}: label {value!r} is not one of {known}") from None


# ----------------------------------------------------------------------------------------------
# tensorflow_datasets


def read_tfds_examples(task: GlueTask | str, split: str,
                       data_dir: str | os.PathLike | None = None) -> list[Example]:
    """Reads one split of a GLUE task from `tensorflow_datasets` (`glue/<task>`).

    TFDS downloads and prepares the data on first use (into `data_dir`, default
    `~/tensorflow_datasets`). Its MNLI/AX class ids are ordered differently from the TSV files;
    they are mapped to `task.labels` by name.

    Args:
        task: a `GlueTask` or task name.
        split: the split in this package's names ("dev", "test_mismatched", ...).
        data_dir: the TFDS data directory, or None for TFDS's default.

    Returns:
        The examples, ordered by TFDS's `idx` (the row of the original file). Train/dev guids
        are "<split>-<idx>"; test guids are the idx, and test labels are None.

    Raises:
        ValueError: the split is unknown.
        FileNotFoundError: TFDS has no copy and cannot download one (offline, say).

    Example:
    >>> import tensorflow_datasets as tfds
    >>> with tfds.testing.mock_data(num_examples=4):
    ...     examples = read_tfds_examples("mrpc", "dev")
    >>> len(examples), isinstance(examples[0].text_b, str)
    (4, True)
    """
    import tensorflow_datasets as tfds  # heavy, and only this reader needs it

    task = _as_task(task)
    tfds_split = task.tfds_split(split)
    with_labels = task.has_labels(split)
    try:
        dataset = tfds.load(task.tfds_name, split=tfds_split, data_dir=data_dir,
                            shuffle_files=False)
    except Exception as e:  # noqa: BLE001  (download, cache and dependency failures alike)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise FileNotFoundError(
            f"GLUE {task.name} is not in the TFDS cache ({data_dir or '~/tensorflow_datasets'}) "
            f"and cannot be downloaded ({type(e).__name__}: {reason}): pass --data_dir with the "
            "GLUE TSV files") from None
    key_a, key_b = task.tfds_text
    to_label = _tfds_label_converter(task)
    rows = []
    for features in tfds.as_numpy(dataset):
        idx = int(features["idx"])
        text_b = _text(features[key_b]) if key_b else None
        if with_labels:
            example = Example(f"{split}-{idx}", _text(features[key_a]), text_b,
                              to_label(features["label"]))
        else:
            example = Example(str(idx), _text(features[key_a]), text_b, None)
        rows.append((idx, example))
    # TFDS stores examples in hashed order; sorting restores the order of the GLUE files.
    rows.sort(key=lambda item: item[0])
    return [example for _, example in rows]


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _tfds_label_converter(task: GlueTask):
    if task.is_regression:
        return float
    class_ids = [task.labels.index(name) for name in task.tfds_labels]

    def to_label(value) -> int:
        value = int(value)
        if not 0 <= value < len(class_ids):
            raise ValueError(f"{task.tfds_name}: label {value} is not a class id "
                             f"(0..{len(class_ids) - 1})")
        return class_ids[value]

    return to_label


def label_array(task: GlueTask | str, examples: Sequence[Example]) -> np.ndarray:
    """The examples' labels as the array `make_dataset` takes.

    Args:
        task: a `GlueTask` or task name (decides int32 classes or float32 scores).
        examples: the examples.

    Returns:
        int32 class ids (float32 scores for STS-B), with -1 where an example has no label.

    Example:
    >>> label_array("stsb", [Example("0", "a", "b", 3.2), Example("1", "c", "d", None)])
    array([ 3.2, -1. ], dtype=float32)
    """
    task = _as_task(task)
    dtype = np.float32 if task.is_regression else np.int32
    return np.asarray([NO_LABEL if e.label is None else e.label for e in examples], dtype=dtype)


# ----------------------------------------------------------------------------------------------
# Tokenization


@dataclasses.dataclass(frozen=True)
class EncodedExamples:
    """Tokenized examples without padding, rows stored back to back.

    The attention mask is not stored: an unpadded row attends to all its tokens, so
    `make_dataset` makes it from the row length.

    Attributes:
        input_ids: int32 `[total_tokens]`, every row's token ids, concatenated.
        token_type_ids: int32 `[total_tokens]`, the segment ids, aligned with `input_ids`.
        row_lengths: int64 `[num_examples]`, the tokens of each row.

    Example:
    >>> encoded = EncodedExamples.from_rows([[101, 7, 102], [101, 102]])
    >>> len(encoded), encoded.row(1)["input_ids"].tolist(), encoded.max_length
    (2, [101, 102], 3)
    """

    input_ids: np.ndarray
    token_type_ids: np.ndarray
    row_lengths: np.ndarray

    def __post_init__(self):
        for name in ("input_ids", "token_type_ids"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), np.int32).reshape(-1))
        lengths = np.asarray(self.row_lengths, np.int64).reshape(-1)
        object.__setattr__(self, "row_lengths", lengths)
        if len(self.token_type_ids) != len(self.input_ids):
            raise ValueError(f"token_type_ids has {len(self.token_type_ids)} tokens but input_ids "
                             f"has {len(self.input_ids)}")
        if (lengths < 0).any() or lengths.sum() != len(self.input_ids):
            raise ValueError(f"row_lengths add up to {lengths.sum()} tokens but input_ids has "
                             f"{len(self.input_ids)}")

    @classmethod
    def from_rows(cls, input_ids: Sequence[Sequence[int]],
                  token_type_ids: Sequence[Sequence[int]] | None = None) -> EncodedExamples:
        """Builds from per-row token id lists (segment ids default to 0)."""
        rows = [np.asarray(row, np.int32).reshape(-1) for row in input_ids]
        types = ([np.zeros_like(row) for row in rows] if token_type_ids is None
                 else [np.asarray(row, np.int32).reshape(-1) for row in token_type_ids])
        if len(types) != len(rows) or any(len(t) != len(r) for t, r in zip(types, rows)):
            raise ValueError("token_type_ids must have one row of the same length per input_ids "
                             "row")
        if not rows:
            return cls(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int64))
        return cls(np.concatenate(rows), np.concatenate(types),
                   np.asarray([len(row) for row in rows], np.int64))

    def __len__(self) -> int:
        return len(self.row_lengths)

    @property
    def row_splits(self) -> np.ndarray:
        """int64 `[num_examples + 1]`: row i is `input_ids[row_splits[i]:row_splits[i + 1]]`."""
        return np.concatenate([[0], np.cumsum(self.row_lengths)]).astype(np.int64)

    @property
    def max_length(self) -> int:
        """The longest row (0 when empty)."""
        return int(self.row_lengths.max()) if len(self) else 0

    def row(self, i: int) -> dict[str, np.ndarray]:
        """Row `i` as the three BERT inputs, unpadded."""
        start, end = self.row_splits[i], self.row_splits[i + 1]
        ids = self.input_ids[start:end]
        return {"input_ids": ids, "attention_mask": np.ones_like(ids),
                "token_type_ids": self.token_type_ids[start:end]}


def encode_examples(tokenizer, examples: Sequence[Example], max_seq_length: int,
                    chunk_size: int = DEFAULT_CHUNK_SIZE) -> EncodedExamples:
    """Tokenizes examples (pairs when they have `text_b`) without padding.

    Args:
        tokenizer: a `BertTokenizer` from `adapter_bert.load_tokenizer` (anything with its
            `encode(texts_a, texts_b, max_seq_length, padding)`).
        examples: examples that all have `text_b`, or none does.
        max_seq_length: the longest row, [CLS]/[SEP] included; longer inputs are truncated.
        chunk_size: examples per tokenizer call.

    Returns:
        `EncodedExamples`, in the order of `examples`.

    Raises:
        ValueError: some examples have `text_b` and others do not, or `chunk_size` < 1.

    Example:
    >>> from adapter_bert import load_tokenizer
    >>> tok = load_tokenizer("all-minilm-l6-v2")
    >>> encoded = encode_examples(tok, [Example("0", "A cat.", "A dog sat.", 1)], 16)
    >>> encoded.row(0)["token_type_ids"].tolist()
    [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    pairs = {example.text_b is not None for example in examples}
    if len(pairs) > 1:
        raise ValueError("some examples have text_b and others do not; encode pairs and single "
                         "texts separately")
    is_pair = pairs == {True}
    ids, types, lengths = [], [], []
    for start in range(0, len(examples), chunk_size):
        chunk = examples[start:start + chunk_size]
        features = tokenizer.encode([e.text_a for e in chunk],
                                    [e.text_b for e in chunk] if is_pair else None,
                                    max_seq_length=max_seq_length, padding="longest")
        # Padding is on the right, so the masked-in positions, read row by row, are the rows.
        mask = features["attention_mask"].astype(bool)
        ids.append(features["input_ids"][mask])
        types.append(features["token_type_ids"][mask])
        lengths.append(mask.sum(axis=1))
    if not ids:
        return EncodedExamples.from_rows([])
    return EncodedExamples(np.concatenate(ids), np.concatenate(types), np.concatenate(lengths))


# ----------------------------------------------------------------------------------------------
# tf.data


def make_dataset(encoded: EncodedExamples, labels: Sequence | np.ndarray | None, batch_size: int,
                 shuffle: bool = False, seed: int = 0, drop_remainder: bool = False,
                 padding: str = "dynamic", max_seq_length: int = 128,
                 bucket_boundaries: Sequence[int] | None = None,
                 pad_to_bucket_boundary: bool = False) -> tf.data.Dataset:
    """Batches of BERT inputs and labels.

    Padding choices:

    * `padding="dynamic"`: each batch is padded to its longest row (least compute on CPU/GPU).
    * `bucket_boundaries=[b0, b1, ...]`: rows are grouped by length, bucket i holding rows of
      length <= b_i (and > b_{i-1}); rows longer than the last boundary form one more bucket.
      Each batch comes from one bucket and is padded to its longest row or, with
      `pad_to_bucket_boundary=True`, to the bucket's boundary, so only `len(boundaries)` shapes
      occur (what XLA/TPU compilation needs). Each bucket ends with a partial batch unless
      `drop_remainder`.
    * `padding="max_length"`: every batch is `max_seq_length` wide; with `drop_remainder=True`
      all shapes are static.

    Args:
        encoded: the tokenized examples.
        labels: one label per example (ints: int32 class ids; floats: float32 scores), or None
            for unlabelled data, which gets -1 labels so batches keep the same structure.
        batch_size: examples per batch.
        shuffle: shuffle the examples (again every epoch, the same sequence for the same `seed`).
        seed: the shuffle seed.
        drop_remainder: drop the last partial batch (of each bucket, when bucketing).
        padding: "dynamic" or "max_length".
        max_seq_length: the width of "max_length" batches.
        bucket_boundaries: increasing row lengths that end each bucket, or None.
        pad_to_bucket_boundary: pad bucketed batches to the boundary, not the longest row.

    Returns:
        A `tf.data.Dataset` of `({"input_ids", "attention_mask", "token_type_ids"}, labels)`,
        int32 `[batch, seq]` inputs padded with 0 on the right.

    Raises:
        ValueError: a bad argument, or rows longer than a fixed width they must be padded to.

    Example:
    >>> encoded = EncodedExamples.from_rows([[101, 7, 102], [101, 102], [101, 8, 9, 102]])
    >>> dataset = make_dataset(encoded, [0, 1, 1], batch_size=2)
    >>> [tuple(x["input_ids"].shape) for x, _ in dataset]
    [(2, 3), (1, 4)]
    """
    if not isinstance(encoded, EncodedExamples):
        raise ValueError(f"encoded must be EncodedExamples (from encode_examples), got "
                         f"{type(encoded).__name__}")
    _check_positive_int(batch_size, "batch_size")
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
    label_values = _label_values(labels, len(encoded))
    boundaries = _check_buckets(bucket_boundaries, padding, pad_to_bucket_boundary, encoded)
    if padding == "max_length":
        _check_positive_int(max_seq_length, "max_seq_length")
        if encoded.max_length > max_seq_length:
            raise ValueError(f"a row has {encoded.max_length} tokens, more than max_seq_length "
                             f"{max_seq_length}; encode with the same max_seq_length")

    input_ids = tf.constant(encoded.input_ids)
    token_type_ids = tf.constant(encoded.token_type_ids)
    splits = tf.constant(encoded.row_splits)
    label_tensor = tf.constant(label_values)

    def example(i):
        ids = input_ids[splits[i]:splits[i + 1]]
        return ({"input_ids": ids, "attention_mask": tf.ones_like(ids),
                 "token_type_ids": token_type_ids[splits[i]:splits[i + 1]]}, label_tensor[i])

    # Shuffling indices rather than rows keeps the shuffle buffer at 8 bytes an example.
    dataset = tf.data.Dataset.range(len(encoded))
    if shuffle:
        dataset = dataset.shuffle(max(len(encoded), 1), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(example, num_parallel_calls=tf.data.AUTOTUNE)
    if boundaries:
        dataset = dataset.bucket_by_sequence_length(
            lambda inputs, label: tf.shape(inputs["input_ids"])[0],
            # tf.data's boundaries are exclusive upper bounds; ours are the longest row allowed.
            bucket_boundaries=[b + 1 for b in boundaries],
            bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
            pad_to_bucket_boundary=pad_to_bucket_boundary, drop_remainder=drop_remainder)
    else:
        width = max_seq_length if padding == "max_length" else None
        dataset = dataset.padded_batch(
            batch_size, padded_shapes=({name: [width] for name in FEATURE_NAMES}, []),
            drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)


def num_batches(num_examples: int, batch_size: int, drop_remainder: bool = False) -> int:
    """Batches per epoch of an unbucketed `make_dataset` (bucketing adds up to one partial batch
    per extra bucket, or drops that many with `drop_remainder`).

    Example:
    >>> num_batches(408, 32), num_batches(408, 32, drop_remainder=True)
    (13, 12)
    """
    _check_positive_int(batch_size, "batch_size")
    if drop_remainder:
        return num_examples // batch_size
    return math.ceil(num_examples / batch_size)


def _check_positive_int(value, name: str) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _label_values(labels, count: int) -> np.ndarray:
    if labels is None:
        return np.full(count, NO_LABEL, np.int32)
    values = np.asarray(labels)
    if values.shape != (count,):
        raise ValueError(f"labels has shape {values.shape}, expected ({count},): one per example")
    if values.dtype.kind == "f":
        return values.astype(np.float32)
    if values.dtype.kind in "iu":
        return values.astype(np.int32)
    raise ValueError(f"labels must be int class ids or float scores, got dtype {values.dtype}")


def _check_buckets(boundaries, padding: str, pad_to_boundary: bool,
                   encoded: EncodedExamples) -> list[int]:
    if boundaries is None:
        if pad_to_boundary:
            raise ValueError("pad_to_bucket_boundary=True needs bucket_boundaries")
        return []
    boundaries = list(boundaries)
    if padding != "dynamic":
        raise ValueError(f"bucket_boundaries pad per bucket; they cannot be combined with "
                         f"padding={padding!r}")
    if not boundaries or any(not isinstance(b, (int, np.integer)) or b < 1 for b in boundaries):
        raise ValueError(f"bucket_boundaries must be positive ints, got {boundaries!r}")
    if any(a >= b for a, b in zip(boundaries, boundaries[1:])):
        raise ValueError(f"bucket_boundaries must increase strictly, got {boundaries!r}")
    if pad_to_boundary and encoded.max_length > boundaries[-1]:
        raise ValueError(f"a row has {encoded.max_length} tokens, more than the last bucket "
                         f"boundary {boundaries[-1]}; pad_to_bucket_boundary needs it to be the "
                         "longest row allowed (e.g. max_seq_length)")
    return [int(b) for b in boundaries]
