"""The GLUE tasks: where their files are, which columns hold what, their labels and metrics.

Everything task-specific in the GLUE layer is looked up here, so `data.py`, `metrics.py` and
`submission.py` contain no per-task branches.

File layout is the one the GLUE download script writes (`glue_data/<dir_name>/<split>.tsv`).
Column names are those of the files' header rows; CoLA's train and dev files have no header, so
their columns are named here (`source`, `label`, `notation`, `sentence`).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping

# The splits every task with labels has; MNLI adds the mismatched ones.
SPLITS = ("train", "dev", "test")
# Metric names as `metrics.compute_metrics` returns them.
METRIC_NAMES = ("accuracy", "f1", "mcc", "pearson", "spearman")

_BINARY = ("0", "1")
_NLI3 = ("contradiction", "entailment", "neutral")
_NLI2 = ("entailment", "not_entailment")
_COLA_COLUMNS = ("source", "label", "notation", "sentence")


def _frozen(mapping: Mapping) -> Mapping:
    return types.MappingProxyType(dict(mapping))


@dataclasses.dataclass(frozen=True)
class GlueTask:
    """One GLUE task.

    Attributes:
        name: the registry key, lower case ("mrpc", "sst2", ...).
        dir_name: the task's directory under the GLUE data root ("MRPC", "SST-2", ...).
        text_a: column holding the first (or only) text.
        text_b: column holding the second text; None for single-sentence tasks.
        label: column holding the label in train/dev files; None when no split has labels (AX).
        index: column holding the example id in test files (what submissions are keyed by).
        labels: the label strings as written in the TSV files and expected by the GLUE server;
            a label's position is its class id. None for the regression task STS-B.
        metrics: the official metrics, as named by `compute_metrics`.
        main_metric: the metric that picks the best epoch: the first official one (CoLA mcc,
            MRPC/QQP f1, STS-B pearson, otherwise accuracy).
        files: split -> candidate file names inside `dir_name`, first existing one wins.
        submission_files: test split -> file name of the GLUE submission.
        tfds_name: the `tensorflow_datasets` name ("glue/mrpc").
        tfds_splits: split -> TFDS split name ("dev" -> "validation").
        tfds_text: TFDS feature names of text_a and text_b.
        tfds_labels: for each TFDS class id, the label string in `labels` it means (TFDS orders
            the MNLI classes differently from the TSV files).
        headerless_columns: column names of train/dev files that have no header row (CoLA).
        prediction_only: no split has labels; predictions come from another task's model (AX).
        model_task: the task whose model makes the predictions (AX: "mnli"; else `name`).

    Example:
    >>> task = get_task("MNLI")
    >>> task.labels, task.num_labels, task.file_names("dev"), task.submission_files["test"]
    (('contradiction', 'entailment', 'neutral'), 3, ('dev_matched.tsv',), 'MNLI-m.tsv')
    """

    name: str
    dir_name: str
    text_a: str
    text_b: str | None
    label: str | None
    index: str
    labels: tuple[str, ...] | None
    metrics: tuple[str, ...]
    main_metric: str
    files: Mapping[str, tuple[str, ...]] = dataclasses.field(compare=False)
    submission_files: Mapping[str, str] = dataclasses.field(compare=False)
    tfds_name: str = ""
    tfds_splits: Mapping[str, str] = dataclasses.field(compare=False, default=None)
    tfds_text: tuple[str, str | None] = ("sentence", None)
    tfds_labels: tuple[str, ...] | None = None
    headerless_columns: tuple[str, ...] | None = None
    prediction_only: bool = False
    model_task: str = ""

    def __post_init__(self):
        # Read-only mappings keep the registry immutable like the dataclass itself.
        for name in ("files", "submission_files", "tfds_splits"):
            object.__setattr__(self, name, _frozen(getattr(self, name) or {}))
        if not self.model_task:
            object.__setattr__(self, "model_task", self.name)
        if self.tfds_labels is None and self.labels is not None:
            object.__setattr__(self, "tfds_labels", self.labels)
        if self.main_metric not in self.metrics:
            raise ValueError(f"task {self.name!r}: main_metric {self.main_metric!r} is not one of "
                             f"its metrics {self.metrics}")

    @property
    def is_regression(self) -> bool:
        """True for STS-B, whose label is a similarity score in [0, 5]."""
        return self.labels is None

    @property
    def num_labels(self) -> int:
        """Number of classes, or 1 (one output) for regression."""
        return 1 if self.labels is None else len(self.labels)

    @property
    def splits(self) -> tuple[str, ...]:
        """The split names this task has files for."""
        return tuple(self.files)

    @property
    def test_splits(self) -> tuple[str, ...]:
        """The splits without labels, each with its own submission file."""
        return tuple(self.submission_files)

    def check_split(self, split: str) -> str:
        """Returns `split` if this task has it, else raises a one-line ValueError.

        Example:
        >>> get_task("mnli").check_split("dev_mismatched")
        'dev_mismatched'
        """
        if split not in self.files:
            raise ValueError(f"task {self.name!r} has no split {split!r}; "
                             f"known: {', '.join(self.files)}")
        return split

    def file_names(self, split: str) -> tuple[str, ...]:
        """Candidate TSV file names of `split`, in order of preference."""
        return self.files[self.check_split(split)]

    def has_labels(self, split: str) -> bool:
        """Whether the files of `split` carry labels (train/dev do, test files do not)."""
        return self.check_split(split) not in self.submission_files

    def has_header(self, split: str) -> bool:
        """Whether the file of `split` starts with a header row (CoLA train/dev do not)."""
        return self.headerless_columns is None or not self.has_labels(split)

    def tfds_split(self, split: str) -> str:
        """The TFDS split name of `split` ("dev" -> "validation")."""
        return self.tfds_splits[self.check_split(split)]


def _task(name, dir_name, text_a, text_b, label, labels, metrics, index="index", files=None,
          submission_files=None, tfds_text=None, tfds_splits=None, **kwargs) -> GlueTask:
    """A task with the usual train/dev/test files, unless told otherwise."""
    return GlueTask(
        name=name, dir_name=dir_name, text_a=text_a, text_b=text_b, label=label, index=index,
        labels=labels, metrics=metrics, main_metric=metrics[0],
        files=files or {s: (f"{s}.tsv",) for s in SPLITS},
        submission_files=submission_files or {"test": f"{dir_name}.tsv"},
        tfds_name=f"glue/{name}",
        tfds_splits=tfds_splits or {"train": "train", "dev": "validation", "test": "test"},
        tfds_text=tfds_text or (text_a, text_b), **kwargs)


TASKS: Mapping[str, GlueTask] = _frozen({task.name: task for task in (
    _task("cola", "CoLA", "sentence", None, "label", _BINARY, ("mcc",),
          headerless_columns=_COLA_COLUMNS),
    _task("sst2", "SST-2", "sentence", None, "label", _BINARY, ("accuracy",)),
    _task("mrpc", "MRPC", "#1 String", "#2 String", "Quality", _BINARY, ("f1", "accuracy"),
          tfds_text=("sentence1", "sentence2")),
    _task("stsb", "STS-B", "sentence1", "sentence2", "score", None, ("pearson", "spearman")),
    _task("qqp", "QQP", "question1", "question2", "is_duplicate", _BINARY, ("f1", "accuracy"),
          index="id"),
    _task("mnli", "MNLI", "sentence1", "sentence2", "gold_label", _NLI3, ("accuracy",),
          files={"train": ("train.tsv",), "dev": ("dev_matched.tsv",),
                 "dev_mismatched": ("dev_mismatched.tsv",), "test": ("test_matched.tsv",),
                 "test_mismatched": ("test_mismatched.tsv",)},
          submission_files={"test": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"},
          tfds_text=("premise", "hypothesis"),
          tfds_splits={"train": "train", "dev": "validation_matched",
                       "dev_mismatched": "validation_mismatched", "test": "test_matched",
                       "test_mismatched": "test_mismatched"},
          tfds_labels=("entailment", "neutral", "contradiction")),
    _task("qnli", "QNLI", "question", "sentence", "label", _NLI2, ("accuracy",)),
    _task("rte", "RTE", "sentence1", "sentence2", "label", _NLI2, ("accuracy",)),
    _task("wnli", "WNLI", "sentence1", "sentence2", "label", _BINARY, ("accuracy",)),
    # The diagnostic set is scored by the GLUE server (R3, a multi-class Matthews correlation)
    # from the predictions of the MNLI model; the download script names it diagnostic.tsv.
    _task("ax", "diagnostic", "sentence1", "sentence2", None, _NLI3, ("mcc",),
          files={"test": ("AX.tsv", "diagnostic.tsv")}, submission_files={"test": "AX.tsv"},
          tfds_text=("premise", "hypothesis"), tfds_splits={"test": "test"},
          tfds_labels=("entailment", "neutral", "contradiction"), prediction_only=True,
          model_task="mnli"),
)})

# Spellings people use besides the registry keys: GLUE directory and submission names.
_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli", "mnli_matched": "mnli",
            "diagnostic": "ax"}


def get_task(name: str) -> GlueTask:
    """Looks a task up by name, case-insensitively; GLUE spellings like "SST-2" work too.

    Args:
        name: a registry key ("mrpc"), a GLUE directory name ("STS-B") or "mnli-m"/"diagnostic".

    Returns:
        The `GlueTask`.

    Raises:
        ValueError: the name is not a GLUE task.

    Example:
    >>> get_task("SST-2").dir_name, get_task("sts-b").is_regression
    ('SST-2', True)
    """
    if not isinstance(name, str):
        raise ValueError(f"task name must be a string, got {name!r}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[key]
