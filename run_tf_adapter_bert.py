"""Trains an adapter for one GLUE task, or a language adapter with masked language modelling:
flags -> adapter_bert.training.run().

    python run_tf_adapter_bert.py --casing bert-base-uncased --bottleneck_size 32 \
        --non_linearity gelu --task mrpc --batch_size 32 --epochs 10 --max_seq_length 128 \
        --learning_rate 3e-4 --warmup_ratio 0.1 --saved_models_dir saved_models

    python run_tf_adapter_bert.py --flagfile flags/quickstart.flags --data_dir ../shared/data/glue/MRPC

    # MAD-X: a language adapter on plain text, then a task adapter stacked on it
    python run_tf_adapter_bert.py --task mlm --train_file en.txt --adapter_name en \
        --adapter_config seq_bn_inv
    python run_tf_adapter_bert.py --task mrpc --load_adapter saved_models/en/adapter \
        --adapter_setup "Stack(en, mrpc)" --data_dir ../shared/data/glue/MRPC

Every flag is checked before anything is written; a bad one exits with status 2 and one line.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # see adapter_bert/__init__.py

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS


def _package_module(name: str):
    """`adapter_bert/<name>.py`, loaded without the package: importing `adapter_bert` imports
    TensorFlow, whose first notices the stderr filter must already catch."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        f"_adapter_bert_{name}", Path(__file__).resolve().parent / "adapter_bert" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _console():
    return _package_module("console")


# The flags are the sweep's too (adapter_bert/command_flags.py).
_command_flags = _package_module("command_flags")
_command_flags.define_training_flags()
flags.adopt_module_key_flags(_command_flags)  # --help lists them as this command's
args_from_flags = _command_flags.args_from_flags


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments: {' '.join(argv[1:])} (every option is a --flag; "
              "--helpfull lists them)", file=sys.stderr)
        sys.exit(2)
    if not FLAGS.verbose:
        _console().install_stderr_filter()
        from adapter_bert.console import quiet_python_logging

        quiet_python_logging()
    from adapter_bert.io_utils import DirectoryBusyError
    from adapter_bert.training import TrainingInterrupted, run

    try:
        args = args_from_flags()
        results = run(args)
    except TrainingInterrupted as e:
        print(str(e), file=sys.stderr)
        sys.exit(130)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, TypeError,
            DirectoryBusyError) as e:
        message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    if args.export_only:
        print(f"SavedModel: {args.output_dir / results['export']}")
        return
    best = results["best"]
    print(f"best dev ({results['main_metric']}) at step {best['step']}: "
          + ", ".join(f"{k} {v:.4f}" for k, v in best["dev"].items()))
    print(f"results: {args.output_dir / 'results.json'}")


def parse_flags(argv):
    """absl's flag parsing, with a bad flag as one `error:` line and status 2 like every other
    bad input (absl's own is a banner and status 1)."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
