"""Dev accuracy of every method on MRPC and SST-2, over several seeds, with trainable fractions.

    python bench/accuracy.py [--tasks mrpc,sst2] [--methods houlsby,...,full] [--seeds 0,1,2]
                             (a method may carry a `common.VARIANTS` suffix: houlsby@bf16)
                             [--learning_rate LR] [--bottleneck_size N] [--out /tmp/adapter_bert_bench]
    python bench/accuracy.py --tasks mrpc --methods compacter,...,direft --mrpc_train_examples 1000 \
                             --epochs 2 --out /tmp/adapter_bert_bench/checks/newer_methods

Each (task, method, seed) is one run of the training command, in a child process:

    python run_tf_adapter_bert.py --casing all-minilm-l6-v2 --task T --method M (or
        --adapter_config M for the newer methods, which have no preset)
        [--bottleneck_size 32 for houlsby] --pooling mean --batch_size 32 --max_seq_length 128
        --bucket_boundaries 32,48,64,96,128 --learning_rate LR(M) --warmup_ratio 0.1 --epochs E
        --seed S --data_dir ../shared/data/glue/<T> --nopredict_test --noexport

The learning rates are those of `flags/methods/`; `--learning_rate` replaces them for every method
run, and `--bottleneck_size` the bottleneck methods' width, for checks kept apart from the main
grid (`--out /tmp/adapter_bert_bench/checks/<name>`, which `bench/report.py` lists beside the
presets' figures). SST-2 trains on a fixed random subset of
`--sst2_train_examples` sentences (the same subset for every seed and method; full dev set),
because its 67k sentences take about an hour an epoch on 2 cores. A run whose `results.json`
already exists is not repeated, so an interrupted benchmark resumes where it stopped;
`--collect_only` trains nothing and summarises the runs that have finished.

Per task and method the report gives the main metric (MRPC F1, SST-2 accuracy) at the final and
at the best dev epoch as mean, sample standard deviation and min/max over seeds, the trainable
parameter fraction, and the per-run figures. Writes `<out>/accuracy.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common

TASK_DIRS = {"mrpc": "MRPC", "sst2": "SST-2"}


# The methods whose preset `--bottleneck_size` resizes (adapter_bert.methods.bottleneck).
BOTTLENECK_METHODS = ("houlsby", "pfeiffer", "parallel")


def run_command(task: str, method: str, seed: int, epochs: int, out: Path,
                train_examples: int | None, learning_rate: float | None = None,
                bottleneck_size: int | None = None) -> list[str]:
    overrides = {} if learning_rate is None else {"learning_rate": learning_rate}
    if bottleneck_size is not None:
        overrides["bottleneck_size"] = bottleneck_size
    name, variant = common.split_variant(method)
    args = common.training_args(name, task, **overrides, **common.VARIANTS.get(variant, {}))
    chosen = f"--method={args.method}" if args.method else f"--adapter_config={args.adapter_config}"
    command = [sys.executable, str(common.REPO / "run_tf_adapter_bert.py"),
               f"--casing={args.casing}", f"--task={task}", chosen,
               f"--pooling={args.pooling}", f"--batch_size={args.batch_size}",
               f"--max_seq_length={args.max_seq_length}",
               "--bucket_boundaries=" + ",".join(map(str, common.BUCKETS)),
               f"--learning_rate={args.learning_rate}", f"--warmup_ratio={args.warmup_ratio}",
               f"--epochs={epochs}", f"--seed={seed}", f"--data_dir={args.data_dir}",
               f"--saved_models_dir={out}", "--nopredict_test", "--noexport", "--log_every=40"]
    if args.bottleneck_size:
        command.append(f"--bottleneck_size={args.bottleneck_size}")
    if args.adapter_drop:
        command.append(f"--adapter_drop={args.adapter_drop}")
    if train_examples:
        command.append(f"--max_train_examples={train_examples}")
    if args.mixed_precision:
        command.append(f"--mixed_precision={args.mixed_precision}")
    if args.recompute_attention:
        command.append("--recompute_attention")
    return command


def summarise(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "min": round(min(values), 4), "max": round(max(values), 4), "n": len(values)}


def collect(task: str, method: str, runs: list[dict]) -> dict:
    metric = runs[0]["main_metric"]
    return {"main_metric": metric,
            "final": summarise([r["final"]["dev"][metric] for r in runs]),
            "best_epoch": summarise([r["best"]["dev"][metric] for r in runs]),
            "trainable_params": runs[0]["trainable_params"], "total_params": runs[0]["total_params"],
            "trainable_fraction": round(runs[0]["trainable_params"] / runs[0]["total_params"], 5),
            # The settings a check may change from the preset (bench/report.py's checks table).
            "learning_rate": runs[0]["args"].get("learning_rate"), "epochs": runs[0]["args"].get("epochs"),
            "bottleneck_size": runs[0]["args"].get("bottleneck_size"),
            "train_examples": runs[0]["args"].get("max_train_examples"),
            "runs": [{"seed": r["args"]["seed"], "final": r["final"]["dev"], "best": r["best"],
                      "train_examples_per_second": round(r["train_examples_per_second"], 1),
                      "wall_seconds": round(r["wall_seconds"], 1)} for r in runs]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="mrpc,sst2")
    parser.add_argument("--methods", default=",".join(common.PRESETS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--sst2_train_examples", type=int, default=2000)
    parser.add_argument("--mrpc_train_examples", type=int, default=None,
                        help="train MRPC on a fixed subset of this many pairs (default: all)")
    parser.add_argument("--learning_rate", type=float, default=None,
                        help="one rate for every method instead of the presets' (for checks)")
    parser.add_argument("--bottleneck_size", type=int, default=None,
                        help="the bottleneck width of houlsby, pfeiffer and parallel (for checks)")
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT)
    parser.add_argument("--collect_only", action="store_true",
                        help="train nothing: summarise the runs that have finished")
    args = parser.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    methods = [m for m in args.methods.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if args.learning_rate is not None and args.learning_rate <= 0:
        parser.error(f"--learning_rate must be positive, got {args.learning_rate}")
    unknown = (sorted(set(tasks) - set(TASK_DIRS))
               + sorted(m for m in methods if not common.known_method(m)))
    if unknown:
        parser.error(f"unknown task or method: {', '.join(unknown)}")
    if args.bottleneck_size is not None:
        if args.bottleneck_size <= 0:
            parser.error(f"--bottleneck_size must be positive, got {args.bottleneck_size}")
        other = [m for m in methods if common.split_variant(m)[0] not in BOTTLENECK_METHODS]
        if other:
            parser.error(f"--bottleneck_size applies to {', '.join(BOTTLENECK_METHODS)} only, "
                         f"not {', '.join(other)}")

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    report = {"benchmark": "accuracy", "machine": common.machine(), "epochs": args.epochs,
              "sst2_train_examples": args.sst2_train_examples,
              "mrpc_train_examples": args.mrpc_train_examples, "seeds": seeds,
              "learning_rates": {m: common.LEARNING_RATES[common.split_variant(m)[0]]
                                 if args.learning_rate is None else args.learning_rate
                                 for m in methods},
              "command": " ".join([sys.executable] + sys.argv), "tasks": {}}
    for task in tasks:
        report["tasks"][task] = {}
        for method in methods:
            runs = []
            for seed in seeds:
                run_dir = args.out / "accuracy_runs" / task / method / f"seed{seed}"
                results_file = run_dir / task / "results.json"
                if not results_file.is_file():
                    if args.collect_only:
                        continue
                    examples = (args.sst2_train_examples if task == "sst2"
                                else args.mrpc_train_examples)
                    command = run_command(task, method, seed, args.epochs, run_dir, examples,
                                          args.learning_rate, args.bottleneck_size)
                    print(f"[{time.strftime('%H:%M:%S')}] {task} {method} seed {seed}: "
                          + " ".join(command[1:]), file=sys.stderr, flush=True)
                    subprocess.run(command + ["--overwrite"], check=True, env=env)
                runs.append(json.loads(results_file.read_text()))
            if not runs:
                continue
            report["tasks"][task][method] = collect(task, method, runs)
            summary = report["tasks"][task][method]
            print(f"{task} {method}: final {summary['final']['mean']:.4f} ± {summary['final']['std']:.4f}, "
                  f"best {summary['best_epoch']['mean']:.4f}", file=sys.stderr, flush=True)
    common.write_report(args.out, "accuracy", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
