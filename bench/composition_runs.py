"""Adapters of two tasks combined, through the command line: stacked, and fused.

    python bench/composition_runs.py --seeds 0,1,2 --out /tmp/adapter_bert_bench/stacking

Per seed, on the packaged MiniLM:
- a Pfeiffer adapter on SST-2 (a fixed subset of `--sst2_examples` sentences, one epoch);
- a new Pfeiffer adapter on MRPC trained inside `Stack(sst2, mrpc)` (`--load_adapter`,
  `--adapter_setup`);
- the same MRPC adapter trained alone;
- an AdapterFusion (`dynamic`) of the SST-2 adapter and the lone MRPC adapter, trained with a
  new head on MRPC (`--fusion`), as Pfeiffer et al. (2021) train it.
MRPC runs take `--epochs` epochs (the fusion `--fusion_epochs`). Reports every epoch's MRPC dev
scores, the trainable parameters, the speed, and whether the loaded adapters' files are
byte-identical afterwards; writes `<out>/stacking.json`. A run whose results exist is kept, so
an interrupted benchmark resumes.
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

SETTINGS = ["--casing=all-minilm-l6-v2", "--pooling=mean", "--batch_size=32",
            "--max_seq_length=128", "--learning_rate=1e-3", "--warmup_ratio=0.1",
            "--bucket_boundaries=" + ",".join(map(str, common.BUCKETS)), "--predict_test=false"]


def _digests(directory: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def _run(flags: list[str], results: Path) -> float:
    if results.is_file():  # finished earlier: the benchmark resumes
        return json.loads(results.read_text())["wall_seconds"]
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(common.REPO / "run_tf_adapter_bert.py"),
                             *SETTINGS, *flags], capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"error: the training command failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def _summary(results_file: Path, seconds: float) -> dict:
    results = json.loads(results_file.read_text())
    return {"adapter_setup": results.get("adapter_setup"), "method": results["method"],
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
    parser.add_argument("--fusion_epochs", type=int, default=3)
    parser.add_argument("--fusion_learning_rate", type=float, default=5e-4)
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT / "stacking")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds must be integers, got {args.seeds!r}")
    if min(args.epochs, args.sst2_examples, args.fusion_epochs) <= 0 \
            or args.fusion_learning_rate <= 0:
        parser.error("--epochs, --fusion_epochs, --sst2_examples and --fusion_learning_rate "
                     "must be positive")
    runs = []
    for seed in seeds:
        root = args.out / f"seed{seed}"
        results = {name: root / name / "mrpc" / "results.json"
                   for name in ("stacked", "alone", "fused")}
        results["sst2"] = root / "sst2" / "results.json"
        seconds = {"sst2": _run(["--method=pfeiffer", "--task=sst2", "--epochs=1",
                                 f"--data_dir={common.DATA_DIRS['sst2']}",
                                 f"--max_train_examples={args.sst2_examples}", "--export=false",
                                 f"--seed={seed}", f"--saved_models_dir={root}"], results["sst2"])}
        sst2, alone = root / "sst2" / "adapter", root / "alone" / "mrpc" / "adapter"
        before = _digests(sst2)
        mrpc = ["--task=mrpc", f"--data_dir={common.DATA_DIRS['mrpc']}", f"--seed={seed}"]
        seconds["stacked"] = _run(mrpc + [
            "--method=pfeiffer", f"--epochs={args.epochs}", f"--load_adapter={sst2}",
            "--adapter_setup=Stack(sst2, mrpc)", f"--saved_models_dir={root / 'stacked'}"],
            results["stacked"])
        seconds["alone"] = _run(mrpc + [
            "--method=pfeiffer", f"--epochs={args.epochs}", "--export=false",
            f"--saved_models_dir={root / 'alone'}"], results["alone"])
        alone_before = _digests(alone)
        seconds["fused"] = _run(mrpc + [
            f"--epochs={args.fusion_epochs}", f"--fusion={sst2},{alone}", "--export=false",
            f"--learning_rate={args.fusion_learning_rate}", f"--saved_models_dir={root / 'fused'}"],
            results["fused"])
        runs.append({"seed": seed, **{k: _summary(results[k], seconds[k]) for k in results},
                     "loaded_files_unchanged": _digests(sst2) == before
                     and _digests(alone) == alone_before})
    common.write_report(args.out, "stacking", {
        "machine": common.machine(), "settings": SETTINGS, "epochs": args.epochs,
        "fusion_epochs": args.fusion_epochs, "fusion_learning_rate": args.fusion_learning_rate,
        "sst2_examples": args.sst2_examples, "runs": runs})


if __name__ == "__main__":
    main()
