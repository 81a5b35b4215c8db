"""Training an adapter on a GLUE task or with masked language modelling: one custom loop under
`tf.distribute`, resumable.

`run(TrainingArgs(...))` is what `run_tf_adapter_bert.py` calls. The same loop serves every
strategy (`strategy.run` + `tf.GradientTape` + a Keras AdamW): Keras' `fit` is avoided because it
fails under MultiWorkerMirroredStrategy (keras#20585).

What differs between a GLUE task and `task="mlm"` (data, head, loss, dev metrics) is the run's
objective (`adapter_bert.objectives`). An MLM run trains a language adapter on the lines of
`train_file` (dev: `dev_file`, else a fixed 5% of the lines) and reports dev perplexity; with
`adapter_name="en"` the adapter is named for its language, ready to be loaded under a task
adapter (MAD-X: `load_adapters=("saved_models/en/adapter",)`, `adapter_setup="Stack(en, mrpc)"`).

Output directory `<saved_models_dir>/<adapter_name or task>/`:
  results.json   per-epoch dev metrics, best epoch, parameter counts, throughput, versions
  adapter/       save_adapter of the best epoch (adapter + head)
  setup/         with `load_adapters`: save_adapter_setup of the whole setup the adapter trained in
  fusion/        with `fusion` (instead of adapter/): save_adapter_fusion of the best epoch
  predictions/   GLUE test-set predictions in the benchmark's submission format (not for mlm)
  fisher.safetensors  with `save_fisher`: the diagonal Fisher estimate of the base weights
  checkpoints/   tf.train.CheckpointManager checkpoints: rerunning the same command resumes
  logs/          TensorBoard summaries

With `load_adapters` (`--load_adapter DIR`, repeatable), adapters trained earlier are loaded
frozen and the new adapter trains inside `adapter_setup` (`--adapter_setup "Stack(lang, mrpc)"`;
default: a `Stack` of the loaded adapters, in order, then the new one); the setup must end with
the new adapter, whose head is the one trained, and the SavedModel serves that setup.

With `fusion` (`--fusion DIR1,DIR2,...`), no adapter is added: the adapters in those directories
are loaded frozen and an AdapterFusion of them (`fusion_config`, `dynamic` by default) trains
with a new head for the task.

The fine-tuning techniques (`adapter_bert.techniques`) are arguments too: `layer_lr_decay`,
`regularizer` (`l2sp`, `ewc` with `fisher_from`, `kl` with `load_adapters` that have heads) with
`regularizer_strength`, and `gradual_unfreezing`; results.json reports every run's
`weight_change` per base part.

Every file is written atomically (temporary name, then rename), so a killed run leaves either the
old file or the new one. Rerunning resumes from the last checkpoint with the same data order and
dropout randomness, and ends with the same weights as an uninterrupted run.

Example:
>>> args = TrainingArgs(task="mrpc", casing="all-minilm-l6-v2", method="houlsby",
...                     data_dir="../shared/data/glue/MRPC", epochs=1, max_steps=2)
>>> args.output_dir.name
'mrpc'
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from adapter_bert.heads import POOLINGS
from adapter_bert.io_utils import read_json, write_json
# The GLUE batches of an epoch; kept importable from here, where the command's loop uses them.
from adapter_bert.objectives import training_dataset  # noqa: E402,F401  (re-exported)

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")
MIXED_PRECISION = (None, "bf16", "fp16")


@dataclasses.dataclass
class TrainingArgs:
    """Everything a training run depends on (the command's flags)."""

    task: str = "mrpc"
    casing: str = "all-minilm-l6-v2"
    data_dir: str | None = None
    train_file: str | None = None
    dev_file: str | None = None
    adapter_name: str | None = None
    adapter_config: str | None = None
    load_adapters: tuple = ()
    adapter_setup: str | None = None
    fusion: tuple = ()
    fusion_config: str = "dynamic"
    method: str | None = None
    bottleneck_size: int | None = None
    non_linearity: str | None = None
    adapter_drop: int | None = None
    pooling: str = "cls"
    batch_size: int = 32
    eval_batch_size: int | None = None
    epochs: int = 10
    max_seq_length: int = 128
    learning_rate: float = 3e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float | None = None
    layer_lr_decay: float | None = None
    regularizer: str | None = None
    regularizer_strength: float | None = None
    fisher_from: str | None = None
    save_fisher: bool = False
    gradual_unfreezing: str | None = None
    seed: int = 0
    max_steps: int | None = None
    max_train_examples: int | None = None
    eval_every: int | None = None
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    strategy: str = "default"
    tpu: str | None = None
    worker_hosts: tuple = ()
    task_index: int | None = None
    mixed_precision: str | None = None
    recompute_attention: bool = False
    padding: str = "dynamic"
    bucket_boundaries: tuple = ()
    saved_models_dir: str = "saved_models"
    predict_test: bool = True
    export: bool = True
    export_only: bool = False
    merge_for_serving: bool = False
    log_every: int = 20
    overwrite: bool = False

    @property
    def name(self) -> str:
        """The name of the adapter (and head) this run trains: `adapter_name`, else the task's."""
        from adapter_bert.glue.tasks import get_task
        from adapter_bert.objectives import MLM, is_masked_lm

        if self.adapter_name is not None:
            return self.adapter_name
        return MLM if is_masked_lm(self.task) else get_task(self.task).name

    @property
    def output_dir(self) -> Path:
        return Path(self.saved_models_dir) / self.name

    def resume_key(self) -> dict:
        """The arguments that must match for a rerun to resume a killed run."""
        from adapter_bert.glue.tasks import get_task
        from adapter_bert.objectives import is_masked_lm

        keep_out = {"saved_models_dir", "log_every", "overwrite", "predict_test", "keep_checkpoints",
                    "strategy", "tpu", "export", "export_only", "merge_for_serving",
                    "worker_hosts", "task_index", "save_fisher",
                    "recompute_attention"}  # the same function: a resumed run may switch it
        values = {k: v for k, v in dataclasses.asdict(self).items() if k not in keep_out}
        values["bucket_boundaries"] = list(self.bucket_boundaries)
        # `--task MRPC` and `--task mrpc` are one run.
        values["task"] = self.task.strip().lower() if is_masked_lm(self.task) else get_task(self.task).name
        # The loaded adapters' files decide the run as much as the flags do; the setup is
        # compared as what it means, not as typed.
        for key in ("load_adapters", "fusion"):
            values[key] = [
                {"path": str(Path(path).resolve()),
                 **{name: _file_digest(Path(path) / name)
                    for name in ("adapter_config.json", "adapter.safetensors")}}
                for path in getattr(self, key)]
        for key in ("train_file", "dev_file", "fisher_from"):
            path = getattr(self, key)
            if key == "fisher_from" and path is not None:
                from adapter_bert.techniques import fisher_file

                path = fisher_file(path)
            values[key] = None if path is None else {"path": str(Path(path).resolve()),
                                                     "sha256": _file_digest(Path(path))}
        if self.load_adapters or self.adapter_setup is not None or self.fusion:
            from adapter_bert.composition import setup_key

            values["adapter_setup"] = setup_key(resolve_setup(self))
        return values


def _file_digest(path: Path) -> str | None:
    import hashlib

    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def loaded_adapter_names(args: "TrainingArgs") -> list[str]:
    """The names of the `--load_adapter` (or `--fusion`) directories' adapters (one-line errors
    for bad ones)."""
    names = []
    flag = "--fusion" if args.fusion else "--load_adapter"
    for path in args.fusion or args.load_adapters:
        config = Path(path) / "adapter_config.json"
        if not Path(path).is_dir():
            raise FileNotFoundError(f"{flag} {path} is not a directory")
        meta = read_json(config, "adapter config")
        name = meta.get("name") if isinstance(meta, dict) else None
        if not isinstance(name, str):
            raise ValueError(f"{config} has no adapter 'name'")
        if name in names:
            raise ValueError(f"two {flag} directories hold an adapter named {name!r}")
        if name == args.name and not args.fusion:
            raise ValueError(f"--load_adapter {path} holds an adapter named {name!r}, the name "
                             "of the adapter this run trains; rename one of them")
        names.append(name)
    return names


def resolve_setup(args: "TrainingArgs"):
    """The setup the new adapter trains in: `--adapter_setup`, else the loaded adapters stacked
    under the new one, else the new adapter alone (a name)."""
    from adapter_bert.composition import Stack, parse_heads_from_composition, parse_setup_string

    task = args.name
    loaded = loaded_adapter_names(args)
    if args.fusion:
        from adapter_bert.composition import Fuse

        return Fuse(*loaded)
    if args.adapter_setup is None:
        return Stack(*loaded, task) if loaded else task
    try:
        setup = parse_setup_string(args.adapter_setup)
    except ValueError as e:
        raise ValueError(f"bad --adapter_setup: {e}") from None
    names = (setup,) if isinstance(setup, str) else setup.flatten()
    unknown = [n for n in names if n != task and n not in loaded]
    if unknown:
        raise ValueError(f"--adapter_setup names {', '.join(map(repr, unknown))}, which no "
                         f"--load_adapter provides (loaded: {', '.join(loaded) or 'none'}; this "
                         f"run trains {task!r})")
    if task not in names:
        raise ValueError(f"--adapter_setup {setup} does not hold the adapter this run trains, "
                         f"{task!r}")
    if parse_heads_from_composition(setup) != task:
        raise ValueError(f"--adapter_setup {setup} must end with {task!r}: the setup's output "
                         f"goes to the head this run trains")
    return setup


def validate_args(args: TrainingArgs) -> None:
    """Checks every argument up front; raises ValueError / FileNotFoundError with one line."""
    from adapter_bert.glue.data import find_tsv
    from adapter_bert.methods.registry import preset_names
    from adapter_bert.objectives import MaskedLMObjective, objective_for

    objective = objective_for(args)
    masked_lm = isinstance(objective, MaskedLMObjective)
    task = None if masked_lm else objective.task
    if task is not None and task.prediction_only:
        raise ValueError(f"task {task.name!r} has no training data; train {task.model_task!r}")
    if args.adapter_name is not None:
        from adapter_bert.model import _check_name

        _check_name(args.adapter_name, "--adapter_name: adapter")
    _check_objective_flags(args, masked_lm)
    for name in ("batch_size", "epochs", "max_seq_length", "log_every", "keep_checkpoints"):
        value = getattr(args, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"--{name} must be a positive integer, got {value!r}")
    for name in ("max_steps", "max_train_examples", "eval_every", "checkpoint_every",
                 "bottleneck_size", "eval_batch_size", "adapter_drop"):
        value = getattr(args, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ValueError(f"--{name} must be a positive integer, got {value!r}")
    if not args.learning_rate > 0:
        raise ValueError(f"--learning_rate must be positive, got {args.learning_rate!r}")
    if not 0 <= args.warmup_ratio < 1:
        raise ValueError(f"--warmup_ratio must be in [0, 1), got {args.warmup_ratio!r}")
    if args.weight_decay < 0:
        raise ValueError(f"--weight_decay must be >= 0, got {args.weight_decay!r}")
    if args.max_grad_norm is not None and not args.max_grad_norm > 0:
        raise ValueError(f"--max_grad_norm must be positive, got {args.max_grad_norm!r}")
    if args.strategy not in STRATEGIES:
        raise ValueError(f"unknown --strategy {args.strategy!r}; known: {', '.join(STRATEGIES)}")
    if args.mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"--mixed_precision must be bf16 or fp16, got {args.mixed_precision!r}")
    if args.method is not None and args.method not in preset_names():
        raise ValueError(f"unknown --method {args.method!r}; known: {', '.join(preset_names())}")
    _check_sizing_flags(args)
    _check_adapter_drop(args)
    _check_technique_flags(args, masked_lm)
    above = [b for b in args.bucket_boundaries if b > args.max_seq_length]
    if above:
        raise ValueError(f"--bucket_boundaries {','.join(map(str, above))} above --max_seq_length "
                         f"{args.max_seq_length} would hold no row")
    if args.worker_hosts or args.task_index is not None:
        if args.strategy != "multi_worker_mirrored":
            raise ValueError("--worker_hosts / --task_index need --strategy multi_worker_mirrored")
        if not args.worker_hosts or args.task_index is None:
            raise ValueError("give both --worker_hosts and --task_index (or TF_CONFIG alone)")
        if not 0 <= args.task_index < len(args.worker_hosts):
            raise ValueError(f"--task_index {args.task_index} is not in 0..{len(args.worker_hosts) - 1}")
    if args.pooling not in POOLINGS:
        raise ValueError(f"--pooling must be one of {', '.join(POOLINGS)}, got {args.pooling!r}")
    if args.padding not in ("dynamic", "max_length"):
        raise ValueError(f"--padding must be dynamic or max_length, got {args.padding!r}")
    if args.adapter_config is not None:
        from adapter_bert.configuration import AdapterConfig, quoted

        try:
            AdapterConfig.load(args.adapter_config)
        except (TypeError, ValueError, FileNotFoundError) as e:
            raise ValueError(f"bad --adapter_config {quoted(args.adapter_config)}: {e}") from None
    if args.fusion:
        from adapter_bert.fusion import AdapterFusionConfig

        for flag in ("load_adapters", "adapter_setup", "adapter_config", "bottleneck_size",
                     "non_linearity", "method"):
            if getattr(args, flag) not in (None, ()):
                raise ValueError(f"--fusion trains a fusion of trained adapters, not a new "
                                 f"adapter: --{flag.rstrip('s') if flag == 'load_adapters' else flag} "
                                 "does not apply")
        if args.merge_for_serving:
            raise ValueError("--merge_for_serving merges one adapter into the base; a fusion "
                             "cannot be merged")
        try:
            AdapterFusionConfig.load(args.fusion_config)
        except (TypeError, ValueError) as e:
            raise ValueError(f"bad --fusion_config: {e}") from None
        resolve_setup(args)
    elif args.load_adapters or args.adapter_setup is not None:
        setup = resolve_setup(args)
        if args.merge_for_serving and not isinstance(setup, str):
            raise ValueError(f"--merge_for_serving merges one adapter into the base; this run "
                             f"serves the setup {setup}")
    if args.export_only:
        trained = args.output_dir / trained_dir(args)
        marker = "adapter_fusion_config.json" if args.fusion else "adapter_config.json"
        if not (trained / marker).is_file():
            raise FileNotFoundError(f"--export_only needs a trained {trained_dir(args)} in {trained}")
        return
    if masked_lm:
        from adapter_bert.language_modeling import read_text_lines

        for path in (args.train_file, args.dev_file):
            if path is not None:
                read_text_lines(path)
    elif args.data_dir is not None:
        for split in ("train", "dev"):
            find_tsv(task, args.data_dir, split)


def _check_sizing_flags(args: TrainingArgs) -> None:
    """`--bottleneck_size` / `--non_linearity` resize some presets; anywhere else they would do
    nothing, which is refused rather than ignored."""
    from adapter_bert.methods.registry import sized_presets

    given = [f"--{name}" for name in ("bottleneck_size", "non_linearity") if getattr(args, name)]
    if not given or args.fusion:
        return
    sized = ", ".join(sized_presets())
    if args.adapter_config is not None:
        raise ValueError(f"{' and '.join(given)} resize the --method presets ({sized}); with "
                         "--adapter_config, set the sizes in the config string")
    method = args.method or "houlsby"
    if method not in sized_presets():
        raise ValueError(f"{' and '.join(given)} do nothing with --method {method}; they resize "
                         f"{sized}")


#: The presets `--adapter_drop` applies to: one config with per-layer weights and `leave_out`.
DROPPABLE = ("houlsby", "pfeiffer", "parallel", "lora", "ia3")


def _check_adapter_drop(args: TrainingArgs) -> None:
    if args.adapter_drop is None:
        return
    if args.adapter_config is not None or args.fusion:
        raise ValueError("--adapter_drop leaves a --method preset's adapters out of the lowest "
                         "layers; with --adapter_config, set leave_out in the config string")
    method = args.method or "houlsby"
    if method not in DROPPABLE:
        raise ValueError(f"--adapter_drop applies to {', '.join(DROPPABLE)}, not --method {method}")


def _check_technique_flags(args: TrainingArgs, masked_lm: bool) -> None:
    """Layer-wise learning rates, cautious updating and gradual unfreezing (see
    `adapter_bert.techniques`): values, and the flags each needs or makes meaningless."""
    from adapter_bert.techniques import REGULARIZERS, fisher_file, parse_interval

    decay = args.layer_lr_decay
    if decay is not None and not 0 < decay <= 1:
        raise ValueError(f"--layer_lr_decay must be in (0, 1], got {decay!r}")
    if args.gradual_unfreezing is not None:
        parse_interval(args.gradual_unfreezing, steps_per_epoch=1)
    regularizer = args.regularizer
    if regularizer is not None and regularizer not in REGULARIZERS:
        raise ValueError(f"unknown --regularizer {regularizer!r}; known: {', '.join(REGULARIZERS)}")
    if args.regularizer_strength is not None:
        if regularizer is None:
            raise ValueError("--regularizer_strength weighs a --regularizer (l2sp, ewc or kl); "
                             "none is given")
        if not args.regularizer_strength > 0:
            raise ValueError(f"--regularizer_strength must be positive, got "
                             f"{args.regularizer_strength!r}")
    if regularizer == "ewc":
        if args.fisher_from is None:
            raise ValueError("--regularizer ewc needs --fisher_from DIR (the Fisher estimate a run "
                             "with --save_fisher wrote)")
        fisher_file(args.fisher_from)
    elif args.fisher_from is not None:
        raise ValueError("--fisher_from weighs the pull of --regularizer ewc; without it the "
                         "file would not be used")
    if args.save_fisher and (args.strategy == "tpu" or args.mixed_precision == "fp16"):
        raise ValueError("--save_fisher estimates the Fisher information in float32 on the host; "
                         "it does not run with --strategy tpu or --mixed_precision fp16 (whose "
                         "small squared gradients would underflow)")
    if regularizer == "kl":
        if masked_lm or args.fusion:
            raise ValueError("--regularizer kl keeps an earlier GLUE task's head predicting as "
                             "before; it applies to a GLUE task trained after --load_adapter")
        if not args.load_adapters:
            raise ValueError("--regularizer kl needs --load_adapter DIR: an earlier task's adapter "
                             "with its head, whose predictions the run keeps")


def _check_objective_flags(args: TrainingArgs, masked_lm: bool) -> None:
    """The flags of one objective refused with the other."""
    if not masked_lm:
        for flag in ("train_file", "dev_file"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag} is the text of --task mlm; a GLUE task reads "
                                 "--data_dir (or TFDS)")
        return
    if args.train_file is None:
        raise ValueError("--task mlm needs --train_file (plain text, one sequence a line)")
    refused = {"data_dir": "--data_dir holds GLUE files; --task mlm reads --train_file",
               "fusion": "--fusion trains a fusion for a GLUE task's head, not --task mlm",
               "merge_for_serving": "--task mlm exports no SavedModel to merge into",
               "export_only": "--task mlm exports no SavedModel"}
    for flag, why in refused.items():
        if getattr(args, flag) not in (None, (), False):
            raise ValueError(why)


def make_strategy(name: str = "default", tpu: str | None = None, worker_hosts=(),
                  task_index: int | None = None):
    """The `tf.distribute` strategy for `--strategy` (GPUs if any, else all logical CPUs).

    `multi_worker_mirrored` reads the cluster from `TF_CONFIG`, or builds it from `worker_hosts`
    and `task_index` (`adapter_bert.launch` starts local workers that way).
    """
    import tensorflow as tf

    if worker_hosts:
        os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": list(worker_hosts)},
                                              "task": {"type": "worker", "index": task_index}})

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multi_worker_mirrored":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as e:
            where = repr(tpu) if tpu else "the default address (TPU_NAME, or Colab's)"
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ValueError(f"no TPU found at {where}: {reason}") from None
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")


def make_schedule(peak: float, total_steps: int, warmup_steps: int):
    """The seed's schedule (BERT's): linear warmup then linear decay to zero.

    Example:
    >>> schedule = make_schedule(1.0, total_steps=10, warmup_steps=2)
    >>> [round(float(schedule(s)), 3) for s in (0, 1, 2, 6, 10)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    import keras

    class _Schedule(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            step = keras.ops.cast(step, "float32")
            warm = step / max(warmup_steps, 1)
            decay = (total_steps - step) / max(total_steps - warmup_steps, 1)
            return peak * keras.ops.maximum(0.0, keras.ops.minimum(warm, decay))

        def get_config(self):
            return {"peak": peak, "total_steps": total_steps, "warmup_steps": warmup_steps}

    return _Schedule()


def is_chief(strategy) -> bool:
    """True in single-process runs and on the worker that writes files in a multi-worker run."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (task_type == "worker" and task_id == 0
                                    and "chief" not in resolver.cluster_spec().as_dict())


def resolve_adapter_config(args: TrainingArgs, hidden_size: int) -> str:
    """`--adapter_config` if given, else the `--method` preset (`--bottleneck_size` alone: Houlsby),
    with `--adapter_drop N`'s `leave_out` of layers 0..N-1 (AdapterDrop, Rueckle et al. 2021).

    Example:
    >>> resolve_adapter_config(TrainingArgs(method="lora", adapter_drop=2), hidden_size=32)
    'lora[leave_out=[0, 1]]'
    """
    from adapter_bert.methods.registry import preset_config

    if args.adapter_config:
        return args.adapter_config
    method = args.method or "houlsby"
    config = preset_config(method, hidden_size, args.bottleneck_size, args.non_linearity)
    if args.adapter_drop:
        dropped = f"leave_out={list(range(args.adapter_drop))}"
        config = f"{config[:-1]}, {dropped}]" if config.endswith("]") else f"{config}[{dropped}]"
    return config


def _versions() -> dict:
    import keras
    import tensorflow as tf

    import adapter_bert

    return {"adapter_bert": adapter_bert.__version__, "tensorflow": tf.__version__,
            "keras": keras.__version__, "python": platform.python_version(),
            "machine": f"{platform.machine()} {os.cpu_count()} cpus"}


class _Progress:
    """Progress on stderr: one plain line every `every` steps (loss, throughput, ETA), which is
    what a log file keeps; on a terminal, also a live bar redrawn every step.

    Example:
    >>> import io
    >>> stream = io.StringIO()
    >>> progress = _Progress(total_steps=4, every=2, stream=stream)
    >>> progress.begin(0)
    >>> for step in range(1, 5):
    ...     progress.update(step, 1, 0.5, 8)
    >>> [line.split(" loss")[0] for line in stream.getvalue().splitlines()]
    ['epoch 1 step 2/4', 'epoch 1 step 4/4']
    """

    BAR = 24

    def __init__(self, total_steps: int, every: int, stream=sys.stderr, live: bool | None = None):
        self.total, self.every, self.stream = total_steps, every, stream
        self.live = _is_terminal(stream) if live is None else live
        self.start = time.perf_counter()
        self.examples = 0
        self.first_step = 0
        self.drawn = False

    def update(self, step: int, epoch: int, loss: float, examples: int) -> None:
        self.examples += examples
        elapsed = time.perf_counter() - self.start
        rate = self.examples / max(elapsed, 1e-9)
        eta = (self.total - step) * elapsed / max(step - self.first_step, 1)
        figures = f"loss {loss:.4f} {rate:.1f} ex/s eta {eta:.0f}s"
        if step % self.every == 0 or step == self.total:
            self.note(f"epoch {epoch} step {step}/{self.total} {figures}")
        if self.live and step != self.total:
            done = int(self.BAR * step / max(self.total, 1))
            bar = "=" * done + (">" if done < self.BAR else "") + " " * (self.BAR - done - 1)
            # Drawn, then the cursor back to the line's start: the next bar or line overwrites.
            self.stream.write(f"[{bar}] {step}/{self.total} epoch {epoch} {figures}\033[K\r")
            self.stream.flush()
            self.drawn = True

    def note(self, line: str) -> None:
        """A permanent line (progress, dev scores), below the live bar's last state."""
        if self.drawn:
            self.stream.write("\033[K")
            self.drawn = False
        print(line, file=self.stream, flush=True)

    def begin(self, first_step: int) -> None:
        self.first_step = first_step
        self.start = time.perf_counter()
        self.examples = 0


def _is_terminal(stream) -> bool:
    """Whether `stream` shows on a terminal, also when the command's stderr filter
    (`adapter_bert.console`) stands between them."""
    if stream is sys.stderr and os.environ.get("ADAPTER_BERT_STDERR_TTY") is not None:
        return os.environ["ADAPTER_BERT_STDERR_TTY"] == "1"
    return bool(getattr(stream, "isatty", lambda: False)())


class TrainingInterrupted(Exception):
    """Ctrl-C during training: where it stopped, and the checkpoint a rerun resumes from."""

    def __init__(self, step: int, checkpoint_step: int | None):
        self.step, self.checkpoint_step = step, checkpoint_step
        where = (f"step {checkpoint_step}, the last checkpoint" if checkpoint_step
                 else "the start: no checkpoint was written yet")
        super().__init__(f"interrupted at step {step}; rerun the same command to resume "
                         f"(from {where})")


def _check_resume_key(args: TrainingArgs, out: Path) -> None:
    """Refuses an output directory that holds a run with other arguments (before any write)."""
    key_file = out / "checkpoints" / "run_args.json"
    if args.overwrite or not key_file.is_file():
        return
    previous = read_json(key_file, "run arguments")
    current = json.loads(json.dumps(args.resume_key()))
    if previous != current:
        changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
        raise ValueError(f"{out} holds a run with other arguments ({', '.join(changed)} differ); "
                         "pass --overwrite or another --saved_models_dir")


class _Claim:
    """This run's hold on its output directory.

    The directory is locked against a second run (`<saved_models_dir>/.<name>.lock`, with the
    holder's pid). With `--overwrite`, a previous run is moved aside, not deleted: it is deleted
    once this run has written its first checkpoint (`commit`), and put back if this run fails
    before that (`restore`).
    """

    def __init__(self, args: TrainingArgs, chief: bool):
        from adapter_bert.io_utils import DirectoryLock

        self.args, self.chief, self.out = args, chief, args.output_dir
        self.step, self.checkpoint_step, self.aside = 0, None, None
        self.lock = DirectoryLock(self.out.parent / f".{self.out.name}.lock", what="another run",
                                  directory=self.out)

    def open(self) -> None:
        if not self.chief:
            return
        _check_resume_key(self.args, self.out)
        self.lock.acquire()
        try:
            if self.args.overwrite and self.out.exists():
                self.aside = self.out.with_name(f".{self.out.name}.replaced-{os.getpid()}")
                shutil.rmtree(self.aside, ignore_errors=True)
                os.rename(self.out, self.aside)
            (self.out / "checkpoints").mkdir(parents=True, exist_ok=True)
            write_json(self.out / "checkpoints" / "run_args.json", self.args.resume_key())
        except BaseException:
            self.restore()
            raise

    def commit(self, step: int) -> None:
        self.checkpoint_step = step
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.aside = None

    def restore(self) -> None:
        if self.aside is not None:
            shutil.rmtree(self.out, ignore_errors=True)
            os.rename(self.aside, self.out)
            self.aside = None

    def close(self, failed: bool) -> None:
        if not self.chief:
            return
        if failed:
            self.restore()
        else:
            self.commit(self.checkpoint_step)
        self.lock.release()


@contextlib.contextmanager
def _claimed_output(args: TrainingArgs, chief: bool):
    claim = _Claim(args, chief)
    claim.open()
    failed = True
    try:
        yield claim
        failed = False
    finally:
        claim.close(failed)


def build_model(args: TrainingArgs, objective=None):
    """The pretrained base with the run's adapter (or fusion) and head added, active and
    trainable (`objective`: `adapter_bert.objectives.objective_for(args)` when not given).

    Call it inside the strategy's scope. The benchmarks build their models through it too.
    """
    from adapter_bert import AdapterBertModel
    from adapter_bert.objectives import objective_for

    objective = objective or objective_for(args)
    model = AdapterBertModel.from_pretrained(args.casing)
    layers = model.config.num_hidden_layers
    if args.adapter_drop is not None and args.adapter_drop >= layers:
        raise ValueError(f"--adapter_drop {args.adapter_drop} would leave the adapters out of "
                         f"every layer; this model has {layers} (use 1..{layers - 1})")
    # Frozen; only the new head trains. Learning without forgetting also reads the earlier heads.
    with_heads = args.regularizer == "kl"
    for path in args.load_adapters + args.fusion:
        model.load_adapter(path, with_head=with_heads)
    if not args.fusion:
        model.add_adapter(args.name, config=resolve_adapter_config(args, model.config.hidden_size))
    objective.add_head(model, args.name)
    setup = resolve_setup(args)
    if args.fusion:
        model.add_adapter_fusion(setup, config=args.fusion_config)
        model.train_adapter_fusion(setup)  # the fusion and the active head, the run's
    else:
        model.train_adapter(args.name)
        model.set_active_adapters(setup)
    model.bert.recompute_attention = args.recompute_attention
    return model


def trained_dir(args: TrainingArgs) -> str:
    """Where a run keeps what it trains: `adapter` (with its head) or `fusion`."""
    return "fusion" if args.fusion else "adapter"


def save_trained(model, args: TrainingArgs, out: Path) -> None:
    """Saves the adapter (or fusion) this run trains, and its head."""
    if args.fusion:
        model.save_adapter_fusion(out / "fusion", resolve_setup(args).name, with_head=args.name)
    else:
        model.save_adapter(out / "adapter", args.name)


def reload_trained(model, args: TrainingArgs, out: Path) -> None:
    """Loads the saved adapter (or fusion) and head back into `model` and activates the setup."""
    if args.fusion:
        model.load_adapter_fusion(out / "fusion")
    else:
        model.load_adapter(out / "adapter")
    model.set_active_adapters(resolve_setup(args))
    model.active_head = args.name


def trained_variables(model, args: TrainingArgs) -> dict:
    """The trained weights (adapter or fusion, and head) by stable name."""
    from adapter_bert.methods.base import named_variables

    owner = (model.fusions[resolve_setup(args).name] if args.fusion
             else model.adapter_modules[args.name])
    variables = dict(owner.named_variables())
    variables.update({f"head.{k}": v for k, v in named_variables(model.heads[args.name]).items()})
    return variables


def make_optimizer(args: TrainingArgs, total_steps: int, factors: dict | None = None):
    """AdamW on the warmup-then-linear-decay schedule: returns `(schedule, optimizer)`.

    With layer-wise learning rates or gradual unfreezing it is `TechniquesAdamW`
    (`adapter_bert.techniques`): `factors` maps `id(variable)` to its learning-rate factor.
    `args.max_grad_norm` is not the optimizer's: the train step clips (`make_train_step`).
    """
    import keras

    schedule = make_schedule(args.learning_rate, total_steps, int(round(args.warmup_ratio * total_steps)))
    if args.layer_lr_decay is not None or args.gradual_unfreezing is not None:
        from adapter_bert.techniques import make_techniques_adamw

        optimizer = make_techniques_adamw(schedule, weight_decay=args.weight_decay, factors=factors)
    else:
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=args.weight_decay)
    if args.mixed_precision == "fp16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return schedule, optimizer


def clip_global_norm_across_replicas(grads, max_norm):
    """`grads` scaled so that their sum over the replicas has a global norm of at most
    `max_norm`: what `torch.nn.utils.clip_grad_norm_` does to one device's gradient of the whole
    batch. Keras' own `clipnorm` differs twice: it clips each weight's gradient on its own, and
    under tf.distribute each replica's part before they are summed. `None` entries stay `None`;
    sparse gradients come back dense (`dense_gradients`).

    With several replicas the norm needs the summed gradient, so this costs one more all-reduce
    (only when clipping is asked for).

    Example:
    >>> import tensorflow as tf
    >>> clipped = clip_global_norm_across_replicas([tf.constant([3.0]), None, tf.constant([4.0])], 1.0)
    >>> [None if g is None else round(float(g[0]), 6) for g in clipped]
    [0.6, None, 0.8]
    """
    import tensorflow as tf

    present = [g for g in dense_gradients(grads) if g is not None]
    context = tf.distribute.get_replica_context()
    summed = present
    if context is not None and context.num_replicas_in_sync > 1:
        summed = context.all_reduce(tf.distribute.ReduceOp.SUM, present)
    clipped, _ = tf.clip_by_global_norm(present, max_norm, use_norm=tf.linalg.global_norm(summed))
    clipped = iter(clipped)
    return [None if g is None else next(clipped) for g in grads]


def dense_gradients(grads):
    """`grads` with each sparse gradient (an embedding's `tf.IndexedSlices`) made dense, so a row
    read by several tokens, or updated by several replicas, has its parts added before anything
    squares them. `None` entries stay `None`.

    Example:
    >>> import tensorflow as tf
    >>> rows = tf.IndexedSlices(tf.constant([[1.0], [2.0]]), tf.constant([0, 0]), tf.constant([3, 1]))
    >>> dense_gradients([rows, None])[0].numpy().ravel().tolist()
    [3.0, 0.0, 0.0]
    """
    import tensorflow as tf

    return [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]


def make_train_step(model, optimizer, trainable, loss, replicas: int = 1, penalty=None,
                    forgetting=None, max_grad_norm: float | None = None):
    """One optimisation step on one replica's batch: forward, loss, gradients, update.

    `loss(labels, logits)` is an objective's (`adapter_bert.objectives`): the replica's share of
    the global batch's loss, so that the gradients summed across replicas equal one device's
    gradient on the whole batch; a trained AdapterFusion's regularisation is added once (a
    `1 / replicas` share per replica), and so is `penalty()` (L2-SP or EWC,
    `adapter_bert.techniques.WeightPull`). `forgetting(inputs, encoder_outputs)` (learning
    without forgetting) is already the replica's share. `max_grad_norm` clips the global norm of
    the whole batch's gradient (`clip_global_norm_across_replicas`).
    The benchmarks in `bench/` call the same step, so their throughput is the training command's.

    Example:
    >>> import keras
    >>> from adapter_bert import AdapterBertModel
    >>> from adapter_bert.testing import random_inputs, tiny_encoder
    >>> model = AdapterBertModel(tiny_encoder())
    >>> model.add_adapter("t", config="lora")
    >>> model.add_classification_head("t", num_labels=2)
    >>> model.train_adapter("t")
    >>> optimizer = keras.optimizers.AdamW(1e-3)
    >>> from adapter_bert.objectives import GlueObjective
    >>> from adapter_bert.glue import get_task
    >>> task_loss = GlueObjective(None, get_task("sst2")).loss(global_batch=2)
    >>> step = make_train_step(model, optimizer, model.trainable_weights, task_loss)
    >>> loss = step(random_inputs(batch=2, seq=8), np.array([0, 1], "int32"))
    >>> bool(np.isfinite(float(loss)))
    True
    """
    import tensorflow as tf

    objective_loss = loss

    # Only the trained weights are watched: Keras freezes a layer without making its TensorFlow
    # variables untrainable, so the tape would otherwise record the frozen base too (below the
    # lowest adapter of an AdapterDrop setup, a whole backward pass that nothing reads).
    watched = [getattr(v, "value", v) for v in trainable]

    def train_step(inputs, labels):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(watched)
            if forgetting is None:
                loss = objective_loss(labels, model(inputs, training=True))
            else:  # one encoder pass for the trained head and the earlier ones
                outputs = model.bert(inputs, training=True)
                logits = model.head_logits(model.active_head, outputs, inputs, training=True)
                loss = objective_loss(labels, logits)
                loss = loss + tf.cast(forgetting(inputs, outputs), loss.dtype)
            regularization = model.fusion_regularization_loss()
            if not isinstance(regularization, float):
                loss = loss + tf.cast(regularization, loss.dtype) / replicas
            if penalty is not None:
                loss = loss + tf.cast(penalty(), loss.dtype) / replicas
            scaled = optimizer.scale_loss(loss) if hasattr(optimizer, "scale_loss") else loss
        # Dense, as Adam's second moment of a row needs the row's whole gradient: Keras' sparse
        # path squares a repeated row's parts before adding them (a token twice in a batch, or
        # the same row on two replicas), which a dense (PyTorch) Adam does not.
        grads = dense_gradients(tape.gradient(scaled, watched))
        if max_grad_norm is not None:
            # A loss-scaled gradient is clipped at the scaled norm: the same clip, before the
            # optimizer divides the scale out.
            limit = max_grad_norm
            if hasattr(optimizer, "scale_loss"):
                limit = max_grad_norm * tf.cast(optimizer.scale_loss(1.0), tf.float32)
            grads = clip_global_norm_across_replicas(grads, limit)
        # Some trained weights get no gradient from a given head (a ReFT unit for suffix
        # positions a CLS head never reads): they stay as they are, without Keras' warning.
        optimizer.apply_gradients([(g, v) for g, v in zip(grads, trainable) if g is not None])
        return loss

    return train_step


#: `--mixed_precision` value -> Keras' global dtype policy.
PRECISION_POLICIES = {"bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


@contextlib.contextmanager
def precision_policy(mixed_precision: str | None):
    """Keras' global policy for `--mixed_precision` (None: left as it is) inside the block, the
    previous one after it. Layers take their compute dtype when they are built, so build the
    model inside.

    Example:
    >>> import keras
    >>> with precision_policy("bf16"):
    ...     keras.mixed_precision.global_policy().name
    'mixed_bfloat16'
    >>> keras.mixed_precision.global_policy().name
    'float32'
    """
    import keras

    previous = keras.mixed_precision.global_policy()
    if mixed_precision:
        keras.mixed_precision.set_global_policy(PRECISION_POLICIES[mixed_precision])
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def run(args: TrainingArgs) -> dict:
    """Trains, evaluates and saves as described in the module docstring; returns results.json."""
    validate_args(args)
    with precision_policy(args.mixed_precision):
        return export_only(args) if args.export_only else train(args)[0]


def train(args: TrainingArgs):
    """Like `run` (without the argument check and precision policy): returns `(results, model)`."""
    import keras

    from adapter_bert import load_tokenizer
    from adapter_bert.glue.data import num_batches
    from adapter_bert.objectives import objective_for

    objective = objective_for(args)
    wall_start = time.perf_counter()
    tokenizer = load_tokenizer(args.casing)
    if args.max_seq_length > tokenizer.max_positions:
        raise ValueError(f"--max_seq_length {args.max_seq_length} is above the model's "
                         f"{tokenizer.max_positions} positions")
    objective.load(tokenizer)
    strategy = make_strategy(args.strategy, args.tpu, args.worker_hosts, args.task_index)
    chief = is_chief(strategy)
    static_shapes = args.strategy == "tpu"
    if objective.num_train == 0:
        raise ValueError(f"no training examples in {objective.train_source}")
    steps_per_epoch = num_batches(objective.num_train, args.batch_size, drop_remainder=static_shapes)
    if steps_per_epoch == 0:
        raise ValueError(f"{objective.num_train} training examples make no full batch of "
                         f"{args.batch_size}")
    # Every check that can refuse the run comes before the output directory is touched: the
    # input pipeline's (bucket boundaries) and the model's (a checkpoint that cannot be read).
    first_epoch = objective.train_dataset(0, static_shapes)  # built once, used by the loop
    total_steps = steps_per_epoch * args.epochs
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)
    eval_every = args.eval_every or steps_per_epoch
    checkpoint_every = args.checkpoint_every or eval_every

    keras.utils.set_random_seed(args.seed)
    with strategy.scope():
        model = build_model(args, objective)
        # Gathering the real tokens gives data-dependent shapes, which TPUs cannot compile.
        model.bert.skip_padding = not static_shapes
        trainable = model.trainable_weights
        techniques = build_techniques(args, model, trainable, steps_per_epoch)
        schedule, optimizer = make_optimizer(args, total_steps, techniques.factors)
        # Slots only for the adapter and head: the frozen base gets no optimizer state.
        optimizer.build(trainable)
        seeds = [v for v in model.variables if "seed_generator_state" in v.path]
    with _claimed_output(args, chief) as claim:
        try:
            return _train_in(args, claim, objective, tokenizer, strategy, model, optimizer,
                             schedule, trainable, seeds, steps_per_epoch, total_steps, eval_every,
                             checkpoint_every, static_shapes, wall_start, first_epoch, techniques)
        except KeyboardInterrupt:
            raise TrainingInterrupted(claim.step, claim.checkpoint_step) from None


@dataclasses.dataclass
class Techniques:
    """A run's fine-tuning techniques (`adapter_bert.techniques`), built with its model."""

    factors: dict | None  # id(variable) -> learning-rate factor
    unfreezing: object  # UnfreezingSchedule
    penalty: object | None = None  # WeightPull (l2sp, ewc)
    forgetting: object | None = None  # ForgettingPenalty (kl)
    start: dict | None = None  # the trained base weights' starting values (weight_change)


def build_techniques(args: TrainingArgs, model, trainable, steps_per_epoch: int) -> Techniques:
    """The techniques of `args` for `model` (inside the strategy's scope, before any write):
    one-line errors for a regularizer with nothing to act on or a Fisher file of another model."""
    from adapter_bert import techniques as tq

    num_layers = model.config.num_hidden_layers
    parts = tq.trained_parts(model, trainable)
    factors = None
    if args.layer_lr_decay is not None:
        factors = {id(v): f for v, f in
                   zip(trainable, tq.layer_lr_factors(parts, num_layers, args.layer_lr_decay))}
    unfreezing = tq.UnfreezingSchedule(trainable)
    if args.gradual_unfreezing is not None:
        unfreezing = tq.UnfreezingSchedule(trainable, tq.unfreezing_stages(parts, num_layers),
                                           tq.parse_interval(args.gradual_unfreezing, steps_per_epoch))
    found = Techniques(factors, unfreezing, start=tq.snapshot_base(model, trainable))
    strength = args.regularizer_strength or 1.0
    if args.regularizer in ("l2sp", "ewc"):
        weights = tq.trained_base_weights(model, trainable)
        if not weights:
            raise ValueError(f"--regularizer {args.regularizer} pulls the trained base weights "
                             "toward their start, and this run trains none (train the base: "
                             "--method full, --adapter_config partial[last_layers=N] or bitfit)")
        fisher = tq.read_fisher(args.fisher_from, model, weights) if args.regularizer == "ewc" else None
        found.penalty = tq.WeightPull(weights, strength, fisher)
    elif args.regularizer == "kl":
        teacher = _teacher(args)
        teacher.bert.skip_padding = model.bert.skip_padding  # TPUs: static shapes for both
        found.forgetting = tq.ForgettingPenalty(model, teacher, _earlier_heads(args, model),
                                                strength, args.batch_size)
    return found


def _earlier_heads(args: TrainingArgs, model) -> list[str]:
    heads = [n for n in loaded_adapter_names(args) if n in model.heads]
    if not heads:
        raise ValueError("--regularizer kl keeps earlier heads predicting as before, and no "
                         "--load_adapter directory holds a head")
    return heads


def _teacher(args: TrainingArgs):
    """The frozen starting model of learning without forgetting: the base with the loaded
    adapters and their heads, as they were before this run."""
    from adapter_bert import AdapterBertModel
    from adapter_bert.composition import Stack

    teacher = AdapterBertModel.from_pretrained(args.casing)
    for path in args.load_adapters:
        teacher.load_adapter(path, with_head=True)
    names = loaded_adapter_names(args)
    teacher.set_active_adapters(names[0] if len(names) == 1 else Stack(*names))
    teacher.freeze_model()
    return teacher


def _train_in(args, claim, objective, tokenizer, strategy, model, optimizer, schedule, trainable,
              seeds, steps_per_epoch, total_steps, eval_every, checkpoint_every, static_shapes,
              wall_start, first_epoch, techniques):
    """The loop and what follows it, in the claimed output directory (`train`'s second half)."""
    import tensorflow as tf

    chief, out, replicas = claim.chief, claim.out, strategy.num_replicas_in_sync
    # Host-side bookkeeping, outside the strategy scope: collective ops cannot mirror strings.
    state = {"history": tf.Variable("[]", dtype=tf.string, trainable=False),
             "best": tf.Variable("null", dtype=tf.string, trainable=False),
             "step": tf.Variable(0, dtype=tf.int64, trainable=False),
             "train_seconds": tf.Variable(0.0, dtype=tf.float64, trainable=False),
             "train_examples": tf.Variable(0, dtype=tf.int64, trainable=False)}
    checkpoint = tf.train.Checkpoint(
        trainable={f"v{i}": v for i, v in enumerate(trainable)}, optimizer=optimizer,
        seeds={f"s{i}": v for i, v in enumerate(seeds)}, **state)
    # Every worker takes part in saving (as tf.distribute requires); only the chief's copy is kept.
    worker_dir = out / "checkpoints" if chief else Path(tempfile.mkdtemp(prefix="adapter_bert_worker_"))
    manager = tf.train.CheckpointManager(checkpoint, str(worker_dir), max_to_keep=args.keep_checkpoints)
    latest = tf.train.latest_checkpoint(str(out / "checkpoints"))
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        print(f"resuming from {latest} at step {int(state['step'].numpy())}", file=sys.stderr)
    global_batch = args.batch_size

    unfreezing = techniques.unfreezing

    def distributed_step_for(stage: int):
        # Gradual unfreezing: each stage is its own step, over the weights trained by then.
        train_step = make_train_step(model, optimizer, unfreezing.variables(stage),
                                     objective.loss(global_batch), replicas,
                                     penalty=techniques.penalty, forgetting=techniques.forgetting,
                                     max_grad_norm=args.max_grad_norm)

        def distributed_step(inputs, labels):
            losses = strategy.run(train_step, args=(inputs, labels))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

        return distributed_step

    spec = tf.TensorSpec([None, None], tf.int32)

    def predict(inputs):
        return model(inputs, training=False)

    id_spec = [{name: spec for name in objective.input_names}]
    predict_step = tf.function(predict, input_signature=id_spec)

    writer = (tf.summary.create_file_writer(str(out / "logs")) if chief
              else tf.summary.create_noop_writer())
    progress = _Progress(total_steps, args.log_every, stream=sys.stderr if chief else open(os.devnull, "w"))
    step = int(state["step"].numpy())
    claim.step = step
    if latest:
        claim.commit(step)  # resuming: the directory already holds this run's checkpoint
    progress.begin(step)
    compiled_steps = {}  # unfreezing stage -> traced step
    best_weights = None  # non-chief workers keep the best epoch in memory (the chief saves it)
    history = json.loads(state["history"].numpy().decode())
    best = json.loads(state["best"].numpy().decode())
    while step < total_steps:
        epoch = step // steps_per_epoch
        skip = step - epoch * steps_per_epoch
        dataset = first_epoch if epoch == 0 else objective.train_dataset(epoch, static_shapes)
        dataset = dataset.skip(skip).take(total_steps - step)
        distributed = strategy.experimental_distribute_dataset(dataset)
        element_spec = distributed.element_spec
        for inputs, labels in distributed:
            stage = unfreezing.stage(step)
            if stage not in compiled_steps:
                # Dynamic padding: one trace for every sequence length. Static shapes (TPU): one
                # trace, and one compiled program, per bucket length.
                compiled_steps[stage] = tf.function(
                    distributed_step_for(stage),
                    input_signature=None if static_shapes else element_spec)
                if unfreezing.stages is not None:
                    progress.note(f"gradual unfreezing: from step {step}, "
                                  f"{len(unfreezing.variables(stage))} of {len(trainable)} "
                                  "trained weights train")
            started = time.perf_counter()
            loss = float(compiled_steps[stage](inputs, labels))
            batch = int(sum(int(tf.shape(t)[0]) for t in strategy.experimental_local_results(labels)))
            state["train_seconds"].assign_add(time.perf_counter() - started)
            state["train_examples"].assign_add(batch)
            step += 1
            claim.step = step
            state["step"].assign(step)
            progress.update(step, epoch + 1, loss, batch)
            with writer.as_default(step=step):
                tf.summary.scalar("train/loss", loss)
                tf.summary.scalar("train/learning_rate", float(schedule(step)))
            end_of_epoch = step % steps_per_epoch == 0 or step == total_steps
            if step % eval_every == 0 or end_of_epoch:
                metrics = objective.dev_metrics(predict_step)
                entry = {"epoch": round(step / steps_per_epoch, 4), "step": step, "dev": metrics}
                history.append(entry)
                progress.note(f"dev at step {step}: "
                              + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                with writer.as_default(step=step):
                    for k, v in metrics.items():
                        tf.summary.scalar(f"dev/{k}", v)
                if objective.improves(metrics, best):
                    best = entry
                    if chief:
                        save_trained(model, args, out)
                    else:
                        best_weights = {k: v.numpy().copy()
                                        for k, v in trained_variables(model, args).items()}
                state["history"].assign(json.dumps(history))
                state["best"].assign(json.dumps(best))
            if step % checkpoint_every == 0 or end_of_epoch:
                manager.save(checkpoint_number=step)
                claim.commit(step)  # a run replaced with --overwrite is gone only from here on
        writer.flush()

    setup = resolve_setup(args)
    results = {
        "task": objective.task_name, "adapter_name": args.name,
        "method": "fusion" if args.fusion else (
            args.method or ("custom" if args.adapter_config else "houlsby")),
        "adapter_config": None if args.fusion else resolve_adapter_config(args, model.config.hidden_size),
        "adapter_setup": str(setup),
        "fusion": ({"name": setup.name, "adapters": list(setup.flatten()),
                    "config": model.fusions[setup.name].fusion_config.to_dict()}
                   if args.fusion else None),
        "loaded_adapters": [{"name": n, "path": str(p)}
                            for n, p in zip(loaded_adapter_names(args), args.load_adapters)],
        "epochs": history, "best": best, "final": history[-1] if history else None,
        "main_metric": objective.main_metric,
        "trainable_params": int(sum(np.prod(v.shape) for v in trainable)),
        "total_params": int(sum(np.prod(v.shape) for v in model.weights)),
        "train_examples_per_second": float(state["train_examples"].numpy())
        / max(float(state["train_seconds"].numpy()), 1e-9),
        "train_steps": step, "global_batch_size": global_batch, "replicas": replicas,
        "wall_seconds": time.perf_counter() - wall_start, "versions": _versions(),
        "args": dataclasses.asdict(args),
    }
    if not chief:
        shutil.rmtree(worker_dir, ignore_errors=True)
        if best_weights is not None:
            for key, variable in trained_variables(model, args).items():
                variable.assign(best_weights[key])
        return results, model
    if (out / trained_dir(args)).is_dir():
        reload_trained(model, args, out)  # the best epoch, not the last
        # A traced function keeps the variables it was traced with: trace anew for the reloaded
        # adapter and head.
        predict_step = tf.function(predict, input_signature=id_spec)
    from adapter_bert.techniques import weight_change

    results["weight_change"] = weight_change(model, techniques.start)
    if args.save_fisher:
        results["fisher"] = _save_fisher(args, objective, model, out, global_batch, static_shapes)
    if args.load_adapters:
        model.save_adapter_setup(out / "setup", setup)
    if args.predict_test and objective.writes_predictions:
        results["predictions"] = _predict_test_sets(args, objective, model, tokenizer, out,
                                                    predict_step)
    if args.export and objective.exports:
        results["export"] = str(_export(args, objective.task, model, tokenizer, out)
                                .relative_to(out))
    write_json(out / "results.json", results)
    return results, model


def _save_fisher(args, objective, model, out: Path, global_batch: int, static_shapes) -> str:
    """`--save_fisher`: the diagonal Fisher estimate of the base weights at the best epoch, over
    one pass of the training data, as `<out>/fisher.safetensors`."""
    from adapter_bert.io_utils import Tensors, write_file
    from adapter_bert.techniques import FISHER_FILE, estimate_fisher

    print("estimating the Fisher information over the training data", file=sys.stderr)
    fisher = estimate_fisher(model, objective.train_dataset(0, static_shapes),
                             objective.loss(global_batch))
    write_file(out / FISHER_FILE, Tensors(fisher, {"format": "adapter_bert.fisher",
                                                   "casing": str(args.casing)}))
    return FISHER_FILE


def _export(args, task, model, tokenizer, out: Path) -> Path:
    """The active (best) adapter as a SavedModel in `<out>/export/<version>/` (TF Serving's layout)."""
    from adapter_bert.export import export_saved_model

    path = export_saved_model(model, out / "export", args.name, tokenizer,
                              max_seq_length=args.max_seq_length,
                              pair_tasks=[args.name] if task.text_b else [],
                              merge=args.merge_for_serving, setups={args.name: resolve_setup(args)})
    print(f"SavedModel: {path}", file=sys.stderr)
    return path


def export_only(args: TrainingArgs) -> dict:
    """`--export_only`: the SavedModel of an adapter trained earlier, without training."""
    from adapter_bert import AdapterBertModel, load_tokenizer
    from adapter_bert.glue.tasks import get_task

    task, out = get_task(args.task), args.output_dir
    model = AdapterBertModel.from_pretrained(args.casing)
    for path in args.load_adapters + args.fusion:
        model.load_adapter(path, with_head=False)
    reload_trained(model, args, out)
    labels = model.heads[args.name].num_labels
    if labels != task.num_labels:
        raise ValueError(f"the head in {out / trained_dir(args)} has {labels} outputs; task "
                         f"{task.name} has {task.num_labels}: that adapter was trained for another "
                         "task")
    path = _export(args, task, model, load_tokenizer(args.casing), out)
    return {"task": task.name, "adapter_name": args.name, "export": str(path.relative_to(out))}


def _predict_test_sets(args, objective, model, tokenizer, out: Path, predict_step) -> list[str]:
    """GLUE test predictions of the active (best) adapter, in the benchmark's submission format."""
    from adapter_bert.glue.data import encode_examples
    from adapter_bert.glue.submission import write_submission
    from adapter_bert.glue.tasks import TASKS

    from adapter_bert.objectives import load_examples

    task = objective.task
    written = []
    targets = [(task, split) for split in task.test_splits]
    targets += [(t, s) for t in TASKS.values() if t.prediction_only and t.model_task == task.name
                for s in t.test_splits]
    for target, split in targets:
        try:
            examples = load_examples(args, target, split)
        except (FileNotFoundError, ValueError) as e:
            print(f"no {target.name} {split} predictions: {e}", file=sys.stderr)
            continue
        predictions = objective.predict(predict_step,
                                        encode_examples(tokenizer, examples, args.max_seq_length))
        path = write_submission(target, split, [e.guid for e in examples], predictions,
                                out / "predictions")
        written.append(str(path.relative_to(out)))
    return written

