"""The official GLUE metrics of a task, computed with scikit-learn and scipy.

Values are fractions in [0, 1] (correlations in [-1, 1]), not percentages. Statistics are never
written by hand here: the libraries' implementations are the reference everyone compares to.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as sk_metrics

from adapter_bert.glue.tasks import GlueTask, get_task


def _accuracy(predictions, labels) -> float:
    return sk_metrics.accuracy_score(labels, predictions)


def _f1(predictions, labels) -> float:
    # Binary F1 of class id 1 ("1": paraphrase / duplicate), as GLUE reports it for MRPC and QQP.
    return sk_metrics.f1_score(labels, predictions, average="binary", pos_label=1)


def _mcc(predictions, labels) -> float:
    return sk_metrics.matthews_corrcoef(labels, predictions)


def _pearson(predictions, labels) -> float:
    return stats.pearsonr(predictions, labels).statistic


def _spearman(predictions, labels) -> float:
    return stats.spearmanr(predictions, labels).statistic


_METRICS = {"accuracy": _accuracy, "f1": _f1, "mcc": _mcc, "pearson": _pearson,
            "spearman": _spearman}


def compute_metrics(task: GlueTask | str, predictions: Sequence | np.ndarray,
                    labels: Sequence | np.ndarray) -> dict[str, float]:
    """The task's official metrics of predictions against gold labels.

    Args:
        task: a `GlueTask` or task name.
        predictions: class ids (argmax of the logits), or predicted scores for STS-B.
        labels: the gold class ids, or gold scores for STS-B.

    Returns:
        `{metric: value}` for each of `task.metrics` (plain Python floats). A correlation of a
        constant input is undefined and comes back as nan.

    Raises:
        ValueError: the arrays are empty, not 1-D, of different lengths, or hold class ids
            outside the task's labels.

    Example:
    >>> compute_metrics("mrpc", [1, 1, 0, 1], [1, 0, 0, 1])
    {'f1': 0.8, 'accuracy': 0.75}
    """
    task = task if isinstance(task, GlueTask) else get_task(task)
    predictions = _as_vector(predictions, "predictions")
    labels = _as_vector(labels, "labels")
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    if not task.is_regression:
        predictions = _class_ids(predictions, task, "predictions")
        labels = _class_ids(labels, task, "labels")
    return {name: float(_METRICS[name](predictions, labels)) for name in task.metrics}


def _as_vector(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per example, class ids not logits), "
                         f"got shape {array.shape}")
    if len(array) == 0:
        raise ValueError(f"{name} is empty")
    return array


def _class_ids(values: np.ndarray, task: GlueTask, name: str) -> np.ndarray:
    if values.dtype.kind not in "iuf":
        raise ValueError(f"{name} for {task.name} must be int class ids, got dtype {values.dtype}")
    if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
        raise ValueError(f"{name} for {task.name} must be class ids, got value "
                         f"{values[values != np.round(values)][0]!r}")
    ids = values.astype(np.int64)
    bad = ids[(ids < 0) | (ids >= task.num_labels)]
    if len(bad):
        raise ValueError(f"{name} holds class id {bad[0]}, outside 0..{task.num_labels - 1} of "
                         f"{task.name}")
    return ids
