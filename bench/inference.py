"""Inference throughput: the base model, the base with an active adapter, merged LoRA / (IA)^3.

    python bench/inference.py [--task mrpc] [--rounds 3] [--out /tmp/adapter_bert_bench]

One packaged-MiniLM model holds every method's adapter and one classification head; each variant
is a configuration of that model (so all share the same base weights and head) behind a fresh
`tf.function` with one trace for every sequence length:

- `base`: no adapter active;
- `<method>`: that method's adapter active (LoRA and (IA)^3 unmerged: their hooks run);
- `lora_merged`, `ia3_merged`: the adapter folded into the base weights by `merge_adapter`.

Adapters get non-zero random weights (LoRA's B starts at zero, which a benchmark must not rely
on). Each round times every variant over the task's whole dev split (batch 32, padded per batch
and to 128); a variant's figure is its median over rounds, so a slow moment on the machine hits
one round of every variant rather than one variant. Writes `<out>/inference.json`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import common

ADAPTERS = ("houlsby", "pfeiffer", "parallel", "lora", "ia3", "prefix")
MERGEABLE = ("lora", "ia3")


def dev_batches(task: str, padding: str):
    from adapter_bert import load_tokenizer
    from adapter_bert.glue.data import encode_examples, make_dataset, read_glue_tsv

    examples = read_glue_tsv(task, common.DATA_DIRS[task], "dev")
    encoded = encode_examples(load_tokenizer("all-minilm-l6-v2"), examples, max_seq_length=128)
    dataset = make_dataset(encoded, None, 32, padding=padding, max_seq_length=128)
    return [inputs for inputs, _ in dataset]


def build(task: str):
    """The base with one adapter per method (random non-zero weights) and one head."""
    import keras
    import numpy as np

    from adapter_bert import AdapterBertModel
    from adapter_bert.training import resolve_adapter_config

    keras.utils.set_random_seed(0)
    model = AdapterBertModel.from_pretrained("all-minilm-l6-v2")
    rng = np.random.default_rng(0)
    for method in ADAPTERS:
        config = resolve_adapter_config(common.training_args(method, task), model.config.hidden_size)
        model.add_adapter(method, config=config)
        for variable in model.adapters[method].trainable_weights:
            variable.assign(variable.numpy() + rng.normal(0, 0.02, variable.shape).astype("float32"))
    model.add_classification_head(task, num_labels=2, pooling="mean", set_active=True)
    return model


def configure(model, variant: str) -> None:
    """Puts the model in `variant`'s state: at most one adapter active, at most one merged."""
    for method in MERGEABLE:
        if model.adapters[method].merged:
            model.reset_adapter(method)
    model.set_active_adapters(None)
    if variant.endswith("_merged"):
        model.merge_adapter(variant.removesuffix("_merged"))
    elif variant != "base":
        model.set_active_adapters(variant)


def time_variant(model, batches) -> float:
    import tensorflow as tf

    spec = tf.TensorSpec([None, None], tf.int32)

    @tf.function(input_signature=[{k: spec for k in ("input_ids", "attention_mask", "token_type_ids")}])
    def predict(inputs):
        return model(inputs, training=False)

    # One untimed pass: oneDNN prepares its kernels per input shape, and each padded length is a
    # shape; without it the first variant timed would pay for every later one.
    for inputs in batches:
        predict(inputs).numpy()
    examples = 0
    start = time.perf_counter()
    for inputs in batches:
        examples += int(predict(inputs).numpy().shape[0])
    return examples / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="mrpc", choices=sorted(common.DATA_DIRS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT)
    args = parser.parse_args(argv)

    model = build(args.task)
    variants = ["base", *ADAPTERS, *(f"{m}_merged" for m in MERGEABLE)]
    figures = {}
    for padding, label in (("dynamic", "dynamic"), ("max_length", "fixed")):
        batches = dev_batches(args.task, padding)
        samples = {v: [] for v in variants}
        for round_index in range(args.rounds):
            for variant in variants:
                configure(model, variant)
                samples[variant].append(time_variant(model, batches))
            print(f"{label} round {round_index + 1}/{args.rounds}: "
                  + ", ".join(f"{v} {s[-1]:.0f}" for v, s in samples.items()), file=sys.stderr, flush=True)
        base = statistics.median(samples["base"])
        figures[label] = {
            v: {"examples_per_second": round(statistics.median(s), 1),
                "relative_to_base": round(statistics.median(s) / base, 4),
                "rounds": [round(x, 1) for x in s]}
            for v, s in samples.items()}
    configure(model, "base")
    report = {"benchmark": "inference", "machine": common.machine(), "task": args.task,
              "split": "dev", "batch_size": 32, "rounds": args.rounds,
              "command": " ".join([sys.executable] + sys.argv), "variants": figures}
    common.write_report(args.out, "inference", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
