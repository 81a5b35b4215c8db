"""Training throughput (examples/s) of every method preset and of full fine-tuning, in one run.

    python bench/train_throughput.py [--task mrpc] [--steps 5] [--rounds 5] [--out /tmp/adapter_bert_bench]

Every method (a `common.VARIANTS` suffix allowed: `houlsby@bf16`, `houlsby@recompute`) trains
the packaged MiniLM through the training command's own pieces
(`build_model`, `make_optimizer`, `make_train_step`, one `tf.function` for all sequence lengths)
on the same batches of real GLUE training data, batch 32, dropout on. Four paddings are timed:

- `fixed`: every batch padded to 128 tokens (the dense layers still see only the real tokens:
  `BertEncoder.skip_padding`, the training command's default off TPU);
- `fixed_dense`: the same batches with `skip_padding` off, so every layer computes on the padding,
  as on TPU and as the PyTorch peers do;
- `dynamic`: each batch padded to its longest row (batches in the training command's order);
- `bucketed`: rows grouped by length into buckets 32/48/64/96/128, each batch padded to its longest.

The timed batches are spread evenly over one epoch (not its first few), so each padding's mean
length is the epoch's. After one untimed pass, `--rounds` rounds each time every method on those
batches in turn; a figure is the median over rounds (see `time_methods`). Each step is
synchronised by reading its loss. Writes `<out>/train_throughput.json`, and the timed batches to
`<out>/train_batches.npz` for `bench/peers.py --batches_npz`, which times the PyTorch peers on
exactly the same tensors in the same way.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import common

PADDINGS = {"fixed": dict(padding="max_length"), "fixed_dense": dict(padding="max_length"),
            "dynamic": dict(padding="dynamic"),
            "bucketed": dict(padding="dynamic", bucket_boundaries=common.BUCKETS)}
# Paddings timed with `BertEncoder.skip_padding` off. Their batches equal another padding's, so
# they are not saved for the peers (who compute on the padding at `fixed` already).
DENSE = {"fixed_dense": "fixed"}


def epoch_batches(task: str, paddings, steps: int, seed: int = 0) -> dict:
    """`steps` batches per padding, evenly spaced over one shuffled epoch of `task`'s train split."""
    import numpy as np

    from adapter_bert import load_tokenizer
    from adapter_bert.glue.data import encode_examples, label_array, make_dataset, read_glue_tsv

    examples = read_glue_tsv(task, common.DATA_DIRS[task], "train")
    encoded = encode_examples(load_tokenizer("all-minilm-l6-v2"), examples, max_seq_length=128)
    labels = label_array(task, examples)
    chosen = {}
    for name in paddings:
        if name in DENSE and DENSE[name] in chosen:
            chosen[name] = chosen[DENSE[name]]
            continue
        dataset = make_dataset(encoded, labels, 32, shuffle=True, seed=seed, drop_remainder=True,
                               max_seq_length=128, **PADDINGS[name])
        batches = list(dataset)
        picks = np.linspace(0, len(batches) - 1, steps).round().astype(int)
        chosen[name] = [batches[i] for i in picks]
    return chosen


def save_batches(path: Path, batches: dict) -> None:
    """Writes the timed batches for bench/peers.py, so the PyTorch peers time the same tensors."""
    import numpy as np

    arrays = {}
    for padding, chosen in batches.items():
        if padding in DENSE:
            continue
        for index, (inputs, labels) in enumerate(chosen):
            for name, value in inputs.items():
                arrays[f"{padding}__{index}__{name}"] = value.numpy()
            arrays[f"{padding}__{index}__labels"] = labels.numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def make_step(method: str, task: str, skip_padding: bool = True):
    """The training command's compiled step for `method` (a `common.VARIANTS` suffix allowed),
    and its parameter counts.

    `skip_padding` is read when the step is traced, so a dense step needs a model of its own.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    from adapter_bert.training import make_optimizer, make_train_step

    keras.utils.set_random_seed(0)
    args, objective, model = common.build_benchmark_model(method, task)
    model.bert.skip_padding = skip_padding
    _, optimizer = make_optimizer(args, total_steps=1000)
    trainable = model.trainable_weights
    optimizer.build(trainable)
    spec = tf.TensorSpec([None, None], tf.int32)
    step = tf.function(make_train_step(model, optimizer, trainable, objective.loss(args.batch_size),
                                       max_grad_norm=args.max_grad_norm),
                       input_signature=[{k: spec for k in ("input_ids", "attention_mask", "token_type_ids")},
                                        tf.TensorSpec([None], tf.int32)])
    counts = {"trainable_params": int(sum(np.prod(v.shape) for v in trainable)),
              "total_params": int(sum(np.prod(v.shape) for v in model.weights))}
    return step, counts


def time_pass(step, chosen) -> tuple[float, int, int]:
    """Seconds, examples and padded tokens of one pass of `step` over `chosen`."""
    examples = tokens = 0
    start = time.perf_counter()
    for inputs, labels in chosen:
        float(step(inputs, labels))  # reading the loss waits for the step
        examples += int(labels.shape[0])
        tokens += int(inputs["input_ids"].shape[0] * inputs["input_ids"].shape[1])
    return time.perf_counter() - start, examples, tokens


def time_methods(methods, task: str, batches: dict, rounds: int) -> dict:
    """Median examples/s of every method and padding over `rounds` interleaved rounds.

    All methods' models are built first. One untimed pass over the very batches timed comes first
    (oneDNN builds its kernels per input shape, and each padded length is a shape, so the first
    method timed would otherwise pay for every later one). Then each round times every method in
    turn, so a slow spell of the machine lands in one round of several methods, not in all rounds
    of one; the median over rounds discards it.
    """
    import statistics

    steps, figures = {}, {}
    for method in methods:
        for padding, chosen in batches.items():
            dense = padding in DENSE
            if (method, dense) not in steps:
                steps[method, dense], counts = make_step(method, task, skip_padding=not dense)
                figures.setdefault(method, counts)
            time_pass(steps[method, dense], chosen)
    samples = {(m, p): [] for m in methods for p in batches}
    for round_index in range(rounds):
        for padding, chosen in batches.items():
            for method in methods:
                seconds, examples, tokens = time_pass(steps[method, padding in DENSE], chosen)
                samples[method, padding].append((examples / seconds, tokens / examples))
        print(f"round {round_index + 1}/{rounds}: " + ", ".join(
            f"{m}/{p} {v[-1][0]:.1f}" for (m, p), v in samples.items()), file=sys.stderr, flush=True)
    for (method, padding), values in samples.items():
        rates = [rate for rate, _ in values]
        figures[method][padding] = {
            "examples_per_second": round(statistics.median(rates), 2),
            "mean_padded_length": round(values[0][1], 1), "steps_per_round": len(batches[padding]),
            "rounds": [round(r, 2) for r in rates]}
    gc.collect()
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="mrpc", choices=sorted(common.DATA_DIRS))
    parser.add_argument("--methods", default=",".join(common.METHODS))
    parser.add_argument("--paddings", default=",".join(PADDINGS))
    parser.add_argument("--steps", type=int, default=5, help="batches timed per round, method and padding")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT)
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    paddings = [p for p in args.paddings.split(",") if p]
    unknown = (sorted(m for m in methods if not common.known_method(m))
               + sorted(set(paddings) - set(PADDINGS)))
    if unknown:
        parser.error(f"unknown method or padding: {', '.join(unknown)}")

    batches = epoch_batches(args.task, paddings, args.steps)
    save_batches(args.out / "train_batches.npz", batches)
    results = time_methods(methods, args.task, batches, args.rounds)
    report = {"benchmark": "train_throughput", "machine": common.machine(), "task": args.task,
              "batch_size": 32, "max_seq_length": 128, "steps": args.steps, "rounds": args.rounds,
              "command": " ".join([sys.executable] + sys.argv), "methods": results}
    if "houlsby" in results and "full" in results:
        report["houlsby_over_full"] = {
            p: round(results["houlsby"][p]["examples_per_second"] / results["full"][p]["examples_per_second"], 3)
            for p in paddings}
    for method in results:
        base, variant = common.split_variant(method)
        if variant and base in results:
            report.setdefault(f"{variant}_over_plain", {})[base] = {
                p: round(results[method][p]["examples_per_second"]
                         / results[base][p]["examples_per_second"], 3) for p in paddings}
    for baseline in ("fixed", "fixed_dense"):
        if baseline in paddings and "bucketed" in paddings:
            report[f"bucketed_over_{baseline}"] = {
                m: round(r["bucketed"]["examples_per_second"] / r[baseline]["examples_per_second"], 3)
                for m, r in results.items()}
    common.write_report(args.out, "train_throughput", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
