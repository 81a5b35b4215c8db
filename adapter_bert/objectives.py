"""What a training run learns: a GLUE task's labels, or masked language modelling on text.

The training loop (`adapter_bert.training`) is the same for both; an objective supplies what
differs: its data, its head, its loss and its dev metrics.

* `GlueObjective`: a GLUE task (TSV files or TFDS), a classification or regression head,
  cross-entropy or squared error, the task's official metrics (the best epoch has the highest
  main metric).
* `MaskedLMObjective` (`--task mlm`): lines of a text file, BERT's masked-LM head, the
  cross-entropy of the masked tokens, dev perplexity (the best epoch has the lowest).

Example:
>>> from adapter_bert.training import TrainingArgs
>>> objective_for(TrainingArgs(task="mlm", adapter_name="en", train_file="en.txt")).main_metric
'perplexity'
>>> objective_for(TrainingArgs(task="MRPC")).main_metric
'f1'
"""

from __future__ import annotations

import numpy as np

MLM = "mlm"


def task_names() -> tuple[str, ...]:
    """Every `--task`: the GLUE tasks with training data, and `mlm`."""
    from adapter_bert.glue.tasks import TASKS

    return tuple(n for n, t in TASKS.items() if not t.prediction_only) + (MLM,)


def is_masked_lm(task: str) -> bool:
    return isinstance(task, str) and task.strip().lower() == MLM


def objective_for(args):
    """The objective of a run's `--task` (a ValueError listing the tasks for an unknown one)."""
    from adapter_bert.glue.tasks import get_task

    if is_masked_lm(args.task):
        return MaskedLMObjective(args)
    try:
        return GlueObjective(args, get_task(args.task))
    except ValueError:
        raise ValueError(f"unknown task {args.task!r}; known: {', '.join(task_names())}") from None


def _gather_spec():
    import tensorflow as tf

    return tf.TensorSpec([None, None], tf.int32)


class GlueObjective:
    """A GLUE task's labels (see the module docstring)."""

    def __init__(self, args, task):
        self.args, self.task = args, task
        self.task_name, self.main_metric = task.name, task.main_metric
        self.writes_predictions = self.exports = True
        self.input_names = ("input_ids", "attention_mask", "token_type_ids")

    def improves(self, metrics: dict, best: dict | None) -> bool:
        return best is None or metrics[self.main_metric] > best["dev"][self.main_metric]

    def load(self, tokenizer) -> None:
        """Reads and tokenizes the train and dev splits."""
        from adapter_bert.glue.data import encode_examples, label_array

        args, task = self.args, self.task
        train = load_examples(args, task, "train")
        if args.max_train_examples:
            # The same subset for every --seed, so seeds differ only in initialisation and order.
            order = np.random.default_rng(0).permutation(len(train))
            train = [train[i] for i in sorted(order[:args.max_train_examples])]
        dev = load_examples(args, task, "dev")
        self.train_encoded = encode_examples(tokenizer, train, args.max_seq_length)
        self.train_labels = label_array(task, train)
        self.dev_encoded = encode_examples(tokenizer, dev, args.max_seq_length)
        self.dev_labels = label_array(task, dev)
        self.num_train = len(train)
        self.train_source = (f"{task.name} train ({args.data_dir})" if args.data_dir
                             else f"TFDS {task.tfds_name} train")

    def add_head(self, model, name: str) -> None:
        task, args = self.task, self.args
        if task.is_regression:
            model.add_regression_head(name, pooling=args.pooling)
        else:
            model.add_classification_head(name, num_labels=task.num_labels, pooling=args.pooling,
                                          id2label=dict(enumerate(task.labels)))

    def train_dataset(self, epoch: int, static_shapes: bool):
        return training_dataset(self.args, self.train_encoded, self.train_labels, epoch,
                                static_shapes)

    def loss(self, global_batch: int):
        """`(labels, logits) -> loss`: the replica's summed losses over the global batch size,
        so that the gradients summed across replicas are those of the whole batch."""
        import keras
        import tensorflow as tf

        regression = self.task.is_regression

        def loss(labels, logits):
            if regression:
                per_example = tf.square(tf.squeeze(logits, -1) - tf.cast(labels, logits.dtype))
            else:
                per_example = keras.losses.sparse_categorical_crossentropy(
                    labels, logits, from_logits=True)
            return tf.reduce_sum(per_example) / global_batch

        return loss

    def predict(self, predict_step, encoded) -> np.ndarray:
        """Class ids (or scores) of `encoded` examples."""
        from adapter_bert.glue.data import make_dataset

        args = self.args
        dataset = make_dataset(encoded, None, args.eval_batch_size or 2 * args.batch_size,
                               padding=args.padding, max_seq_length=args.max_seq_length)
        logits = np.concatenate([predict_step(inputs).numpy() for inputs, _ in dataset])
        return logits[:, 0] if self.task.is_regression else logits.argmax(-1)

    def dev_metrics(self, predict_step) -> dict:
        from adapter_bert.glue.metrics import compute_metrics

        return compute_metrics(self.task, self.predict(predict_step, self.dev_encoded),
                               self.dev_labels)


class MaskedLMObjective:
    """Masked language modelling on `--train_file` (see the module docstring)."""

    main_metric = "perplexity"
    task_name = MLM
    writes_predictions = exports = False
    input_names = ("input_ids", "attention_mask", "token_type_ids", "mask_positions")

    def __init__(self, args):
        self.args = args

    def improves(self, metrics: dict, best: dict | None) -> bool:
        return best is None or metrics[self.main_metric] < best["dev"][self.main_metric]

    def load(self, tokenizer) -> None:
        """Reads the text files (dev: `--dev_file`, else a fixed 5% of the training lines)."""
        from adapter_bert.language_modeling import MaskedLMData, hold_out, read_text_lines

        args = self.args
        train = read_text_lines(args.train_file)
        if args.dev_file is None:
            train, dev = hold_out(train)
        else:
            dev = read_text_lines(args.dev_file)
        if args.max_train_examples:
            order = np.random.default_rng(0).permutation(len(train))
            train = [train[i] for i in sorted(order[:args.max_train_examples])]
        self.train = MaskedLMData.from_lines(tokenizer, train, args.max_seq_length)
        self.dev = MaskedLMData.from_lines(tokenizer, dev, args.max_seq_length)
        self.num_train = len(train)
        self.train_source = args.train_file

    def add_head(self, model, name: str) -> None:
        model.add_masked_lm_head(name)

    def train_dataset(self, epoch: int, static_shapes: bool):
        args = self.args
        dataset = self.train.dataset(args.batch_size, mask_seed=(args.seed, epoch), shuffle=True,
                                     seed=args.seed + epoch, **_batching(args, static_shapes))
        return _full_batches(dataset, args.batch_size, [self.train.predictions]) if static_shapes \
            else dataset

    def loss(self, global_batch: int):
        """`(labels, logits) -> loss`: the replica's summed token losses over the number of
        predicted tokens in the whole global batch (summed across replicas), so every masked
        token of a step weighs the same wherever it ran."""
        import keras
        import tensorflow as tf

        def loss(labels, logits):
            weights = tf.cast(labels >= 0, logits.dtype)
            per_token = keras.losses.sparse_categorical_crossentropy(
                tf.maximum(labels, 0), logits, from_logits=True)
            count = tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, tf.reduce_sum(weights))
            return tf.reduce_sum(per_token * weights) / tf.maximum(count, 1.0)

        return loss

    def dev_metrics(self, predict_step) -> dict:
        from adapter_bert.language_modeling import (DEV_MASK_SEED, masked_lm_sums,
                                                    metrics_from_sums)

        args = self.args
        dataset = self.dev.dataset(args.eval_batch_size or 2 * args.batch_size,
                                   mask_seed=DEV_MASK_SEED, padding=args.padding)
        totals = np.zeros(3)
        for inputs, labels in dataset:
            totals += masked_lm_sums(predict_step(inputs).numpy(), labels.numpy())
        return metrics_from_sums(totals[0], int(totals[1]), int(totals[2]))


def load_examples(args, task, split: str):
    """A GLUE split from `--data_dir`'s TSV files, else from TFDS."""
    from adapter_bert.glue.data import read_glue_tsv, read_tfds_examples

    if args.data_dir is not None:
        return read_glue_tsv(task, args.data_dir, split)
    return read_tfds_examples(task, split)


def training_dataset(args, encoded, labels, epoch: int, static_shapes: bool):
    """The shuffled training batches of one epoch (the order depends only on seed and epoch).

    With `static_shapes` (TPUs compile one program per input shape) the last partial batch is
    dropped and every batch is padded to a fixed length: the bucket boundary of its bucket with
    `--bucket_boundaries`, else `--max_seq_length`.

    Example:
    >>> from adapter_bert.glue.data import EncodedExamples
    >>> from adapter_bert.training import TrainingArgs
    >>> encoded = EncodedExamples.from_rows([[2, 5, 3]] * 10, [[0, 0, 0]] * 10)
    >>> ds = training_dataset(TrainingArgs(batch_size=4, max_seq_length=16), encoded, [0] * 10, 0, True)
    >>> [tuple(x["input_ids"].shape) for x, _ in ds]
    [(4, 16), (4, 16)]
    """
    from adapter_bert.glue.data import make_dataset

    dataset = make_dataset(encoded, labels, args.batch_size, shuffle=True, seed=args.seed + epoch,
                           max_seq_length=args.max_seq_length, **_batching(args, static_shapes))
    return _full_batches(dataset, args.batch_size, []) if static_shapes else dataset


def _batching(args, static_shapes: bool) -> dict:
    """`make_dataset`'s padding options of a training epoch: dynamic (or bucketed) off TPU; with
    static shapes, full batches padded to the bucket boundary or to `--max_seq_length`."""
    buckets = list(args.bucket_boundaries) or None
    return dict(drop_remainder=static_shapes,
                padding="max_length" if static_shapes and not buckets else args.padding,
                bucket_boundaries=buckets, pad_to_bucket_boundary=static_shapes and bool(buckets))


def _full_batches(dataset, batch_size: int, label_shape: list):
    """Bucketing leaves the batch dimension unknown in the spec; every batch is full here, and
    XLA wants to know it."""
    import tensorflow as tf

    def fix_batch(inputs, labels):
        inputs = {k: tf.ensure_shape(v, [batch_size, None]) for k, v in inputs.items()}
        return inputs, tf.ensure_shape(labels, [batch_size, *label_shape])

    return dataset.map(fix_batch)
