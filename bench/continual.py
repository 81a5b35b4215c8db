"""Continual learning, measured: tasks learned one after another, and what each earlier task
keeps of its dev score.

    python bench/continual.py [--tasks mrpc,sst2] [--rows full,full+ewc,full+l2sp,full+layer_decay,houlsby]
                              [--train_examples 1000] [--epochs 2] [--seed 0]
                              [--out /tmp/adapter_bert_bench/continual]

Every stage is one run of the training command (`adapter_bert.training.run`, in this process) on
the packaged MiniLM, with a fixed random subset of `--train_examples` training examples per task
(full dev sets). The rows:

  full              full fine-tuning; each stage starts from the previous stage's weights
                    (`--method full --load_adapter <previous stage>`), a new head per task
  full+ewc          the same with `--regularizer ewc`: each stage writes its Fisher estimate
                    (`--save_fisher`), the next pulls toward it (`--fisher_from`)
  full+l2sp         the same with `--regularizer l2sp` (pull toward the previous stage's weights)
  full+layer_decay  the same with `--layer_lr_decay` (lower layers move less)
  houlsby           a Houlsby adapter (bottleneck 32) per task on the frozen base

After stage k, one model holds what stages 1..k saved (loaded in order: the full rows' base is
stage k's), and every earlier task j is evaluated with its own head (and adapter). The report
gives the matrix `score[k][j]`, the forgetting `score[j][j] - score[last][j]`, whether task j's
dev logits after the last stage are bit-identical to those right after stage j, training time
and stored bytes per stage. A task may appear twice (`mrpc,sst2,mrpc`): its second stage is a
new head (or adapter) learned again. Writes `<out>/continual.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

import numpy as np

import common

ROWS = {
    "full": {"method": "full"},
    "full+ewc": {"method": "full", "regularizer": "ewc"},
    "full+l2sp": {"method": "full", "regularizer": "l2sp"},
    "full+layer_decay": {"method": "full"},
    "houlsby": {"method": "houlsby"},
}


def stage_args(row: str, task: str, stage: int, out: Path, previous: Path | None, options):
    """The training run of stage `stage` (1-based) of `row`."""
    values = dict(ROWS[row], adapter_name=f"{task}_{stage}", seed=options.seed,
                  epochs=options.epochs, max_train_examples=options.train_examples,
                  saved_models_dir=str(out / row / f"stage_{stage}"))
    method = values["method"]
    values["learning_rate"] = common.LEARNING_RATES[method]
    if row.startswith("full") and previous is not None:
        values["load_adapters"] = (str(previous / "adapter"),)
    if row == "full+ewc":
        values["save_fisher"] = True
        if previous is None:
            values.pop("regularizer")
        else:
            values.update(fisher_from=str(previous), regularizer_strength=options.ewc_strength)
    if row == "full+l2sp":
        if previous is None:
            values.pop("regularizer")
        else:
            values["regularizer_strength"] = options.l2sp_strength
    if row == "full+layer_decay":
        values["layer_lr_decay"] = options.layer_lr_decay
    del values["method"]
    return common.training_args(method, task, **values)


def dev_logits(model, objective) -> np.ndarray:
    from adapter_bert.glue.data import make_dataset

    args = objective.args
    dataset = make_dataset(objective.dev_encoded, None, 64, padding=args.padding,
                           max_seq_length=args.max_seq_length)
    return np.concatenate([model(inputs, training=False).numpy() for inputs, _ in dataset])


def evaluate_after(stage_dirs: list[Path], names: list[str], objectives: list) -> list[dict]:
    """Loads stages 1..k into one model; each task's dev logits and metrics with its own head."""
    import keras

    from adapter_bert import AdapterBertModel
    from adapter_bert.glue.metrics import compute_metrics

    keras.backend.clear_session()
    model = AdapterBertModel.from_pretrained("all-minilm-l6-v2")
    for directory in stage_dirs:
        model.load_adapter(directory / "adapter")
    scores = []
    for name, objective in zip(names, objectives):
        model.set_active_adapters(name)
        model.active_head = name
        logits = dev_logits(model, objective)
        metrics = compute_metrics(objective.task, logits.argmax(-1), objective.dev_labels)
        scores.append({"task": name, "metrics": metrics,
                       "score": metrics[objective.task.main_metric], "logits": logits})
    return scores


def stored_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def run_row(row: str, tasks: list[str], out: Path, options) -> dict:
    from adapter_bert import load_tokenizer
    from adapter_bert.objectives import objective_for
    from adapter_bert.training import run

    tokenizer = load_tokenizer("all-minilm-l6-v2")
    stage_dirs, names, objectives, stages, matrix = [], [], [], [], []
    diagonal = []
    previous = None
    for stage, task in enumerate(tasks, start=1):
        args = stage_args(row, task, stage, out, previous, options)
        print(f"continual: {row} stage {stage} ({task})", file=sys.stderr, flush=True)
        started = time.perf_counter()
        results = run(args)
        seconds = time.perf_counter() - started
        previous = args.output_dir
        stage_dirs.append(previous)
        names.append(args.name)
        objective = objective_for(args)
        objective.load(tokenizer)
        objectives.append(objective)
        scores = evaluate_after(stage_dirs, names, objectives)
        diagonal.append(scores[-1]["logits"])
        matrix.append([round(s["score"], 4) for s in scores])
        stages.append({"stage": stage, "task": task, "adapter": args.name,
                       "train_seconds": round(seconds, 1),
                       "train_examples_per_second": round(results["train_examples_per_second"], 1),
                       "stored_bytes": stored_bytes(previous / "adapter"),
                       "fisher_bytes": (previous / "fisher.safetensors").stat().st_size
                       if (previous / "fisher.safetensors").is_file() else 0,
                       "weight_change": {k: round(v, 5) for k, v in results["weight_change"].items()},
                       "best_dev": results["best"]["dev"]})
    last = scores
    forgetting = [round(matrix[j][j] - matrix[-1][j], 4) for j in range(len(tasks))]
    identical = [bool(np.array_equal(last[j]["logits"], diagonal[j])) for j in range(len(tasks))]
    max_logit_change = [float(np.max(np.abs(last[j]["logits"] - diagonal[j])))
                        for j in range(len(tasks))]
    return {"row": row, "tasks": names, "matrix": matrix, "forgetting": forgetting,
            "bit_identical_after_last_stage": identical, "max_logit_change": max_logit_change,
            "stages": stages}


def markdown(report: dict) -> str:
    tasks = report["rows"][0]["tasks"]
    lines = ["| row | after | " + " | ".join(tasks) + " | train s | stored MB |",
             "|---|---|" + "---|" * len(tasks) + "---|---|"]
    for row in report["rows"]:
        for k, scores in enumerate(row["matrix"]):
            cells = [f"{s:.4f}" for s in scores] + [""] * (len(tasks) - len(scores))
            stage = row["stages"][k]
            lines.append(f"| {row['row']} | {stage['adapter']} | " + " | ".join(cells)
                         + f" | {stage['train_seconds']:.0f} | {stage['stored_bytes'] / 1e6:.2f} |")
        lines.append(f"| {row['row']} | forgetting | " + " | ".join(f"{f:+.4f}" for f in row["forgetting"])
                     + " | | |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="mrpc,sst2")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--train_examples", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ewc_strength", type=float, default=1e6)
    parser.add_argument("--l2sp_strength", type=float, default=10.0)
    parser.add_argument("--layer_lr_decay", type=float, default=0.8)
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT / "continual")
    options = parser.parse_args(argv)
    tasks = [t.strip() for t in options.tasks.split(",") if t.strip()]
    rows = [r.strip() for r in options.rows.split(",") if r.strip()]
    unknown = [t for t in tasks if t not in common.DATA_DIRS] + [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown task or row: {', '.join(unknown)} (tasks: "
                     f"{', '.join(common.DATA_DIRS)}; rows: {', '.join(ROWS)})")
    if options.train_examples <= 0 or options.epochs <= 0:
        parser.error("--train_examples and --epochs must be positive")
    from adapter_bert.console import quiet_stderr

    quiet_stderr()
    runs = options.out / "runs"
    shutil.rmtree(runs, ignore_errors=True)  # every stage builds on the previous: start clean
    report = {"machine": common.machine(), "tasks": tasks, "options": {**vars(options), "out": str(options.out)},
              "rows": [run_row(row, tasks, runs, options) for row in rows]}
    report["table"] = markdown(report)
    print(report["table"], file=sys.stderr)
    common.write_report(options.out, "continual", report)


if __name__ == "__main__":
    main()
