"""SavedModels for TF Serving: one task or several tasks over one shared base.

Layout: `<export_dir>/<version>/` (saved_model.pb, variables/, assets/), the layout TF Serving's
`--model_base_path=<export_dir>` expects; versions are increasing integers.

Signatures of a single-task export:
  serving_default  input_ids, attention_mask, token_type_ids (int32 [batch, seq])
                   -> logits, probabilities, label (class id), or score for regression (STS-B)
  serve_text       text_a (and text_b for sentence-pair tasks), string [batch] -> the same,
                   tokenizing in the graph (needs the tensorflow_text ops to load)

A multi-task export has, per task, `<task>` and `<task>_text`; `serving_default` is the first
task's id signature. It also has `mixed` (the id inputs plus `task`, a string per row) and
`mixed_text` (`text_a`, `text_b`, `task`): each row goes through its own task's adapters and
head, over one pass of the base; `logits` / `probabilities` are padded to the largest label
count (-inf / 0, and all padding for regression rows), `label` is -1 and `score` the output for
regression rows (NaN for the others), `task_index` the row's task. An unknown task name fails
the call. Each signature is traced with its own adapter (or setup: `Stack("lang",
"mrpc")`) active, so the base's weights are stored once and every task adds only its adapters and
head.

LoRA / (IA)^3 adapters can be merged into the base for a single-task export (`merge=True`): the
served model then costs exactly what the base costs.

Example:
>>> import tempfile
>>> from adapter_bert import AdapterBertModel
>>> from adapter_bert.testing import tiny_bert_config
>>> model = AdapterBertModel.from_config(tiny_bert_config())
>>> model.add_adapter("sst2", config="lora"); model.add_classification_head("sst2")
>>> export_saved_model(model, tempfile.mkdtemp(), "sst2").name
'1'
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def next_version(export_dir: str | os.PathLike) -> int:
    """1 + the highest integer-named subdirectory (TF Serving serves the highest)."""
    export_dir = Path(export_dir)
    versions = [int(p.name) for p in export_dir.iterdir() if p.is_dir() and p.name.isdigit()] \
        if export_dir.is_dir() else []
    return max(versions, default=0) + 1


def _outputs(head, logits):
    import tensorflow as tf

    if head.problem_type == "regression":
        return {"score": tf.squeeze(logits, -1)}
    return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1),
            "label": tf.argmax(logits, axis=-1, output_type=tf.int32)}


def export_saved_model(model, export_dir: str | os.PathLike, tasks, tokenizer=None,
                       max_seq_length: int = 128, pair_tasks=None, merge: bool = False,
                       version: int | None = None, setups: dict | None = None,
                       mixed: bool | None = None) -> Path:
    """Writes a SavedModel of `tasks` (adapter + head of each name) to `<export_dir>/<version>/`.

    Args:
        model: an `AdapterBertModel` holding an adapter and a head named after each task.
        export_dir: the model base path; the version directory is created inside it.
        tasks: a task name or a list of names.
        tokenizer: a `BertTokenizer`; without it the text signatures are left out.
        max_seq_length: longest tokenized input of the text signatures.
        pair_tasks: names of tasks whose text signature takes two strings; default: tasks whose
            GLUE registry entry has a second text column, else none.
        merge: merge LoRA / (IA)^3 adapters into the base (single task only); the model is reset
            afterwards.
        version: the version number; default `next_version(export_dir)`.
        setups: per task, the adapter setup its signatures run (a name or a composition block
            ending in the task's adapter, e.g. `Stack("lang", "mrpc")`, or a `Fuse`); default
            the task's adapter alone.
        mixed: add the `mixed` (and, with a tokenizer, `mixed_text`) signatures, whose rows may
            each belong to another task; default: when there are several tasks.

    Returns:
        The version directory written.
    """
    import keras
    import tensorflow as tf

    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    if not tasks:
        raise ValueError("export_saved_model needs at least one task")
    from adapter_bert.composition import MultiTask, as_setup

    setups = {task: as_setup((setups or {}).get(task, task)) for task in tasks}
    for task in tasks:
        for name in ((setups[task],) if isinstance(setups[task], str) else setups[task].flatten()):
            model._adapter(name)
        if task not in model.heads:
            raise KeyError(f"no head named {task!r} to export")
    mixed = len(tasks) > 1 if mixed is None else mixed
    if mixed:
        mixed_setup = MultiTask(*[setups[t] for t in tasks])  # refuses setups it cannot hold
    if merge and not isinstance(setups[tasks[0]], str):
        raise ValueError(f"merge=True merges one adapter into the base; {tasks[0]!r} is served "
                         f"by the setup {setups[tasks[0]]}")
    if merge and len(tasks) > 1:
        raise ValueError("merge=True merges one adapter into the shared base; export one task")
    if pair_tasks is None:
        pair_tasks = [t for t in tasks if _is_pair_task(t)]
    export_dir = Path(export_dir)
    version = version if version is not None else next_version(export_dir)
    target = export_dir / str(version)
    if target.exists():
        raise FileExistsError(f"export version {target} exists already")

    active, head_before, skip = model.active_adapters, model.active_head, model.bert.skip_layers
    merged = merge and isinstance(setups[tasks[0]], str) and any(
        m.mergeable for m in model._adapter(tasks[0]).methods)
    if merged:
        model.merge_adapter(tasks[0])
    spec = tf.TensorSpec([None, None], tf.int32)
    archive = keras.export.ExportArchive()
    # Layers are not passed to archive.track(): the endpoints' own variables are saved anyway,
    # and tracking the Keras layers as well would store every weight a second time (the Keras
    # variable and the tf.Variable inside it), doubling the SavedModel.
    in_graph = tokenizer.in_graph(max_seq_length) if tokenizer is not None else None
    if in_graph is not None:
        archive.track(in_graph)
    try:
        for index, task in enumerate(tasks):
            forward = _id_signature(model, task, setups[task])
            ids_name = "serving_default" if index == 0 and len(tasks) == 1 else task
            archive.add_endpoint(ids_name, forward, input_signature=[spec, spec, spec])
            if index == 0 and len(tasks) > 1:
                archive.add_endpoint("serving_default", forward, input_signature=[spec, spec, spec])
            if in_graph is None:
                continue
            text_name = "serve_text" if len(tasks) == 1 else f"{task}_text"
            string = tf.TensorSpec([None], tf.string)
            pair = task in pair_tasks
            archive.add_endpoint(text_name, _text_signature(in_graph, forward, pair),
                                 input_signature=[string, string] if pair else [string])
        if mixed:
            table = _task_table(tasks)
            archive.track(table)
            forward = _mixed_signature(model, tasks, mixed_setup, table)
            string = tf.TensorSpec([None], tf.string)
            archive.add_endpoint("mixed", forward, input_signature=[spec, spec, spec, string])
            if in_graph is not None:
                archive.add_endpoint("mixed_text", _mixed_text_signature(
                    in_graph, forward, [t in pair_tasks for t in tasks], table, tasks[0]),
                    input_signature=[string, string, string])
        export_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=export_dir))
        try:
            archive.write_out(str(tmp), verbose=False)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        if merged:
            model.reset_adapter(tasks[0])
        model.set_active_adapters(active, skip_layers=skip)
        model.active_head = head_before
    return target


def _checked(model, input_ids, attention_mask, token_type_ids):
    """The id inputs, after checks a client's mistake would otherwise slip through silently:
    masks and token types broadcast against ids of another shape, and a negative id gathers
    some other row of the embeddings."""
    import tensorflow as tf

    cfg = model.bert.bert_config
    checks = [
        tf.debugging.assert_equal(tf.shape(attention_mask), tf.shape(input_ids), message=(
            "attention_mask must have the shape of input_ids")),
        tf.debugging.assert_equal(tf.shape(token_type_ids), tf.shape(input_ids), message=(
            "token_type_ids must have the shape of input_ids")),
        tf.debugging.assert_non_negative(input_ids, message="input_ids must be >= 0"),
        tf.debugging.assert_less(input_ids, tf.constant(cfg.vocab_size, input_ids.dtype), message=(
            f"input_ids must be below the vocabulary size {cfg.vocab_size}")),
        tf.debugging.assert_non_negative(token_type_ids, message="token_type_ids must be >= 0"),
        tf.debugging.assert_less(token_type_ids, tf.constant(cfg.type_vocab_size, token_type_ids.dtype),
                                 message=f"token_type_ids must be below {cfg.type_vocab_size}"),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(input_ids), tf.identity(attention_mask), tf.identity(token_type_ids)


def _id_signature(model, task, setup):
    """The id-input serving function of one task (a closure: no extra traced arguments)."""

    def forward(input_ids, attention_mask, token_type_ids):
        input_ids, attention_mask, token_type_ids = _checked(model, input_ids, attention_mask,
                                                             token_type_ids)
        # Runs at trace time: this signature's graph gets this task's setup.
        model.set_active_adapters(setup)
        model.active_head = task
        logits = model({"input_ids": input_ids, "attention_mask": attention_mask,
                        "token_type_ids": token_type_ids}, training=False)
        return _outputs(model.heads[task], logits)

    return forward


def _task_table(tasks):
    import tensorflow as tf

    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(tasks), tf.range(len(tasks), dtype=tf.int32)),
        default_value=-1)


def _task_indices(table, tasks, task):
    """Each row's task index; an unknown name fails the call, naming it and the known ones."""
    import tensorflow as tf

    ids = table.lookup(task)
    unknown = tf.boolean_mask(task, ids < 0)
    check = tf.debugging.Assert(tf.size(unknown) == 0, [
        f"unknown task in `task`; the known tasks are {', '.join(tasks)}; unknown:", unknown])
    with tf.control_dependencies([check]):
        return tf.identity(ids)


def _mixed_signature(model, tasks, setup, table):
    """The `mixed` serving function: each row through its `task`'s adapters and head.

    The rows are sorted by task once inside the encoder, so the base runs once over the batch
    and each task's adapters only on that task's rows.
    """
    import tensorflow as tf

    regression = tf.constant([model.heads[t].problem_type == "regression" for t in tasks])

    def mixed(input_ids, attention_mask, token_type_ids, task):
        from adapter_bert.composition import MultiTask

        input_ids, attention_mask, token_type_ids = _checked(model, input_ids, attention_mask,
                                                             token_type_ids)
        ids = _task_indices(table, tasks, task)
        model.set_active_adapters(setup)
        model.active_head = MultiTask(*tasks)
        logits = model({"input_ids": input_ids, "attention_mask": attention_mask,
                        "token_type_ids": token_type_ids, "task_ids": ids}, training=False)
        is_regression = tf.gather(regression, ids)
        regression_rows = is_regression[:, None]
        padding = tf.fill(tf.shape(logits), tf.constant(float("-inf"), logits.dtype))
        class_logits = tf.where(regression_rows, padding, logits)
        # Padding columns are -inf, so their probability is 0; regression rows have none.
        probabilities = tf.where(regression_rows, tf.zeros_like(logits),
                                 tf.nn.softmax(tf.where(regression_rows, tf.zeros_like(logits),
                                                        class_logits)))
        nan = tf.fill(tf.shape(ids), tf.constant(float("nan"), logits.dtype))
        return {"logits": class_logits, "probabilities": probabilities,
                "label": tf.where(is_regression, -1, tf.argmax(class_logits, -1, output_type=tf.int32)),
                "score": tf.where(is_regression, logits[:, 0], nan), "task_index": ids}

    return mixed


def _mixed_text_signature(in_graph, forward, pairs, table, known_task: str):
    """The `mixed_text` serving function: `text_a`, `text_b` (ignored for single-text tasks)
    and `task`, tokenized in the graph, each row as its task tokenizes it."""
    import tensorflow as tf

    is_pair = tf.constant(pairs)

    def mixed_text(text_a, text_b, task):
        single, pair = in_graph(text_a), in_graph(text_a, text_b)
        width = tf.maximum(tf.shape(single["input_ids"])[1], tf.shape(pair["input_ids"])[1])
        rows = tf.gather(is_pair, tf.maximum(table.lookup(task), 0))
        features = {}
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            a, b = (tf.pad(f[key], [[0, 0], [0, width - tf.shape(f[key])[1]]]) for f in (single, pair))
            features[key] = tf.where(rows[:, None], b, a)
        # Trim columns that are padding in every row, as the single-task signatures would.
        used = tf.reduce_max(tf.reduce_sum(features["attention_mask"], axis=1))
        features = {k: v[:, :used] for k, v in features.items()}
        return forward(features["input_ids"], features["attention_mask"], features["token_type_ids"],
                       task)

    # A placeholder row needs a task the table knows.
    return _empty_batch_safe(mixed_text, placeholders=("", "", known_task))


def _text_signature(in_graph, forward, pair: bool):
    """The raw-text serving function: in-graph tokenizer, then the id function."""

    def features_forward(features):
        return forward(features["input_ids"], features["attention_mask"], features["token_type_ids"])

    if pair:
        @_empty_batch_safe
        def text_forward(text_a, text_b):
            return features_forward(in_graph(text_a, text_b))
    else:
        @_empty_batch_safe
        def text_forward(text_a):
            return features_forward(in_graph(text_a))
    return text_forward


def _empty_batch_safe(text_forward, placeholders=None):
    """A text signature that answers a batch of no strings with empty outputs, as the id
    signatures do (the in-graph tokenizer needs at least one row: one placeholder row goes
    through and is cut off)."""
    import functools

    import tensorflow as tf

    @functools.wraps(text_forward)
    def safe(*texts):
        rows = tf.shape(texts[0])[0]
        fills = placeholders or ("",) * len(texts)
        texts = [tf.cond(rows > 0, lambda t=t: t, lambda f=f: tf.constant([f]))
                 for t, f in zip(texts, fills)]
        return {k: v[:rows] for k, v in text_forward(*texts).items()}

    return safe


def _is_pair_task(name: str) -> bool:
    from adapter_bert.glue.tasks import TASKS

    task = TASKS.get(name)
    return task is not None and task.text_b is not None
