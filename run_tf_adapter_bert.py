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

import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # see adapter_bert/__init__.py

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("casing", "all-minilm-l6-v2",
                    "Pretrained BERT: hub id (bert-base-uncased), short name or local directory.")
flags.DEFINE_string("task", "mrpc", "GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli), "
                    "or mlm: masked language modelling on --train_file.")
flags.DEFINE_string("data_dir", None, "GLUE TSV directory (root or task folder); unset: TFDS glue/<task>.")
flags.DEFINE_string("train_file", None, "--task mlm: UTF-8 text, one sequence a line.")
flags.DEFINE_string("dev_file", None, "--task mlm: dev text (default: a fixed 5% of --train_file's lines).")
flags.DEFINE_string("adapter_name", None, "Name of the trained adapter and head, and of the output "
                    "directory (default: the task), e.g. a language adapter's 'en'.")
flags.DEFINE_integer("bottleneck_size", None, "Houlsby adapter width (shorthand for --method houlsby).")
flags.DEFINE_string("non_linearity", None, "Adapter activation: gelu, relu, swish, tanh, ...")
flags.DEFINE_string("adapter_config", None,
                    "Any adapter config string, e.g. 'double_seq_bn[reduction_factor=24]' or 'lora[r=8]'.")
flags.DEFINE_multi_string("load_adapter", [],
                          "An adapter trained earlier (a save_adapter directory), loaded frozen; "
                          "repeat for several.")
flags.DEFINE_string("adapter_setup", None,
                    "The composition the new adapter trains in, e.g. 'Stack(sst2, mrpc)' (names: "
                    "the loaded adapters and --task). Default: the loaded adapters stacked "
                    "under the new one.")
flags.DEFINE_list("fusion", [],
                  "Trained adapters' directories (DIR1,DIR2,...): loads them frozen and trains an "
                  "AdapterFusion of them with a new head for --task.")
flags.DEFINE_string("fusion_config", "dynamic", "AdapterFusion config: dynamic, static or a JSON file.")
flags.DEFINE_string("method", None, "Method preset registered by a method module: houlsby, "
                    "pfeiffer, parallel, lora, ia3, prefix, bitfit, full, ...")
flags.DEFINE_enum("pooling", "cls", ["cls", "cls_token", "mean"],
                  "Head pooling: BERT's pooler, the [CLS] state itself, or masked mean.")
flags.DEFINE_integer("batch_size", 32, "Global training batch size.")
flags.DEFINE_integer("eval_batch_size", None, "Evaluation batch size (default 2 x batch_size).")
flags.DEFINE_integer("epochs", 10, "Training epochs.")
flags.DEFINE_integer("max_seq_length", 128, "Longest sequence in tokens (pairs are truncated).")
flags.DEFINE_float("learning_rate", 3e-4, "Peak learning rate of AdamW.")
flags.DEFINE_float("warmup_ratio", 0.1, "Fraction of steps with linear warmup (then linear decay).")
flags.DEFINE_float("weight_decay", 0.0, "AdamW decoupled weight decay.")
flags.DEFINE_float("max_grad_norm", None, "Clip gradients to this norm.")
flags.DEFINE_float("layer_lr_decay", None, "Layer-wise learning rates: layer l of L trains at "
                   "lr * D**(L - l), the embeddings lowest, the head at lr.")
flags.DEFINE_enum("regularizer", None, ["l2sp", "ewc", "kl"],
                  "Cautious updating: l2sp pulls the trained base weights toward their start, ewc "
                  "weights that pull by --fisher_from, kl keeps the --load_adapter heads' predictions.")
flags.DEFINE_float("regularizer_strength", None, "Weight of --regularizer (default 1).")
flags.DEFINE_string("fisher_from", None, "--regularizer ewc: a run directory (or its "
                    "fisher.safetensors) written with --save_fisher.")
flags.DEFINE_bool("save_fisher", False, "Write fisher.safetensors (the diagonal Fisher estimate of "
                  "the base weights over the training data) beside the adapter.")
flags.DEFINE_string("gradual_unfreezing", None, "Unfreeze one more layer from the top every "
                    "interval: N epochs (2, 2epochs) or steps (100steps), starting from the head.")
flags.DEFINE_integer("seed", 0, "Random seed (data order, init, dropout).")
flags.DEFINE_integer("max_steps", None, "Stop after this many steps (quick runs).")
flags.DEFINE_integer("max_train_examples", None, "Use a fixed random subset of the training set (the same for every --seed).")
flags.DEFINE_integer("eval_every", None, "Evaluate on dev every N steps (default: each epoch).")
flags.DEFINE_integer("checkpoint_every", None, "Checkpoint every N steps (default: each evaluation).")
flags.DEFINE_integer("keep_checkpoints", 2, "How many checkpoints to keep.")
flags.DEFINE_enum("strategy", "default", ["default", "one_device", "mirrored",
                                          "multi_worker_mirrored", "tpu"], "tf.distribute strategy.")
flags.DEFINE_string("tpu", None, "TPU name or 'local' for --strategy tpu.")
flags.DEFINE_list("worker_hosts", [], "host:port of every worker (multi_worker_mirrored without TF_CONFIG).")
flags.DEFINE_integer("task_index", None, "This worker's index in --worker_hosts.")
flags.DEFINE_enum("mixed_precision", None, ["bf16", "fp16"], "Keras mixed-precision policy.")
flags.DEFINE_enum("padding", "dynamic", ["dynamic", "max_length"],
                  "Pad each batch to its longest row, or every batch to max_seq_length.")
flags.DEFINE_list("bucket_boundaries", [], "Length buckets, e.g. 32,64,128 (dynamic padding).")
flags.DEFINE_string("saved_models_dir", "saved_models", "Output root; results go to <dir>/<adapter_name or task>/.")
flags.DEFINE_bool("predict_test", True, "Write GLUE test-set predictions with the best adapter.")
flags.DEFINE_bool("export", True, "Write the best adapter as a SavedModel to <dir>/<task>/export/<version>/.")
flags.DEFINE_bool("export_only", False, "Only export the adapter trained earlier in the output directory.")
flags.DEFINE_bool("merge_for_serving", False, "Merge LoRA / (IA)^3 into the base in the SavedModel.")
flags.DEFINE_integer("log_every", 20, "Progress line every N steps.")
flags.DEFINE_bool("overwrite", False, "Replace a previous run in the output directory (deleted once "
                  "this run has written its first checkpoint).")
flags.DEFINE_bool("verbose", False, "Keep TensorFlow's, CUDA's and absl's start-up and INFO notices on stderr.")


def _console():
    """`adapter_bert/console.py`, loaded without the package: importing `adapter_bert` imports
    TensorFlow, whose first notices the stderr filter must already catch."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "_adapter_bert_console", Path(__file__).resolve().parent / "adapter_bert" / "console.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def args_from_flags(values=FLAGS):
    """The parsed flags as `TrainingArgs` (raises ValueError for malformed bucket boundaries)."""
    from adapter_bert.training import TrainingArgs

    try:
        buckets = tuple(int(b) for b in values.bucket_boundaries)
    except ValueError:
        raise ValueError(f"--bucket_boundaries must be integers, got {values.bucket_boundaries}") from None
    names = [f.name for f in dataclasses.fields(TrainingArgs)
             if f.name not in ("bucket_boundaries", "worker_hosts", "load_adapters", "fusion")]
    return TrainingArgs(bucket_boundaries=buckets, worker_hosts=tuple(values.worker_hosts),
                        load_adapters=tuple(values.load_adapter), fusion=tuple(values.fusion),
                        **{name: values[name].value for name in names})


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
