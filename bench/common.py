"""What every benchmark shares: the machine and versions, the GLUE data, the result files.

Benchmarks are scripts, not part of the package: run them from the repository root, e.g.
`python bench/train_throughput.py`. Each prints the machine and versions beside its figures and
writes them to a JSON file under its `--out` directory (and nowhere else).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import sys
from pathlib import Path

# Before TensorFlow is imported anywhere: the same settings as the training command.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

REPO = Path(__file__).resolve().parents[1]
GLUE_DIR = REPO.parent / "shared" / "data" / "glue"
DATA_DIRS = {"mrpc": GLUE_DIR / "MRPC", "sst2": GLUE_DIR / "SST-2"}
DEFAULT_OUT = Path("/tmp/adapter_bert_bench")
# The `--method` presets the first benchmarks compare, in the order of the report's tables.
PRESETS = ("houlsby", "pfeiffer", "parallel", "lora", "ia3", "prefix", "bitfit", "full")
# The newer methods, run by their config identifiers (`--adapter_config`, the library defaults),
# here and in the adapters library (`bench/peers.py --systems adapters:<identifier>`).
NEWER_METHODS = ("compacter", "compacter++", "seq_bn_inv", "double_seq_bn_inv", "prompt_tuning",
                 "unipelt", "dora", "vera", "loreft", "noreft", "direft")
# AdapterDrop rows (`--adapter_drop N`): a preset with its adapters left out of the N lowest
# layers, here the lower half of MiniLM's 6.
DROPPED = {"houlsby_drop3": ("houlsby", 3), "lora_drop3": ("lora", 3), "houlsby_drop2": ("houlsby", 2),
           "houlsby_drop1": ("houlsby", 1)}
METHODS = PRESETS + NEWER_METHODS + tuple(DROPPED)
# Learning rates of flags/methods/*.flags; Houlsby uses bottleneck 32 as in the paper's command.
# The newer methods' rates are in the range their papers use for GLUE-sized tasks (Compacter
# 3e-3; prompt tuning, with few weights, higher; VeRA's scaling vectors higher still; ReFT 2e-3),
# the same for our runs and the library's.
LEARNING_RATES = {"houlsby": 1e-3, "pfeiffer": 1e-3, "parallel": 1e-3, "lora": 5e-4, "ia3": 3e-3,
                  "prefix": 5e-4, "bitfit": 1e-3, "full": 5e-5,
                  "compacter": 3e-3, "compacter++": 3e-3, "seq_bn_inv": 1e-3,
                  "double_seq_bn_inv": 1e-3, "prompt_tuning": 1e-2, "unipelt": 5e-4, "dora": 5e-4,
                  "vera": 5e-3, "loreft": 2e-3, "noreft": 2e-3, "direft": 2e-3}
LEARNING_RATES.update({name: LEARNING_RATES[base] for name, (base, _) in DROPPED.items()})
BUCKETS = (32, 48, 64, 96, 128)

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


# The instruction-set extensions that decide which kernels the CPU runs (bf16 among them).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "fma")


def cpu_flags() -> list[str]:
    """The `CPU_FLAGS` this machine's /proc/cpuinfo lists."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return []
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            return [flag for flag in CPU_FLAGS if flag in present]
    return []


def machine() -> dict:
    """The processor and its flags, core count, and the versions of Python, TensorFlow and Keras."""
    import keras
    import numpy as np
    import tensorflow as tf

    return {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__,
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count(),
            "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS")}


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def training_args(method: str, task: str = "mrpc", **overrides):
    """The `TrainingArgs` of one benchmark run: the packaged MiniLM, batch 32, each method's lr."""
    from adapter_bert.training import TrainingArgs

    method, drop = DROPPED.get(method, (method, None))
    preset = method in PRESETS
    values = dict(task=task, casing="all-minilm-l6-v2", data_dir=str(DATA_DIRS[task]),
                  method=method if preset else None, adapter_config=None if preset else method,
                  bottleneck_size=32 if method == "houlsby" else None, adapter_drop=drop,
                  learning_rate=LEARNING_RATES[method], batch_size=32, max_seq_length=128,
                  pooling="mean", warmup_ratio=0.1, predict_test=False, export=False, log_every=50)
    values.update(overrides)
    return TrainingArgs(**values)


#: `METHOD@VARIANT` runs a method with one training option changed: `@bf16` under Keras'
#: mixed_bfloat16 policy (`--mixed_precision bf16`), `@recompute` with the attention
#: probabilities recomputed in the backward pass (`--recompute_attention`), `@cls` with the head
#: the peers train (`BertForSequenceClassification`: the checkpoint's frozen pooler over [CLS]).
VARIANTS = {"bf16": {"mixed_precision": "bf16"}, "recompute": {"recompute_attention": True},
            "cls": {"pooling": "cls"}}


def split_variant(method: str) -> tuple[str, str | None]:
    """`"houlsby@bf16"` -> `("houlsby", "bf16")`; a plain name has no variant (None).

    Example:
    >>> split_variant("houlsby@recompute"), split_variant("full")
    (('houlsby', 'recompute'), ('full', None))
    """
    name, _, variant = method.partition("@")
    return name, variant or None


def known_method(method: str) -> bool:
    """Whether `method` is a benchmark method, with a known variant if it has one."""
    name, variant = split_variant(method)
    return name in METHODS and variant in (None, *VARIANTS)


def build_benchmark_model(method: str, task: str = "mrpc"):
    """`(args, objective, model)` of `method` (a variant allowed), built as the training command
    builds it. A layer's compute dtype is fixed when it is built, so a bf16 model is built under
    its policy, and the policy is put back after."""
    from adapter_bert.objectives import objective_for
    from adapter_bert.training import build_model, precision_policy

    name, variant = split_variant(method)
    args = training_args(name, task, **VARIANTS.get(variant, {}))
    objective = objective_for(args)
    with precision_policy(args.mixed_precision):
        model = build_model(args, objective)
    return args, objective, model


def write_report(out: Path, name: str, report: dict) -> Path:
    """Prints `report` and writes it to `<out>/<name>.json` atomically."""
    from adapter_bert.io_utils import write_json

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    write_json(path, report)
    print(json.dumps(report, indent=2, default=_plain))
    print(f"wrote {path}", file=sys.stderr)
    return path


def _plain(value):
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return str(value)
