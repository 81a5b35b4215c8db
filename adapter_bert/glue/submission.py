"""GLUE benchmark submission files: one `<Task>.tsv` of test predictions per test split.

The GLUE server takes a zip of these files: a header `index\tprediction`, then one row per test
example, keyed by the test file's index column, with the label string for classification tasks
("entailment", "1", ...) and the score for STS-B.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from adapter_bert.glue.tasks import GlueTask, get_task

HEADER = ("index", "prediction")
# STS-B scores are similarities in [0, 5]; a regression head can overshoot.
STSB_RANGE = (0.0, 5.0)


def write_submission(task: GlueTask | str, split: str, guids: Sequence[str],
                     predictions: Sequence | np.ndarray, directory: str | os.PathLike) -> Path:
    """Writes the GLUE submission file of one test split, atomically.

    Args:
        task: a `GlueTask` or task name (for AX, the MNLI model's predictions).
        split: a test split: "test", or for MNLI also "test_mismatched".
        guids: the examples' guids from `read_glue_tsv(..., "test")` (the index column).
        predictions: class ids, or scores for STS-B (clipped to [0, 5], 3 decimals).
        directory: where to write; created if missing.

    Returns:
        The file written, e.g. `directory/MNLI-mm.tsv`.

    Raises:
        ValueError: `split` is not a test split of the task, the lengths differ, or a class id
            is out of range.

    Example:
    >>> import tempfile
    >>> path = write_submission("rte", "test", ["0", "1"], [1, 0], tempfile.mkdtemp())
    >>> path.name, path.read_text()
    ('RTE.tsv', 'index\\tprediction\\n0\\tnot_entailment\\n1\\tentailment\\n')
    """
    task = task if isinstance(task, GlueTask) else get_task(task)
    task.check_split(split)
    if split not in task.submission_files:
        raise ValueError(f"{task.name} split {split!r} is not a test split; submissions exist for "
                         f"{', '.join(task.submission_files)}")
    guids = [str(guid) for guid in guids]
    values = np.asarray(predictions)
    if values.shape != (len(guids),):
        raise ValueError(f"predictions has shape {values.shape}, expected ({len(guids)},): one "
                         "per guid")
    lines = [_line(HEADER)]
    lines += [_line((guid, text)) for guid, text in zip(guids, _prediction_texts(task, values))]
    path = Path(directory) / task.submission_files[split]
    _write_atomically(path, "".join(lines))
    return path


def _line(fields) -> str:
    return "\t".join(fields) + "\n"


def _prediction_texts(task: GlueTask, values: np.ndarray) -> list[str]:
    if task.is_regression:
        if values.dtype.kind not in "iuf":
            raise ValueError(f"{task.name} predictions must be scores, got dtype {values.dtype}")
        if not np.isfinite(values).all():
            raise ValueError(f"{task.name} prediction {values[~np.isfinite(values)][0]} is not a "
                             "finite score")
        return [f"{score:.3f}" for score in np.clip(values.astype(np.float64), *STSB_RANGE)]
    if values.dtype.kind not in "iu":
        raise ValueError(f"{task.name} predictions must be int class ids, got dtype {values.dtype}")
    bad = values[(values < 0) | (values >= task.num_labels)]
    if len(bad):
        raise ValueError(f"prediction {bad[0]} is not a class id of {task.name} "
                         f"(0..{task.num_labels - 1})")
    return [task.labels[i] for i in values]


def _write_atomically(path: Path, text: str) -> None:
    # A temporary file in the same directory renames over the target atomically, so a crash never
    # leaves a truncated submission behind.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a result file is for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
