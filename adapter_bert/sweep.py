"""The paper's selection protocol as a command: train every cell of a grid of training flags
with several seeds, pick the cell with the best mean dev score, keep its adapter and SavedModel.

    python -m adapter_bert.sweep --flagfile flags/mrpc.flags --data_dir ../shared/data/glue/MRPC \
        --grid learning_rate=1e-4,3e-4,1e-3 --grid bottleneck_size=8,64,256 --seeds 0,1,2

Every training flag of `run_tf_adapter_bert.py` applies to every run; `--grid NAME=V1,V2,...`
(repeatable) varies one. Houlsby et al. (2019) chose the learning rate and adapter size per task
this way, on dev, keeping the best epoch of each run.

Layout of `--sweep_dir` (default `<saved_models_dir>/sweep_<task or adapter name>`):
  <cell>/seed_<s>/<name>/   one training run's output directory (results.json, adapter/, ...)
  sweep.json                every run's best dev scores, each cell's mean and spread, the winner
  sweep.md                  the same as a markdown table
  best/adapter/             the winning cell's best seed's adapter (and head)
  best/export/<version>/    its SavedModel (GLUE tasks)

Rerunning the same command resumes: a run with a results.json is not rerun, and a run that was
killed resumes from its checkpoint. A cell's score is the mean over seeds of each run's best dev
value of the task's main metric; ties go to the cell listed first.

Example (the grid's cells and their directory names):
>>> cells = grid_cells([("learning_rate", ["1e-4", "1e-3"]), ("bottleneck_size", ["8", "64"])])
>>> [cell_name(c) for c in cells]
['learning_rate=1e-4,bottleneck_size=8', 'learning_rate=1e-4,bottleneck_size=64', \
'learning_rate=1e-3,bottleneck_size=8', 'learning_rate=1e-3,bottleneck_size=64']
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import app, flags  # noqa: E402

from adapter_bert import command_flags  # noqa: E402
from adapter_bert.command_flags import args_from_flags, define_training_flags  # noqa: E402

FLAGS = flags.FLAGS

#: Flags a grid may not vary: the sweep sets them per run, or they change where runs live.
NOT_SWEPT = ("seed", "saved_models_dir", "adapter_name", "overwrite", "export", "export_only",
             "predict_test", "verbose", "task", "load_adapter", "fusion", "worker_hosts",
             "task_index", "tpu")


def define_sweep_flags() -> None:
    define_training_flags()
    if "grid" in FLAGS:
        return
    flags.DEFINE_multi_string("grid", [], "NAME=V1,V2,...: a training flag and the values to try "
                              "(repeat for a grid); values may hold commas inside brackets.")
    flags.DEFINE_list("seeds", ["0"], "Seeds of every cell (the score is their mean).")
    flags.DEFINE_string("sweep_dir", None, "Where runs and tables go (default: "
                        "<saved_models_dir>/sweep_<name>).")


def parse_grid(entries: list[str]) -> list[tuple[str, list[str]]]:
    """`["learning_rate=1e-4,3e-4", ...]` as `[(name, [values])]`, values checked by the flag's
    own parser (one-line errors for an unknown flag, a bad value, or a flag given twice).

    Example:
    >>> define_sweep_flags()
    >>> parse_grid(["learning_rate=1e-4,3e-4", "adapter_config=lora[r=4,alpha=8],ia3"])
    [('learning_rate', ['1e-4', '3e-4']), ('adapter_config', ['lora[r=4,alpha=8]', 'ia3'])]
    """
    from adapter_bert.configuration import split_top_level

    grid, seen = [], set()
    for entry in entries:
        name, sep, values = entry.partition("=")
        name = name.strip().lstrip("-")
        if not sep or not name or not values.strip():
            raise ValueError(f"--grid takes NAME=V1,V2,..., got {entry!r}")
        if name not in _training_flag_names():
            raise ValueError(f"--grid {name}: not a training flag (run_tf_adapter_bert.py "
                             "--helpfull lists them)")
        if name in NOT_SWEPT:
            raise ValueError("--grid seed: the sweep sets seed itself (use --seeds)"
                             if name == "seed" else f"--grid {name}: one value for the whole "
                             f"sweep (give --{name} as a flag)")
        if name in seen:
            raise ValueError(f"--grid {name} is given twice; list all its values in one --grid")
        seen.add(name)
        parsed = [v.strip() for v in split_top_level(values, ",")]
        if any(not v for v in parsed) or len(set(parsed)) != len(parsed):
            raise ValueError(f"--grid {name}: empty or repeated values in {values!r}")
        for value in parsed:
            flag_value(name, value)
        grid.append((name, parsed))
    return grid


def _training_flag_names() -> set[str]:
    from adapter_bert.training import TrainingArgs

    names = {f.name for f in dataclasses.fields(TrainingArgs)} - {"load_adapters"}
    return names | {"load_adapter"}


def flag_value(name: str, text: str):
    """`text` parsed as flag `name` would parse it on the command line."""
    flag = copy.deepcopy(FLAGS[name])
    try:
        flag.parse(text)
    except (flags.IllegalFlagValueError, ValueError) as e:
        raise ValueError(f"--grid {name}: bad value {text!r}: {e}") from None
    return flag.value


def grid_cells(grid: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    """Every combination, the first flag's values varying slowest."""
    names = [name for name, _ in grid]
    return [dict(zip(names, values)) for values in itertools.product(*(v for _, v in grid))]


def cell_name(cell: dict[str, str]) -> str:
    """The cell's directory name: `name=value,...` (path separators replaced)."""
    text = ",".join(f"{k}={v}" for k, v in cell.items()) or "default"
    return text.replace(os.sep, "_")


def cell_args(base, cell: dict[str, str], seed: int, directory: Path):
    """The `TrainingArgs` of one run: the base flags, the cell's values, the seed."""
    values = {name: flag_value(name, text) for name, text in cell.items()}
    if "load_adapter" in values:
        values["load_adapters"] = tuple(values.pop("load_adapter"))
    for name in ("fusion", "worker_hosts"):
        if name in values:
            values[name] = tuple(values[name])
    if "bucket_boundaries" in values:
        values["bucket_boundaries"] = tuple(int(b) for b in values["bucket_boundaries"])
    return dataclasses.replace(base, **values, seed=seed, saved_models_dir=str(directory),
                               export=False, predict_test=False, export_only=False,
                               overwrite=False)


class _SweepProgress:
    """`sweep: run i/n (cell, seed) ...` lines on stderr with runs done / left and an ETA from
    the runs this invocation trained (runs found finished take no time)."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.stream = total, stream
        self.done, self.trained, self.seconds = 0, 0, 0.0

    def start(self, label: str) -> float:
        left = self.total - self.done
        eta = (f", eta {_duration(self.seconds / self.trained * left)}" if self.trained else "")
        print(f"sweep: run {self.done + 1}/{self.total} {label} ({self.done} done, {left} left"
              f"{eta})", file=self.stream, flush=True)
        return time.perf_counter()

    def finish(self, started: float | None) -> None:
        self.done += 1
        if started is not None:
            self.trained += 1
            self.seconds += time.perf_counter() - started


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def sweep(base, grid: list[tuple[str, list[str]]], seeds: list[int], sweep_dir: Path,
          stream=sys.stderr) -> dict:
    """Runs (or finds) every run of the grid, writes sweep.json / sweep.md and the winner's
    adapter and SavedModel under `sweep_dir`; returns sweep.json's content."""
    from adapter_bert.io_utils import read_json
    from adapter_bert.objectives import objective_for
    from adapter_bert.training import run, validate_args

    cells = grid_cells(grid)
    runs = [(cell, seed) for cell in cells for seed in seeds]
    # Every run's arguments are checked before the first one trains, and a run found in the
    # sweep directory must have been made with the same ones (else its score would not be this
    # grid's).
    from adapter_bert.training import _check_resume_key

    for cell, seed in runs:
        args = cell_args(base, cell, seed, sweep_dir / cell_name(cell) / f"seed_{seed}")
        validate_args(args)
        try:
            _check_resume_key(args, args.output_dir)
        except ValueError as e:
            differ = str(e).split("; pass")[0]
            raise ValueError(f"{differ}: a sweep with other flags ran in {sweep_dir}; pass "
                             "another --sweep_dir") from None
    progress = _SweepProgress(len(runs), stream)
    results = {}
    for cell, seed in runs:
        args = cell_args(base, cell, seed, sweep_dir / cell_name(cell) / f"seed_{seed}")
        label = f"{cell_name(cell)} seed {seed}"
        finished = args.output_dir / "results.json"
        if finished.is_file():
            progress.start(label + ": finished earlier, not rerun")
            results[(cell_name(cell), seed)] = read_json(finished, "results")
            progress.finish(None)
            continue
        started = progress.start(label)
        results[(cell_name(cell), seed)] = run(args)
        progress.finish(started)
        _release_graphs()
    objective = objective_for(base)
    table = _table(base, grid, cells, seeds, results, objective, sweep_dir)
    winner = table["best"]
    print(f"sweep: best {winner['cell']}: {objective.main_metric} {winner['mean']:.4f} "
          f"(seed {winner['seed']})", file=stream, flush=True)
    table["best"].update(_keep_winner(base, cells[winner["index"]], winner["seed"], sweep_dir,
                                      objective))
    from adapter_bert.io_utils import write_json

    write_json(sweep_dir / "sweep.json", table)
    _write_text(sweep_dir / "sweep.md", markdown_table(table))
    return table


def _release_graphs() -> None:
    """Drops the finished run's models and traces before the next run builds its own."""
    import gc

    import keras

    keras.backend.clear_session()
    gc.collect()


def _table(base, grid, cells, seeds, results, objective, sweep_dir: Path) -> dict:
    metric = objective.main_metric
    rows = []
    for index, cell in enumerate(cells):
        runs = []
        for seed in seeds:
            result = results[(cell_name(cell), seed)]
            runs.append({"seed": seed, "dev": result["best"]["dev"], "step": result["best"]["step"],
                         "score": result["best"]["dev"][metric],
                         "dir": str(Path(cell_name(cell)) / f"seed_{seed}"),
                         "train_seconds": result.get("wall_seconds")})
        scores = np.array([r["score"] for r in runs], np.float64)
        rows.append({"index": index, "cell": cell_name(cell), "values": cell, "runs": runs,
                     "mean": float(scores.mean()), "std": float(scores.std())})
    best = None
    for row in rows:  # the objective's direction (accuracy up, perplexity down); first wins ties
        if (best is None or (np.isnan(best["mean"]) and not np.isnan(row["mean"]))
                or objective.improves({metric: row["mean"]}, {"dev": {metric: best["mean"]}})):
            best = row
    best_seed = best["runs"][0]
    for run in best["runs"][1:]:
        if ((np.isnan(best_seed["score"]) and not np.isnan(run["score"]))
                or objective.improves({metric: run["score"]}, {"dev": {metric: best_seed["score"]}})):
            best_seed = run
    return {"task": objective.task_name, "main_metric": metric, "grid": dict(grid),
            "seeds": list(seeds), "base_args": dataclasses.asdict(base), "cells": rows,
            "best": {"index": best["index"], "cell": best["cell"], "values": best["values"],
                     "mean": best["mean"], "std": best["std"], "seed": best_seed["seed"],
                     "run_dir": best_seed["dir"]}}


def _keep_winner(base, cell, seed: int, sweep_dir: Path, objective) -> dict:
    """Copies the winning run's adapter to `best/adapter` and exports its SavedModel to
    `best/export/` (written beside, then swapped in whole)."""
    from adapter_bert.io_utils import atomic_directory
    from adapter_bert.training import run, trained_dir

    args = cell_args(base, cell, seed, sweep_dir / cell_name(cell) / f"seed_{seed}")
    kept = {}
    with atomic_directory(sweep_dir / "best") as tmp:
        shutil.copytree(args.output_dir / trained_dir(args), tmp / trained_dir(args))
        kept[trained_dir(args)] = f"best/{trained_dir(args)}"
        if objective.exports and base.export:
            exported = run(dataclasses.replace(args, export_only=True, export=True))
            shutil.copytree(args.output_dir / "export", tmp / "export")
            kept["export"] = "best/" + str(Path(exported["export"]))
    return kept


def markdown_table(table: dict) -> str:
    """sweep.json as a markdown table: one row per cell, the winner marked.

    Example:
    >>> print(markdown_table({"task": "mrpc", "main_metric": "f1", "grid": {"lr": ["1", "2"]},
    ...     "seeds": [0], "cells": [{"index": 0, "values": {"lr": "1"}, "mean": 0.8, "std": 0.0,
    ...     "runs": [{"score": 0.8}]}], "best": {"index": 0}}), end="")
    | lr | f1 mean | f1 std | seed 0 | |
    |---|---|---|---|---|
    | 1 | 0.8000 | 0.0000 | 0.8000 | best |
    """
    names = list(table["grid"])
    metric = table["main_metric"]
    header = names + [f"{metric} mean", f"{metric} std"] + [f"seed {s}" for s in table["seeds"]] + [""]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table["cells"]:
        mark = "best" if row["index"] == table["best"]["index"] else ""
        cells = [row["values"][n] for n in names] + [f"{row['mean']:.4f}", f"{row['std']:.4f}"]
        cells += [f"{r['score']:.4f}" for r in row["runs"]] + [mark]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(line.replace("|  |", "| |") for line in lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main(argv) -> None:
    if len(argv) > 1:
        print(f"error: unexpected arguments: {' '.join(argv[1:])} (every option is a --flag)",
              file=sys.stderr)
        sys.exit(2)
    from adapter_bert.console import quiet_python_logging

    quiet_python_logging()
    try:
        base = args_from_flags(FLAGS)
        grid = parse_grid(FLAGS.grid)
        try:
            seeds = [int(s) for s in FLAGS.seeds]
        except ValueError:
            raise ValueError(f"--seeds must be integers, got {','.join(FLAGS.seeds)}") from None
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError("--seeds must list distinct integers")
        sweep_dir = Path(FLAGS.sweep_dir or Path(base.saved_models_dir) / f"sweep_{base.name}")
        table = sweep(base, grid, seeds, sweep_dir)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, TypeError) as e:
        message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    best = table["best"]
    print(f"best cell: {best['cell']} ({table['main_metric']} {best['mean']:.4f} mean over "
          f"{len(seeds)} seeds)")
    print(f"table: {sweep_dir / 'sweep.md'}")


def _parse_flags(argv):
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


define_sweep_flags()
flags.adopt_module_key_flags(command_flags)  # --help lists the training flags too

if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
