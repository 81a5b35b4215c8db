"""A task adapter trained inside a stack on a frozen adapter of another task, through the CLI.

    python bench/stacking.py --seeds 0 --out /tmp/adapter_bert_bench/stacking

Per seed: a Pfeiffer adapter on SST-2 (a fixed subset of `--sst2_examples` sentences, one epoch),
then a new Pfeiffer adapter on MRPC trained inside `Stack(sst2, mrpc)` (`--load_adapter`,
`--adapter_setup`), and the same MRPC adapter trained alone, both for `--epochs` epochs on the
packaged MiniLM. Reports every epoch's MRPC dev scores, the trainable parameters, the speed, and
whether the SST-2 adapter's files are byte-identical after the stacked run; writes
`<out>/stacking.json`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import common

SETTINGS = ["--casing=all-minilm-l6-v2", "--method=pfeiffer", "--pooling=mean", "--batch_size=32",
            "--max_seq_length=128", "--learning_rate=1e-3", "--warmup_ratio=0.1",
            "--bucket_boundaries=" + ",".join(map(str, common.BUCKETS)), "--predict_test=false"]


def _digests(directory: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def _run(flags: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(common.REPO / "run_tf_adapter_bert.py"),
                             *SETTINGS, *flags], capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"error: the training command failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def _summary(results_file: Path, seconds: float) -> dict:
    results = json.loads(results_file.read_text())
    return {"adapter_setup": results["adapter_setup"],
            "epochs": [{"epoch": e["epoch"], "dev": e["dev"]} for e in results["epochs"]],
            "best": results["best"], "trainable_params": results["trainable_params"],
            "total_params": results["total_params"],
            "train_examples_per_second": results["train_examples_per_second"],
            "wall_seconds": seconds}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--sst2_examples", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT / "stacking")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds must be integers, got {args.seeds!r}")
    if args.epochs <= 0 or args.sst2_examples <= 0:
        parser.error("--epochs and --sst2_examples must be positive")
    runs = []
    for seed in seeds:
        root = args.out / f"seed{seed}"
        sst2_seconds = _run(["--task=sst2", f"--data_dir={common.DATA_DIRS['sst2']}",
                             f"--max_train_examples={args.sst2_examples}", "--epochs=1",
                             "--export=false", f"--seed={seed}", f"--saved_models_dir={root}",
                             "--overwrite"])
        sst2 = root / "sst2" / "adapter"
        before = _digests(sst2)
        mrpc = [f"--task=mrpc", f"--data_dir={common.DATA_DIRS['mrpc']}", f"--epochs={args.epochs}",
                f"--seed={seed}", "--overwrite"]
        stacked_seconds = _run(mrpc + [f"--load_adapter={sst2}", "--adapter_setup=Stack(sst2, mrpc)",
                                       f"--saved_models_dir={root / 'stacked'}"])
        alone_seconds = _run(mrpc + ["--export=false", f"--saved_models_dir={root / 'alone'}"])
        runs.append({
            "seed": seed, "sst2": _summary(root / "sst2" / "results.json", sst2_seconds),
            "stacked": _summary(root / "stacked" / "mrpc" / "results.json", stacked_seconds),
            "alone": _summary(root / "alone" / "mrpc" / "results.json", alone_seconds),
            "sst2_files_unchanged": _digests(sst2) == before})
    common.write_report(args.out, "stacking", {
        "machine": common.machine(), "settings": SETTINGS, "epochs": args.epochs,
        "sst2_examples": args.sst2_examples, "runs": runs})


if __name__ == "__main__":
    main()
