"""Arithmetic efficiency of training steps: useful FLOPs per second over the bare matmul rate.

    python bench/efficiency.py [--methods houlsby,full] [--paddings dynamic,bucketed] \
        [--steps 5] [--rounds 3] [--out /tmp/adapter_bert_bench]

In one process: the training steps of `--methods` are timed as `bench/train_throughput.py` times
them (the same batches, interleaved rounds, medians), then the three matmul shapes of a BERT
layer are timed as `bench/matmul_peak.py` times them, on the timed batches' mean real-token
count. A method's efficiency is the useful arithmetic of its steps divided by their time,
over that matmul rate: 100% would be a step that does nothing but its useful matmuls, each as
fast as a bare TensorFlow matmul of that shape.

Useful arithmetic counts real tokens only (padding is not useful work), as multiply-adds x 2:
- forward: every layer's dense layers (4·H² + 2·H·I per token), its attention (2·n²·H per example
  of n real tokens: the scores and the weighted sum of the values), and the matrices the method
  adds inside the layers (their weights' count per token: a bottleneck's, LoRA's matrices);
- backward, input gradients: the same dense and attention arithmetic again (attention twice:
  four batched matmuls) for every layer above the lowest layer that holds a trained weight
  (the embeddings for full fine-tuning, so every layer); the lowest layer's partial backward
  pass is not counted (its dense layers' input gradients below the adapter), which makes an
  adapter method's figure a slight underestimate;
- backward, weight gradients: once more the arithmetic of every trained matrix, the method's
  and the base's (all of them for full fine-tuning); the method's matrices also pass their
  input gradients back.
Elementwise work (LayerNorm, GELU, softmax, dropout), the head and the optimizer count as zero:
they are the overhead the figure shows. Methods whose trained weights do not act per token
(prefix and prompt tuning's tables, ReFT) are refused. The matmul rate is float32's, so a
`@bf16` row's fraction compares its speed with float32 arithmetic, not with bf16's own ceiling.
Writes `<out>/efficiency.json`.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

import common
import matmul_peak
import train_throughput

PER_TOKEN_METHODS = ("houlsby", "pfeiffer", "parallel", "lora", "ia3", "bitfit", "full",
                     "houlsby_drop1", "houlsby_drop2", "houlsby_drop3", "lora_drop3")
LAYER_INDEX = re.compile(r"(?:^|/)layer_(\d+)(?=[/_.]|$)")


def trained_matrices(model) -> tuple[int, int, int | None]:
    """`(adapter, base, lowest)`: per-token multiply-adds of the trained 2-D weights inside the
    layers that the method added and of those of the base it trains, and the lowest layer that
    holds a trained weight (-1: below the first layer, e.g. the embeddings; None: none)."""
    import numpy as np

    base_paths = {w.path for w in model.bert.weights}
    head_paths = {w.path for head in model.heads.values() for w in head.weights}
    adapter = base = 0
    lowest = None
    for weight in model.trainable_weights:
        if weight.path in head_paths or "pooler" in weight.path:
            continue
        match = LAYER_INDEX.search(weight.path)
        layer = int(match.group(1)) if match else -1
        lowest = layer if lowest is None else min(lowest, layer)
        if len(weight.shape) != 2 or "embeddings" in weight.path:
            continue
        if weight.path in base_paths:
            base += int(np.prod(weight.shape))
        else:
            adapter += int(np.prod(weight.shape))
    return adapter, base, lowest


def useful_flops(batches, config, adapter_macs: int, base_macs: int, lowest: int | None) -> float:
    """Useful FLOPs of one pass over `batches` (see the module docstring): `adapter_macs` and
    `base_macs` are `trained_matrices`' per-token counts, `lowest` its lowest trained layer."""
    import numpy as np

    hidden, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    dense = 4 * hidden * hidden + 2 * hidden * inner
    backward_layers = 0 if lowest is None else layers - 1 - lowest
    total = 0.0
    for inputs, _ in batches:
        lengths = np.asarray(inputs["attention_mask"]).sum(axis=1).astype("float64")
        tokens = float(lengths.sum())
        attention = float((2 * lengths ** 2 * hidden).sum())  # per layer
        forward = layers * (tokens * dense + attention) + tokens * adapter_macs
        backward = (backward_layers * (tokens * dense + 2 * attention)
                    + tokens * (2 * adapter_macs + base_macs))
        total += 2 * (forward + backward)
    return total


def layer_matmul_rate(tokens: int, hidden: int, inner: int, repeats: int) -> dict:
    """GFLOP/s of one layer's matmuls at `tokens` rows: four projections, FFN in, FFN out."""
    shapes = {"attention projection": (tokens, hidden, hidden), "FFN in": (tokens, hidden, inner),
              "FFN out": (tokens, inner, hidden)}
    timed = {name: matmul_peak.time_matmul(*shape, repeats) for name, shape in shapes.items()}
    seconds = (4 * timed["attention projection"]["median_ms"] + timed["FFN in"]["median_ms"]
               + timed["FFN out"]["median_ms"]) / 1e3
    flops = 2 * tokens * (4 * hidden * hidden + 2 * hidden * inner)
    return {"matmuls": timed, "layer_gflops": round(flops / seconds / 1e9, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="mrpc", choices=sorted(common.DATA_DIRS))
    parser.add_argument("--methods", default="houlsby,full")
    parser.add_argument("--paddings", default="dynamic,bucketed")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=30, help="calls per matmul shape")
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT)
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    paddings = [p for p in args.paddings.split(",") if p]
    unknown = (sorted(m for m in methods if not common.known_method(m)
                      or common.split_variant(m)[0] not in PER_TOKEN_METHODS)
               + sorted(set(paddings) - set(train_throughput.PADDINGS)))
    if unknown:
        parser.error(f"unknown or not per-token method, or unknown padding: {', '.join(unknown)} "
                     f"(methods: {', '.join(PER_TOKEN_METHODS)})")

    batches = train_throughput.epoch_batches(args.task, paddings, args.steps)
    timed = train_throughput.time_methods(methods, args.task, batches, args.rounds)
    import numpy as np

    real_tokens = [float(np.asarray(inputs["attention_mask"]).sum())
                   for chosen in batches.values() for inputs, _ in chosen]
    mean_tokens = int(round(statistics.mean(real_tokens)))
    results = {}
    config = None
    for method in methods:
        model = common.build_benchmark_model(method, args.task)[2]
        config = model.bert.bert_config
        adapter, base, lowest = trained_matrices(model)
        entry = {"adapter_macs_per_token": adapter, "trained_base_macs_per_token": base,
                 "lowest_trained_layer": lowest, "paddings": {}}
        for padding, chosen in batches.items():
            examples = sum(int(labels.shape[0]) for _, labels in chosen)
            per_example = useful_flops(chosen, config, adapter, base, lowest) / examples
            rate = timed[method][padding]["examples_per_second"]
            entry["paddings"][padding] = {"examples_per_second": rate,
                                          "useful_gflop_per_example": round(per_example / 1e9, 3),
                                          "useful_gflops": round(per_example * rate / 1e9, 1)}
        results[method] = entry
    peak = layer_matmul_rate(mean_tokens, config.hidden_size, config.intermediate_size,
                             args.repeats)
    for method, entry in results.items():
        for padding, figure in entry["paddings"].items():
            figure["fraction_of_matmul_rate"] = round(figure["useful_gflops"] / peak["layer_gflops"], 3)
            print(f"{method}/{padding}: {figure['useful_gflops']} useful GFLOP/s = "
                  f"{100 * figure['fraction_of_matmul_rate']:.1f}% of {peak['layer_gflops']} "
                  f"GFLOP/s", file=sys.stderr)
    report = {"benchmark": "efficiency", "machine": common.machine(), "task": args.task,
              "batch_size": 32, "steps": args.steps, "rounds": args.rounds,
              "command": " ".join([sys.executable] + sys.argv),
              "mean_real_tokens_per_batch": mean_tokens, "matmul_rate": peak,
              "methods": results}
    common.write_report(args.out, "efficiency", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
