"""Serving a batch that mixes tasks: the `mixed` signature against sorted and single-task calls.

    python bench/mixed_serving.py --rounds 5 --out /tmp/adapter_bert_bench

One SavedModel of the packaged MiniLM with four task adapters (Houlsby, or `--methods` one per
task) is loaded with `tf.saved_model.load`, as a server would. Requests are 32 real MRPC dev
pairs each (dynamic padding), their rows assigned to the four tasks at random. Three ways to
serve the same rows are timed in interleaved rounds (medians over rounds):

- `mixed`: one call of the `mixed` signature, a task name per row;
- `sorted`: the rows sorted by task into four calls of the tasks' own signatures;
- `single`: one call of one task's signature on all 32 rows (what a single-task batch costs).

Writes `<out>/mixed_serving.json` with examples/s and the ratios mixed / single and
mixed / sorted.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np

import common

TASKS = ("t0", "t1", "t2", "t3")
METHODS = {"houlsby": "double_seq_bn[reduction_factor=12, init_weights='houlsby', "
                      "task_layer_norm=True, non_linearity='gelu']",
           "pfeiffer": "seq_bn", "lora": "lora", "prefix": "prefix_tuning_flat[prefix_length=10]"}


def _requests(batch: int, count: int, seed: int):
    from adapter_bert import load_tokenizer
    from adapter_bert.glue.data import read_glue_tsv
    from adapter_bert.glue.tasks import get_task

    tokenizer = load_tokenizer("all-minilm-l6-v2")
    examples = read_glue_tsv(get_task("mrpc"), common.DATA_DIRS["mrpc"], "dev")
    rng = np.random.default_rng(seed)
    requests = []
    for index in range(count):
        rows = [examples[i] for i in rng.choice(len(examples), batch, replace=False)]
        features = tokenizer.encode([r.text_a for r in rows], [r.text_b for r in rows],
                                    max_seq_length=128)
        tasks = rng.choice(len(TASKS), batch)
        requests.append(({k: np.asarray(v, "int32") for k, v in features.items()}, tasks))
    return requests


def _export(methods: list[str], directory: str) -> str:
    import keras

    from adapter_bert import AdapterBertModel
    from adapter_bert.export import export_saved_model

    keras.utils.set_random_seed(0)
    model = AdapterBertModel.from_pretrained("all-minilm-l6-v2")
    for task, method in zip(TASKS, methods):
        model.add_adapter(task, config=METHODS[method])
        model.add_classification_head(task, num_labels=2, pooling="mean")
    model.freeze_model()
    return str(export_saved_model(model, directory, list(TASKS)))


def _time(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="houlsby,houlsby,houlsby,houlsby",
                        help=f"one per task, of {', '.join(METHODS)}")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", type=common.Path, default=common.DEFAULT_OUT)
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    if len(methods) != len(TASKS) or any(m not in METHODS for m in methods):
        parser.error(f"--methods needs {len(TASKS)} of {', '.join(METHODS)}, got {args.methods!r}")
    if min(args.rounds, args.requests, args.batch) <= 0:
        parser.error("--rounds, --requests and --batch must be positive")
    import tensorflow as tf

    requests = _requests(args.batch, args.requests, seed=0)
    with tempfile.TemporaryDirectory() as directory:
        loaded = tf.saved_model.load(_export(methods, directory))
        signatures = {name: loaded.signatures[name] for name in list(TASKS) + ["mixed"]}

        def mixed(features, tasks):
            signatures["mixed"](**{k: tf.constant(v) for k, v in features.items()},
                                task=tf.constant([TASKS[t] for t in tasks]))

        def sorted_calls(features, tasks):
            for index, task in enumerate(TASKS):
                rows = np.flatnonzero(tasks == index)
                if rows.size:
                    part = {k: v[rows] for k, v in features.items()}
                    width = int(part["attention_mask"].sum(1).max())  # its own longest row
                    signatures[task](**{k: tf.constant(v[:, :width]) for k, v in part.items()})

        def single(features, tasks):
            signatures[TASKS[0]](**{k: tf.constant(v) for k, v in features.items()})

        ways = {"mixed": mixed, "sorted": sorted_calls, "single": single}
        for way in ways.values():  # trace and warm up every signature and shape
            for features, tasks in requests:
                way(features, tasks)
        seconds = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, way in ways.items():
                seconds[name].append(sum(_time(lambda f=f, t=t: way(f, t)) for f, t in requests))
    examples = args.batch * args.requests
    rate = {name: examples / statistics.median(values) for name, values in seconds.items()}
    common.write_report(args.out, "mixed_serving", {
        "machine": common.machine(), "methods": dict(zip(TASKS, methods)), "batch": args.batch,
        "requests": args.requests, "rounds": args.rounds,
        "examples_per_second": rate, "seconds_per_round": seconds,
        "mixed_over_single": rate["mixed"] / rate["single"],
        "mixed_over_sorted": rate["mixed"] / rate["sorted"]})


if __name__ == "__main__":
    main()
