"""GLUE: the task registry, TSV/TFDS readers, tf.data pipelines, metrics and submission files.

Example:
>>> from adapter_bert.glue import get_task, read_glue_tsv, compute_metrics
>>> task = get_task("mrpc")
>>> examples = read_glue_tsv(task, "../shared/data/glue", "dev")
>>> compute_metrics(task, [1] * len(examples), [e.label for e in examples])["accuracy"]
0.6838235294117647
"""

from adapter_bert.glue.data import (EncodedExamples, Example, encode_examples, find_tsv,
                                    label_array, make_dataset, num_batches, read_glue_tsv,
                                    read_tfds_examples)
from adapter_bert.glue.metrics import compute_metrics
from adapter_bert.glue.submission import write_submission
from adapter_bert.glue.tasks import TASKS, GlueTask, get_task

__all__ = ["TASKS", "GlueTask", "get_task", "Example", "EncodedExamples", "find_tsv",
           "read_glue_tsv", "read_tfds_examples", "label_array", "encode_examples",
           "make_dataset", "num_batches", "compute_metrics", "write_submission"]
