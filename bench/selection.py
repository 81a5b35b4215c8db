"""The paper's selection protocol (`python -m adapter_bert.sweep`) on MRPC and an SST-2 subset, for
Houlsby adapters and full fine-tuning: the grid, every cell's mean dev score, the winner.

    python bench/selection.py [--tasks mrpc,sst2] [--train_examples 1000] [--epochs 2]
                              [--seeds 0,1] [--out /tmp/adapter_bert_bench/selection]

The grids are small cuts of Houlsby et al.'s (learning rate x adapter size for the adapters,
learning rate for full fine-tuning) so that the whole benchmark fits in half an hour on 2 cores;
every run uses the benchmarks' common settings (`bench/common.py`: packaged MiniLM, batch 32,
mean pooling, sequence length 128) on a fixed random subset of `--train_examples` training
examples per task and the full dev sets. Runs resume like the sweep command's. Writes
`<out>/selection.json` (and each sweep's own `sweep.json` / `sweep.md` under `<out>/<task>_<row>`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import common

GRIDS = {
    "houlsby": [("learning_rate", ["1e-4", "1e-3"]), ("bottleneck_size", ["8", "64"])],
    "full": [("learning_rate", ["2e-5", "5e-5"])],
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="mrpc,sst2")
    parser.add_argument("--rows", default=",".join(GRIDS))
    parser.add_argument("--train_examples", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT / "selection")
    options = parser.parse_args(argv)
    unknown = ([t for t in options.tasks.split(",") if t not in common.DATA_DIRS]
               + [r for r in options.rows.split(",") if r not in GRIDS])
    if unknown:
        parser.error(f"unknown task or row: {', '.join(unknown)}")
    try:
        seeds = [int(s) for s in options.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds must be integers, got {options.seeds!r}")
    from adapter_bert.console import quiet_stderr

    quiet_stderr()
    from adapter_bert.sweep import define_sweep_flags, sweep

    define_sweep_flags()
    report = {"machine": common.machine(), "options": {**vars(options), "out": str(options.out)},
              "sweeps": []}
    for task in options.tasks.split(","):
        for row in options.rows.split(","):
            base = common.training_args(row, task, epochs=options.epochs,
                                        max_train_examples=options.train_examples, export=True)
            started = time.perf_counter()
            table = sweep(base, GRIDS[row], seeds, options.out / f"{task}_{row}")
            report["sweeps"].append({
                "task": task, "row": row, "metric": table["main_metric"],
                "grid": dict(GRIDS[row]), "seeds": seeds, "seconds": round(time.perf_counter() - started),
                "cells": [{"values": c["values"], "mean": round(c["mean"], 4),
                           "std": round(c["std"], 4)} for c in table["cells"]],
                "best": {k: table["best"][k] for k in ("values", "mean", "std", "seed")}})
            print(f"{task} {row}: best {table['best']['cell']} {table['main_metric']} "
                  f"{table['best']['mean']:.4f}", file=sys.stderr, flush=True)
    common.write_report(options.out, "selection", report)


if __name__ == "__main__":
    main()
