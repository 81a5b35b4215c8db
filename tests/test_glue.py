"""The GLUE layer: task registry, TSV/TFDS readers, tf.data batching, metrics, submissions.

The file formats below are written out independently of `adapter_bert.glue.tasks` (from the GLUE
download script's output), so the registry is checked against them rather than against itself.
"""

import csv
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from scipy import stats  # noqa: E402
from sklearn import metrics as sk_metrics  # noqa: E402

from adapter_bert.glue import (TASKS, EncodedExamples, Example, compute_metrics,  # noqa: E402
                               encode_examples, find_tsv, get_task, label_array, make_dataset,
                               num_batches, read_glue_tsv, read_tfds_examples, write_submission)

# ----------------------------------------------------------------------------------------------
# The GLUE file formats, as the download script writes them

_MNLI_PREFIX = ("index promptID pairID genre sentence1_binary_parse sentence2_binary_parse "
                "sentence1_parse sentence2_parse sentence1 sentence2").split()
_PAIR = "index sentence1 sentence2".split()
_STSB = "index genre filename year old_index source1 source2 sentence1 sentence2".split()
_MRPC_TEXTS = ["#1 ID", "#2 ID", "#1 String", "#2 String"]

# task -> split -> (file name, header or None, text_a column, text_b column, label column)
FORMATS = {
    "cola": {"train": ("train.tsv", None, 3, None, 1), "dev": ("dev.tsv", None, 3, None, 1),
             "test": ("test.tsv", ["index", "sentence"], "sentence", None, None)},
    "sst2": {"train": ("train.tsv", ["sentence", "label"], "sentence", None, "label"),
             "dev": ("dev.tsv", ["sentence", "label"], "sentence", None, "label"),
             "test": ("test.tsv", ["index", "sentence"], "sentence", None, None)},
    "mrpc": {s: (f"{s}.tsv", ["Quality"] + _MRPC_TEXTS, "#1 String", "#2 String", "Quality")
             for s in ("train", "dev")}
    | {"test": ("test.tsv", ["index"] + _MRPC_TEXTS, "#1 String", "#2 String", None)},
    "stsb": {s: (f"{s}.tsv", _STSB + ["score"], "sentence1", "sentence2", "score")
             for s in ("train", "dev")}
    | {"test": ("test.tsv", _STSB, "sentence1", "sentence2", None)},
    "qqp": {s: (f"{s}.tsv", "id qid1 qid2 question1 question2 is_duplicate".split(), "question1",
                "question2", "is_duplicate") for s in ("train", "dev")}
    | {"test": ("test.tsv", ["id", "question1", "question2"], "question1", "question2", None)},
    "mnli": {"train": ("train.tsv", _MNLI_PREFIX + ["label1", "gold_label"], "sentence1",
                       "sentence2", "gold_label")}
    | {split: (f"{name}.tsv", _MNLI_PREFIX + [f"label{i}" for i in range(1, 6)] + ["gold_label"],
               "sentence1", "sentence2", "gold_label")
       for split, name in (("dev", "dev_matched"), ("dev_mismatched", "dev_mismatched"))}
    | {split: (f"{name}.tsv", _MNLI_PREFIX, "sentence1", "sentence2", None)
       for split, name in (("test", "test_matched"), ("test_mismatched", "test_mismatched"))},
    "qnli": {s: (f"{s}.tsv", ["index", "question", "sentence", "label"], "question", "sentence",
                 "label") for s in ("train", "dev")}
    | {"test": ("test.tsv", ["index", "question", "sentence"], "question", "sentence", None)},
    "rte": {s: (f"{s}.tsv", _PAIR + ["label"], "sentence1", "sentence2", "label")
            for s in ("train", "dev")}
    | {"test": ("test.tsv", _PAIR, "sentence1", "sentence2", None)},
    "ax": {"test": ("diagnostic.tsv", _PAIR, "sentence1", "sentence2", None)},
}
FORMATS["wnli"] = FORMATS["rte"]
NLI3 = ("contradiction", "entailment", "neutral")
LABELS = {"cola": ("0", "1"), "sst2": ("0", "1"), "mrpc": ("0", "1"), "stsb": None,
          "qqp": ("0", "1"), "mnli": NLI3, "qnli": ("entailment", "not_entailment"),
          "rte": ("entailment", "not_entailment"), "wnli": ("0", "1"), "ax": NLI3}
DIRS = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP",
        "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI", "ax": "diagnostic"}
SUBMISSIONS = {"cola": {"test": "CoLA.tsv"}, "sst2": {"test": "SST-2.tsv"},
               "mrpc": {"test": "MRPC.tsv"}, "stsb": {"test": "STS-B.tsv"},
               "qqp": {"test": "QQP.tsv"}, "mnli": {"test": "MNLI-m.tsv",
                                                    "test_mismatched": "MNLI-mm.tsv"},
               "qnli": {"test": "QNLI.tsv"}, "rte": {"test": "RTE.tsv"},
               "wnli": {"test": "WNLI.tsv"}, "ax": {"test": "AX.tsv"}}
METRICS = {"cola": ("mcc", "mcc"), "sst2": ("accuracy", "accuracy"),
           "mrpc": ({"f1", "accuracy"}, "f1"), "stsb": ({"pearson", "spearman"}, "pearson"),
           "qqp": ({"f1", "accuracy"}, "f1"), "mnli": ("accuracy", "accuracy"),
           "qnli": ("accuracy", "accuracy"), "rte": ("accuracy", "accuracy"),
           "wnli": ("accuracy", "accuracy")}
# Texts that a reader with CSV quoting on, or one that strips, would damage.
TRICKY = ['" a quote opens this', "it 's here ", "ends with a quote \"", "x"]


def write_tsv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ([header] if header else []) + rows
    path.write_text("".join("\t".join(line) + "\n" for line in lines), encoding="utf-8")


def glue_rows(task_name, split, n=4):
    """Rows of one split in its GLUE format, and the Examples they must read as."""
    file_name, header, col_a, col_b, col_label = FORMATS[task_name][split]
    width = len(header) if header else 4
    position = (lambda c: c) if header is None else header.index
    labels = LABELS[task_name]
    rows, expected = [], []
    for i in range(n):
        row = [f"f{j}" for j in range(width)]
        text_a, text_b = f"{TRICKY[i % 4]} a{i}", (f"b{i} {TRICKY[(i + 1) % 4]}" if col_b else None)
        row[position(col_a)] = text_a
        if col_b:
            row[position(col_b)] = text_b
        if col_label is None:
            row[position("id" if task_name == "qqp" else "index")] = f"{700 + i}"
            expected.append(Example(f"{700 + i}", text_a, text_b, None))
        elif labels is None:
            row[position(col_label)] = f"{i * 1.25:.3f}"
            expected.append(Example(f"{split}-{i}", text_a, text_b, i * 1.25))
        else:
            row[position(col_label)] = labels[i % len(labels)]
            expected.append(Example(f"{split}-{i}", text_a, text_b, i % len(labels)))
        rows.append(row)
    return file_name, header, rows, expected


# ----------------------------------------------------------------------------------------------
# Registry


def test_registry_has_every_glue_task():
    assert set(TASKS) == set(FORMATS)
    for name, task in TASKS.items():
        assert task.dir_name == DIRS[name]
        assert task.labels == LABELS[name]
        assert dict(task.submission_files) == SUBMISSIONS[name]
        assert task.tfds_name == f"glue/{name}"
        assert set(task.splits) == set(FORMATS[name])
        assert task.is_regression == (name == "stsb")
        assert task.num_labels == (1 if name == "stsb" else len(LABELS[name]))
        if name in METRICS:
            metrics, main = METRICS[name]
            assert set(task.metrics) == ({metrics} if isinstance(metrics, str) else metrics)
            assert task.main_metric == main


def test_registry_details():
    mnli = get_task("mnli")
    assert mnli.tfds_split("dev") == "validation_matched"
    assert mnli.tfds_split("test_mismatched") == "test_mismatched"
    assert get_task("rte").tfds_split("dev") == "validation"
    # TFDS numbers MNLI's classes entailment, neutral, contradiction.
    assert mnli.tfds_labels == ("entailment", "neutral", "contradiction")
    ax = get_task("ax")
    assert ax.prediction_only and ax.model_task == "mnli" and ax.labels == mnli.labels
    assert set(ax.file_names("test")) == {"AX.tsv", "diagnostic.tsv"}
    assert get_task("cola").has_header("test") and not get_task("cola").has_header("train")
    with pytest.raises(ValueError, match="has no split 'validation'; known: train, dev, test"):
        get_task("rte").file_names("validation")


@pytest.mark.parametrize("alias, name", [("SST-2", "sst2"), ("sts-b", "stsb"), ("MNLI-m", "mnli"),
                                         ("CoLA", "cola"), (" qqp ", "qqp"), ("AX", "ax")])
def test_get_task_aliases(alias, name):
    assert get_task(alias) is TASKS[name]


def test_get_task_unknown():
    with pytest.raises(ValueError, match=r"^unknown task 'squad'; known: cola, sst2, mrpc, stsb"):
        get_task("squad")


# ----------------------------------------------------------------------------------------------
# Real GLUE files


def test_real_mrpc(glue_dir):
    train = read_glue_tsv("mrpc", glue_dir, "train")
    dev = read_glue_tsv("mrpc", glue_dir, "dev")
    test = read_glue_tsv("mrpc", glue_dir, "test")
    assert (len(train), sum(e.label for e in train)) == (3668, 2474)
    assert (len(dev), sum(e.label for e in dev)) == (408, 279)
    assert len(test) == 1725 and all(e.label is None for e in test)
    assert [e.guid for e in test[:3]] == ["0", "1", "2"] and len({e.guid for e in test}) == 1725
    for example in train + dev + test:
        assert "\t" not in example.text_a and "\t" not in example.text_b
        assert "\n" not in example.text_a + example.text_b
    assert {e.label for e in train + dev} == {0, 1}
    # The BOM is not part of the first column's name, or "Quality" would not have been found.
    assert dev[0].text_b == ('" The foodservice pie business does not fit our long-term growth '
                             'strategy .')
    # The pair a copy with quoting enabled loses (SOURCES.md): its second sentence opens with ".
    brandeis = [e for e in train if e.text_a.startswith("Officials at Brandeis")]
    assert len(brandeis) == 1 and brandeis[0].text_b.startswith('"')
    # A task directory given directly works too.
    assert find_tsv("mrpc", glue_dir / "MRPC", "dev") == glue_dir / "MRPC" / "dev.tsv"


def test_real_sst2_dev(glue_dir):
    dev = read_glue_tsv("sst-2", glue_dir, "dev")
    assert (len(dev), sum(e.label for e in dev)) == (872, 444)
    assert all(e.text_b is None and e.label in (0, 1) for e in dev)
    labels = label_array("sst2", dev)
    assert labels.dtype == np.int32 and labels.sum() == 444


# ----------------------------------------------------------------------------------------------
# TSV reading, every task


@pytest.mark.parametrize("task_name", sorted(FORMATS))
def test_read_every_task_and_split(tmp_path, task_name):
    task = get_task(task_name)
    for split in FORMATS[task_name]:
        file_name, header, rows, expected = glue_rows(task_name, split)
        write_tsv(tmp_path / DIRS[task_name] / file_name, header, rows)
        assert read_glue_tsv(task, tmp_path, split) == expected, (task_name, split)


def test_read_with_bom_and_blank_last_line(tmp_path):
    path = tmp_path / "RTE" / "dev.tsv"
    path.parent.mkdir()
    path.write_bytes("\ufeffindex\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n\n".encode())
    assert read_glue_tsv("rte", tmp_path, "dev") == [Example("dev-0", "a", "b", 0)]


def test_ax_reads_either_file_name(tmp_path):
    write_tsv(tmp_path / "diagnostic" / "AX.tsv", _PAIR, [["0", "a", "b"]])
    assert read_glue_tsv("ax", tmp_path, "test") == [Example("0", "a", "b", None)]


def test_unknown_label(tmp_path):
    write_tsv(tmp_path / "QNLI" / "train.tsv", ["index", "question", "sentence", "label"],
              [["0", "q", "s", "entailment"], ["1", "q", "s", "contradiction"]])
    with pytest.raises(ValueError, match=r"train\.tsv, line 3: label 'contradiction' is not one "
                                         r"of entailment, not_entailment"):
        read_glue_tsv("qnli", tmp_path, "train")


def test_bad_score(tmp_path):
    write_tsv(tmp_path / "STS-B" / "dev.tsv", _STSB + ["score"], [["x"] * 9 + ["high"]])
    with pytest.raises(ValueError, match="line 2: label 'high' is not a number"):
        read_glue_tsv("stsb", tmp_path, "dev")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no mnli dev file: tried .*MNLI/dev_matched\.tsv"
                                                r".*holds train\.tsv, dev_matched\.tsv"):
        read_glue_tsv("mnli", tmp_path, "dev")


def test_other_tasks_directory_is_not_accepted(glue_dir):
    with pytest.raises(FileNotFoundError, match="no sst2 dev file"):
        read_glue_tsv("sst2", glue_dir / "MRPC", "dev")


def test_missing_column(tmp_path):
    write_tsv(tmp_path / "QQP" / "test.tsv", ["index", "question1", "question2"], [["0", "a", "b"]])
    with pytest.raises(ValueError, match=r"has no column 'id' \(qqp index\); its columns are: "
                                         r"index, question1, question2"):
        read_glue_tsv("qqp", tmp_path, "test")


def test_wrong_column_count(tmp_path):
    write_tsv(tmp_path / "SST-2" / "dev.tsv", ["sentence", "label"],
              [["good", "1"], ["a\tb", "1"]])
    with pytest.raises(ValueError, match=r"dev\.tsv, line 3: 3 tab-separated fields, expected 2"):
        read_glue_tsv("sst2", tmp_path, "dev")


def test_empty_file_and_unknown_split(tmp_path):
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "dev.tsv").write_text("")
    with pytest.raises(ValueError, match="is empty; expected a header row"):
        read_glue_tsv("rte", tmp_path, "dev")
    with pytest.raises(ValueError, match="task 'rte' has no split 'dev_mismatched'"):
        read_glue_tsv("rte", tmp_path, "dev_mismatched")


# ----------------------------------------------------------------------------------------------
# TFDS (mock data: random texts and labels, so only structure and types are checked)


@pytest.mark.parametrize("task_name, split", [("mrpc", "train"), ("sst2", "dev"),
                                              ("stsb", "dev"), ("mnli", "dev_mismatched"),
                                              ("mrpc", "test")])
def test_tfds_examples(task_name, split):
    tfds = pytest.importorskip("tensorflow_datasets")
    task = get_task(task_name)
    with tfds.testing.mock_data(num_examples=5):
        examples = read_tfds_examples(task_name, split)
    assert len(examples) == 5
    for example in examples:
        assert isinstance(example.text_a, str)
        assert (example.text_b is None) == (task.text_b is None)
        assert isinstance(example.text_b, (str, type(None)))
        if split == "test":
            assert example.label is None and example.guid.isdigit()
        elif task.is_regression:
            assert isinstance(example.label, float)
        else:
            assert isinstance(example.label, int) and 0 <= example.label < task.num_labels
            assert example.guid.startswith(f"{split}-")


# ----------------------------------------------------------------------------------------------
# Encoding and tf.data


def rows_of_lengths(lengths):
    """Rows whose tokens all equal 1000 + the row number, so a batch row names its example."""
    return EncodedExamples.from_rows([[1000 + i] * n for i, n in enumerate(lengths)],
                                     [[0] * (n // 2) + [1] * (n - n // 2) for n in lengths])


def batch_rows(inputs):
    """(example number, length) of every row of a batch, checking its padding on the way."""
    ids, mask, types = (inputs[k].numpy()
                        for k in ("input_ids", "attention_mask", "token_type_ids"))
    out = []
    for row_ids, row_mask, row_types in zip(ids, mask, types):
        n = int(row_mask.sum())
        assert (row_mask[:n] == 1).all() and (row_mask[n:] == 0).all()
        assert (row_ids[n:] == 0).all() and (row_types[n:] == 0).all()
        assert len(set(row_ids[:n])) == 1
        out.append((int(row_ids[0]) - 1000, n))
    return out


def test_encode_examples_matches_padded_tokenizer(glue_dir):
    from adapter_bert import load_tokenizer

    tokenizer = load_tokenizer("all-minilm-l6-v2")
    examples = read_glue_tsv("mrpc", glue_dir, "dev")[:23]
    encoded = encode_examples(tokenizer, examples, max_seq_length=40, chunk_size=7)
    reference = tokenizer.encode([e.text_a for e in examples], [e.text_b for e in examples],
                                 max_seq_length=40, padding="max_length")
    assert len(encoded) == 23 and encoded.max_length == 40
    for i in range(23):
        row = encoded.row(i)
        n = len(row["input_ids"])
        for name in ("input_ids", "attention_mask", "token_type_ids"):
            np.testing.assert_array_equal(row[name], reference[name][i, :n])
        assert reference["attention_mask"][i, n:].sum() == 0
    single = encode_examples(tokenizer, read_glue_tsv("sst2", glue_dir, "dev")[:5], 16)
    assert single.token_type_ids.sum() == 0 and len(single) == 5
    with pytest.raises(ValueError, match="some examples have text_b and others do not"):
        encode_examples(tokenizer, [Example("0", "a", "b", 0), Example("1", "a", None, 0)], 16)


def test_dynamic_padding():
    lengths = [5, 3, 9, 2, 7, 4, 8]
    dataset = make_dataset(rows_of_lengths(lengths), list(range(7)), batch_size=3)
    seen = []
    for inputs, labels in dataset:
        rows = batch_rows(inputs)
        assert inputs["input_ids"].shape[1] == max(n for _, n in rows)
        assert inputs["input_ids"].dtype == tf.int32 and labels.dtype == tf.int32
        assert labels.numpy().tolist() == [i for i, _ in rows]
        seen += rows
    assert seen == list(enumerate(lengths))


def test_max_length_padding_is_static():
    dataset = make_dataset(rows_of_lengths([5, 3, 9, 2, 7]), [0.5, 1, 2, 3, 4.5], batch_size=2,
                           padding="max_length", max_seq_length=12, drop_remainder=True)
    inputs_spec, labels_spec = dataset.element_spec
    assert all(spec.shape == (2, 12) for spec in inputs_spec.values())
    assert labels_spec.dtype == tf.float32
    batches = list(dataset)
    assert len(batches) == 2 == num_batches(5, 2, drop_remainder=True)
    rows = [r for inputs, _ in batches for r in batch_rows(inputs)]
    assert rows == [(0, 5), (1, 3), (2, 9), (3, 2)]
    with pytest.raises(ValueError, match="a row has 9 tokens, more than max_seq_length 8"):
        make_dataset(rows_of_lengths([5, 9]), None, 2, padding="max_length", max_seq_length=8)


@pytest.mark.parametrize("pad_to_boundary", [False, True])
def test_bucketing(pad_to_boundary):
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 33, size=101).tolist()
    boundaries = [8, 16, 32] if pad_to_boundary else [8, 16]  # 17..32 overflow when dynamic
    edges = [0] + boundaries + [10**9]

    def bucket_of(n):
        return next(b for b in range(len(edges) - 1) if edges[b] < n <= edges[b + 1])

    dataset = make_dataset(rows_of_lengths(lengths), np.arange(101), batch_size=8, shuffle=True,
                           seed=3, bucket_boundaries=boundaries,
                           pad_to_bucket_boundary=pad_to_boundary)
    seen = []
    for inputs, labels in dataset:
        rows = batch_rows(inputs)
        assert labels.numpy().tolist() == [i for i, _ in rows]
        assert all(lengths[i] == n for i, n in rows)
        buckets = {bucket_of(n) for _, n in rows}
        assert len(buckets) == 1 and len(rows) <= 8
        width = inputs["input_ids"].shape[1]
        assert width == (boundaries[buckets.pop()] if pad_to_boundary else max(n for _, n in rows))
        seen += [i for i, _ in rows]
    assert sorted(seen) == list(range(101)) and seen != sorted(seen)


def test_bucketing_errors():
    encoded = rows_of_lengths([5, 20])
    with pytest.raises(ValueError, match="20 tokens, more than the last bucket boundary 16"):
        make_dataset(encoded, None, 2, bucket_boundaries=[8, 16], pad_to_bucket_boundary=True)
    with pytest.raises(ValueError, match="bucket_boundaries must increase strictly"):
        make_dataset(encoded, None, 2, bucket_boundaries=[16, 8])
    with pytest.raises(ValueError, match="cannot be combined with padding='max_length'"):
        make_dataset(encoded, None, 2, padding="max_length", bucket_boundaries=[8, 32])
    with pytest.raises(ValueError, match="labels has shape"):
        make_dataset(encoded, [1, 2, 3], 2)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        make_dataset(encoded, None, 0)


def test_shuffle_is_deterministic():
    encoded = rows_of_lengths([3] * 40)

    def epochs(seed, count=2):
        dataset = make_dataset(encoded, None, batch_size=40, shuffle=True, seed=seed)
        return [[i for i, _ in batch_rows(inputs)] for _ in range(count) for inputs, _ in dataset]

    first, again, other = epochs(1), epochs(1), epochs(2)
    assert first == again and first != other
    assert first[0] != first[1]  # a new order every epoch
    assert sorted(first[0]) == list(range(40))


def test_unlabelled_batches_get_placeholder_labels():
    inputs, labels = next(iter(make_dataset(rows_of_lengths([2, 3]), None, batch_size=2)))
    assert labels.numpy().tolist() == [-1, -1] and labels.dtype == tf.int32
    test = [Example("0", "a", "b", None), Example("1", "c", "d", None)]
    assert label_array("stsb", test).dtype == np.float32
    assert label_array("mrpc", test).tolist() == [-1, -1]


# ----------------------------------------------------------------------------------------------
# Metrics


def test_metrics_hand_computed():
    # tp 2, fp 1, fn 0: precision 2/3, recall 1, F1 0.8; 3 of 4 right.
    assert compute_metrics("mrpc", [1, 1, 0, 1], [1, 0, 0, 1]) == pytest.approx(
        {"f1": 0.8, "accuracy": 0.75})
    assert compute_metrics("cola", [0, 1, 1, 0], [0, 1, 1, 0]) == {"mcc": 1.0}
    assert compute_metrics("cola", [1, 0, 0, 1], [0, 1, 1, 0]) == {"mcc": -1.0}
    assert compute_metrics("mnli", np.array([0, 1, 2, 2]), np.array([0, 1, 2, 1])) == {
        "accuracy": 0.75}
    # Monotone but not linear: rank correlation 1, linear correlation below 1.
    result = compute_metrics("stsb", [1.0, 2.0, 3.0, 10.0], [0.5, 1.0, 1.5, 2.0])
    assert result["spearman"] == pytest.approx(1.0) and 0.8 < result["pearson"] < 1.0
    assert all(type(v) is float for v in result.values())


def test_metrics_match_libraries():
    rng = np.random.default_rng(7)
    labels, predictions = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    assert compute_metrics("qqp", predictions, labels) == pytest.approx({
        "f1": sk_metrics.f1_score(labels, predictions),
        "accuracy": sk_metrics.accuracy_score(labels, predictions)})
    assert compute_metrics("cola", predictions, labels)["mcc"] == pytest.approx(
        sk_metrics.matthews_corrcoef(labels, predictions))
    gold, scores = rng.uniform(0, 5, 50), rng.uniform(0, 5, 50)
    assert compute_metrics("stsb", scores, gold) == pytest.approx({
        "pearson": stats.pearsonr(scores, gold)[0], "spearman": stats.spearmanr(scores, gold)[0]})


def test_metrics_errors():
    with pytest.raises(ValueError, match="3 predictions but 2 labels"):
        compute_metrics("sst2", [0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="predictions holds class id 3, outside 0..2 of mnli"):
        compute_metrics("mnli", [0, 3], [0, 1])
    with pytest.raises(ValueError, match="must be 1-D"):
        compute_metrics("sst2", np.zeros((2, 2)), [0, 1])
    with pytest.raises(ValueError, match="is empty"):
        compute_metrics("sst2", [], [])


# ----------------------------------------------------------------------------------------------
# Submissions


def read_submission(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_submission_format(tmp_path):
    guids = [str(i) for i in range(5)]
    path = write_submission("qnli", "test", guids, np.array([0, 1, 1, 0, 1]), tmp_path)
    assert path == tmp_path / "QNLI.tsv"
    rows = read_submission(path)
    assert rows[0] == ["index", "prediction"] and len(rows) == 6
    assert rows[1:3] == [["0", "entailment"], ["1", "not_entailment"]]
    path = write_submission("sst2", "test", guids[:2], [1, 0], tmp_path)
    assert read_submission(path)[1:] == [["0", "1"], ["1", "0"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["QNLI.tsv", "SST-2.tsv"]  # no temp files


def test_submission_mnli_and_ax(tmp_path):
    matched = write_submission("mnli", "test", ["0", "1"], [0, 2], tmp_path)
    mismatched = write_submission("mnli", "test_mismatched", ["0"], [1], tmp_path)
    ax = write_submission("ax", "test", ["0"], [1], tmp_path)
    assert (matched.name, mismatched.name, ax.name) == ("MNLI-m.tsv", "MNLI-mm.tsv", "AX.tsv")
    assert read_submission(matched)[1:] == [["0", "contradiction"], ["1", "neutral"]]
    assert read_submission(mismatched)[1:] == [["0", "entailment"]]


def test_submission_stsb_clipped_and_overwritten(tmp_path):
    write_submission("stsb", "test", ["0"], [1.0], tmp_path)
    path = write_submission("stsb", "test", ["0", "1", "2"], [-0.2, 2.71828, 5.6], tmp_path)
    assert read_submission(path)[1:] == [["0", "0.000"], ["1", "2.718"], ["2", "5.000"]]


def test_submission_errors(tmp_path):
    with pytest.raises(ValueError, match="'dev' is not a test split; submissions exist for test"):
        write_submission("rte", "dev", ["0"], [0], tmp_path)
    with pytest.raises(ValueError, match=r"predictions has shape \(1,\), expected \(2,\)"):
        write_submission("rte", "test", ["0", "1"], [0], tmp_path)
    with pytest.raises(ValueError, match="prediction 2 is not a class id of rte"):
        write_submission("rte", "test", ["0"], [2], tmp_path)
    with pytest.raises(ValueError, match="is not a finite score"):
        write_submission("stsb", "test", ["0"], [math.nan], tmp_path)
    assert list(tmp_path.iterdir()) == []
