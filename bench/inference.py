"""Inference throughput: the base model, the base with an active adapter, merged LoRA / (IA)^3.

    python bench/inference.py [--task mrpc] [--rounds 5] [--out /tmp/adapter_bert_bench]

One packaged-MiniLM model holds every method's adapter and one classification head; each variant
is a configuration of it with a `tf.function` of its own, traced once for every sequence length
while that configuration is set (which hooks run is baked into a trace):

- `base`: no adapter active; `base_control`: the same again, traced separately;
  `base_instance`: the same in a second model instance;
- `<method>`: that method's adapter active (LoRA and (IA)^3 unmerged: their hooks run);
- `lora_merged`, `ia3_merged`: the adapter folded into the base weights by `merge_adapter`, each
  in a model instance of its own (merging rewrites the base kernels every other variant reads);
- with `--bf16`, `base@bf16` and `houlsby@bf16`: the same weights in an instance built under
  Keras' mixed_bfloat16 policy, as `--mixed_precision bf16` builds it.

Adapters get non-zero random weights (LoRA's B starts at zero, which a benchmark must not rely
on). Before timing, every function is run again and must reproduce the outputs it gave when
traced, so no variant silently measures another's configuration.

The costs to resolve are a few percent, while this machine's speed drifts by tens of percent over
seconds, so variants are timed pairwise close in time: in each round, for every dev batch (batch
32; padded per batch, and to 128), every variant runs that batch once, in a shuffled order. A
variant's time for a batch is its median over rounds; its throughput is the dev split over the sum
of those medians. The controls measure the resolution: their deviation from `base` is what noise
(and, for `base_instance`, another instance) alone gives, and a smaller difference is not claimed. Writes `<out>/inference.json`.
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


def predict_function(model, batches):
    """A traced inference function for the model's current configuration, and its first outputs."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, None], tf.int32)

    @tf.function(input_signature=[{k: spec for k in ("input_ids", "attention_mask", "token_type_ids")}])
    def predict(inputs):
        return model(inputs, training=False)

    # Runs every batch once: the trace, and oneDNN's kernels for every padded length (a shape).
    outputs = [predict(inputs).numpy() for inputs in batches]
    return predict, outputs


def build_bf16(task: str):
    """`build`'s model, with the same weights, computing under Keras' mixed_bfloat16 policy
    (`--mixed_precision bf16`); the policy is put back after."""
    from adapter_bert.training import precision_policy

    with precision_policy("bf16"):
        return build(task)


def variant_functions(task: str, batches, bf16: bool = False) -> dict:
    """Every variant's traced function, checked to still give its own outputs after all are built.

    With `bf16`, also `base@bf16` and `houlsby@bf16`: a bf16 instance of the same weights,
    whose logits must agree with the float32 ones to bf16's precision."""
    import numpy as np

    functions, expected = {}, {}
    model = build(task)
    for variant in ("base", "base_control", *ADAPTERS):
        configure(model, "base" if variant == "base_control" else variant)
        functions[variant], expected[variant] = predict_function(model, batches)
    # Merged variants live in model instances of their own; so does this second control, which
    # shows what another instance alone changes.
    instance = build(task)
    configure(instance, "base")
    functions["base_instance"], expected["base_instance"] = predict_function(instance, batches)
    for method in MERGEABLE:
        merged = build(task)  # same seeds: the same weights as `model`
        configure(merged, f"{method}_merged")
        variant = f"{method}_merged"
        functions[variant], expected[variant] = predict_function(merged, batches)
        # Folding the adapter in must not change what it computes.
        np.testing.assert_allclose(expected[variant][0], expected[method][0], atol=1e-4)
    if bf16:
        half = build_bf16(task)
        for variant in ("base", "houlsby"):
            configure(half, variant)
            name = f"{variant}@bf16"
            functions[name], expected[name] = predict_function(half, batches)
            np.testing.assert_allclose(np.asarray(expected[name][0], "float32"),
                                       expected[variant][0], atol=0.1)
    for variant, predict in functions.items():
        np.testing.assert_allclose(predict(batches[0]).numpy(), expected[variant][0], atol=1e-5,
                                   err_msg=f"{variant} no longer computes its own configuration")
    return functions


def time_interleaved(functions: dict, batches, rounds: int, seed: int = 0) -> dict:
    """Seconds per (variant, batch, round), every variant running each batch close in time."""
    import numpy as np

    rng = np.random.default_rng(seed)
    names = list(functions)
    seconds = {name: [[] for _ in batches] for name in names}
    for round_index in range(rounds):
        for index, inputs in enumerate(batches):
            for name in rng.permutation(names):
                start = time.perf_counter()
                functions[name](inputs).numpy()
                seconds[name][index].append(time.perf_counter() - start)
        print(f"round {round_index + 1}/{rounds}: " + ", ".join(
            f"{name} {sum(s[-1] for s in seconds[name]):.2f}s" for name in names),
            file=sys.stderr, flush=True)
    return seconds


def summarise(seconds: dict, examples: int) -> dict:
    """Throughput from per-batch medians; relative_to_base > 1 is faster than the base."""
    total = {name: sum(statistics.median(batch) for batch in per_batch)
             for name, per_batch in seconds.items()}
    rounds = len(next(iter(seconds.values()))[0])
    return {name: {"examples_per_second": round(examples / t, 1),
                   "relative_to_base": round(total["base"] / t, 4),
                   "rounds": [round(examples / sum(batch[r] for batch in seconds[name]), 1)
                              for r in range(rounds)]}
            for name, t in total.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="mrpc", choices=sorted(common.DATA_DIRS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bf16", action="store_true",
                        help="also time the base and Houlsby in a bf16 instance (base@bf16, houlsby@bf16)")
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT)
    args = parser.parse_args(argv)

    paddings = {"dynamic": dev_batches(args.task, "dynamic"), "fixed": dev_batches(args.task, "max_length")}
    functions = variant_functions(args.task, [b for batches in paddings.values() for b in batches],
                                  bf16=args.bf16)
    figures = {}
    for label, batches in paddings.items():
        seconds = time_interleaved(functions, batches, args.rounds)
        figures[label] = summarise(seconds, sum(int(b["input_ids"].shape[0]) for b in batches))
        print(f"{label}: resolution " + ", ".join(
            f"{c} vs base {100 * abs(figures[label][c]['relative_to_base'] - 1):.1f}%"
            for c in ("base_control", "base_instance")), file=sys.stderr, flush=True)
    report = {"benchmark": "inference", "machine": common.machine(), "task": args.task,
              "split": "dev", "batch_size": 32, "rounds": args.rounds,
              "command": " ".join([sys.executable] + sys.argv), "variants": figures}
    common.write_report(args.out, "inference", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
