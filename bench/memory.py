"""Peak memory (RSS) and optimizer-state size of adapter training vs full fine-tuning.

    python bench/memory.py [--task mrpc] [--steps 4] [--paddings fixed,bucketed]
                           [--out /tmp/adapter_bert_bench]

Each method (a `common.VARIANTS` suffix allowed: `houlsby@recompute`) trains in a child process
of its own (peak RSS is per process), through the training command's pieces, for `--steps` steps
of batch 32 on real GLUE training data, once per padding:

- `fixed`: every batch padded to 128 tokens, the largest activations a run can meet;
- `bucketed`: the training command as the accuracy runs use it (length buckets, each batch padded
  to its longest row); the `--steps` heaviest batches of one shuffled epoch are trained, so the
  peak is that of a whole epoch without running one. This is the setup the issue's PyTorch
  reference (dynamic padding) was measured in.

The child reports its peak RSS after loading the model and after training, its activation
memory (the peak of the steps, VmHWM reset just before the first, minus the RSS then:
activations, the traced step and its kernels), and the bytes of the optimizer's variables
(AdamW's two moments per trainable weight, plus its step counter). Writes `<out>/memory.json`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import common


PADDINGS = ("fixed", "bucketed")


def heaviest_batches(task: str, padding: str, steps: int):
    """The batches a child trains on: the first `steps` at 128 tokens, or an epoch's heaviest."""
    from adapter_bert import load_tokenizer
    from adapter_bert.glue.data import encode_examples, label_array, make_dataset, read_glue_tsv

    examples = read_glue_tsv(task, common.DATA_DIRS[task], "train")
    if padding == "fixed":
        examples = examples[: 32 * steps]
        options = dict(padding="max_length")
    else:
        options = dict(padding="dynamic", bucket_boundaries=common.BUCKETS, shuffle=True, seed=0)
    encoded = encode_examples(load_tokenizer("all-minilm-l6-v2"), examples, max_seq_length=128)
    batches = list(make_dataset(encoded, label_array(task, examples), 32, max_seq_length=128,
                                **options))
    # Padded tokens per batch rank the batches; a bucket's short last batch weighs little.
    batches.sort(key=lambda batch: -int(batch[0]["input_ids"].shape[0] * batch[0]["input_ids"].shape[1]))
    return batches[:steps]


def status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: resident now; VmHWM: its peak), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> None:
    """Starts VmHWM again from the current RSS, so a peak of loading is not taken for training's."""
    Path("/proc/self/clear_refs").write_text("5")


def child(method: str, task: str, steps: int, padding: str) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from adapter_bert.training import make_optimizer, make_train_step

    batches = heaviest_batches(task, padding, steps)
    keras.utils.set_random_seed(0)
    args, objective, model = common.build_benchmark_model(method, task)
    loaded_mb = common.peak_rss_mb()
    _, optimizer = make_optimizer(args, total_steps=1000)
    trainable = model.trainable_weights
    optimizer.build(trainable)
    step = tf.function(make_train_step(model, optimizer, trainable, objective.loss(32),
                                       max_grad_norm=args.max_grad_norm), reduce_retracing=True)
    before_steps_mb = status_mb("VmRSS")
    reset_peak_rss()
    for inputs, labels in batches:
        float(step(inputs, labels))

    def nbytes(variables):
        return int(sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize for v in variables))

    peak_mb = common.peak_rss_mb()
    return {"peak_rss_mb": round(peak_mb, 1), "rss_after_model_load_mb": round(loaded_mb, 1),
            "rss_before_first_step_mb": round(before_steps_mb, 1),
            "activation_mb": round(status_mb("VmHWM") - before_steps_mb, 1),
            "optimizer_state_mb": round(nbytes(optimizer.variables) / 2**20, 2),
            "trainable_weights_mb": round(nbytes(trainable) / 2**20, 2),
            "model_weights_mb": round(nbytes(model.weights) / 2**20, 2),
            "trainable_params": int(sum(np.prod(v.shape) for v in trainable)), "steps": len(batches),
            "padded_lengths": [int(inputs["input_ids"].shape[1]) for inputs, _ in batches]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="mrpc", choices=sorted(common.DATA_DIRS))
    parser.add_argument("--methods", default=",".join(common.PRESETS))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--paddings", default=",".join(PADDINGS))
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    paddings = [p for p in args.paddings.split(",") if p]
    if args.child:
        print(json.dumps(child(args.child, args.task, args.steps, paddings[0])))
        return 0
    methods = [m for m in args.methods.split(",") if m]
    unknown = (sorted(m for m in methods if not common.known_method(m))
               + sorted(set(paddings) - set(PADDINGS)))
    if unknown:
        parser.error(f"unknown method or padding: {', '.join(unknown)}")
    report = {"benchmark": "memory", "machine": common.machine(), "task": args.task, "batch_size": 32,
              "max_seq_length": 128, "command": " ".join([sys.executable] + sys.argv), "paddings": {}}
    for padding in paddings:
        results = {}
        for method in methods:
            print(f"{method}/{padding}: training {args.steps} steps in a child process",
                  file=sys.stderr, flush=True)
            run = subprocess.run([sys.executable, __file__, "--child", method, "--task", args.task,
                                  "--steps", str(args.steps), "--paddings", padding],
                                 check=True, capture_output=True, text=True)
            results[method] = json.loads(run.stdout.strip().splitlines()[-1])
            print(f"{method}/{padding}: {results[method]}", file=sys.stderr, flush=True)
        entry = {"methods": results}
        if "full" in results:
            for figure in ("peak_rss_mb", "activation_mb"):
                full = results["full"][figure]
                entry[f"{figure[:-3]}_below_full"] = {m: round(1 - r[figure] / full, 3)
                                                      for m, r in results.items() if m != "full"}
        report["paddings"][padding] = entry
    common.write_report(args.out, "memory", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
