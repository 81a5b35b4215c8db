"""Trains an adapter for one GLUE task: flags -> adapter_bert.training.run().

    python run_tf_adapter_bert.py --casing bert-base-uncased --bottleneck_size 32 \
        --non_linearity gelu --task mrpc --batch_size 32 --epochs 10 --max_seq_length 128 \
        --learning_rate 3e-4 --warmup_ratio 0.1 --saved_models_dir saved_models

    python run_tf_adapter_bert.py --flagfile flags/quickstart.flags --data_dir ../shared/data/glue/MRPC

Every flag is checked before anything is written; a bad one exits with status 2 and one line.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("casing", "all-minilm-l6-v2",
                    "Pretrained BERT: hub id (bert-base-uncased), short name or local directory.")
flags.DEFINE_string("task", "mrpc", "GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli.")
flags.DEFINE_string("data_dir", None, "GLUE TSV directory (root or task folder); unset: TFDS glue/<task>.")
flags.DEFINE_integer("bottleneck_size", None, "Houlsby adapter width (shorthand for --method houlsby).")
flags.DEFINE_string("non_linearity", None, "Adapter activation: gelu, relu, swish, tanh, ...")
flags.DEFINE_string("adapter_config", None,
                    "Any adapter config string, e.g. 'double_seq_bn[reduction_factor=24]' or 'lora[r=8]'.")
flags.DEFINE_enum("method", None, ["houlsby", "pfeiffer", "parallel", "lora", "ia3", "prefix",
                                   "bitfit", "full"], "Method preset.")
flags.DEFINE_enum("pooling", "cls", ["cls", "mean"], "Head pooling: BERT's pooler or masked mean.")
flags.DEFINE_integer("batch_size", 32, "Global training batch size.")
flags.DEFINE_integer("eval_batch_size", None, "Evaluation batch size (default 2 x batch_size).")
flags.DEFINE_integer("epochs", 10, "Training epochs.")
flags.DEFINE_integer("max_seq_length", 128, "Longest sequence in tokens (pairs are truncated).")
flags.DEFINE_float("learning_rate", 3e-4, "Peak learning rate of AdamW.")
flags.DEFINE_float("warmup_ratio", 0.1, "Fraction of steps with linear warmup (then linear decay).")
flags.DEFINE_float("weight_decay", 0.0, "AdamW decoupled weight decay.")
flags.DEFINE_float("max_grad_norm", None, "Clip gradients to this norm.")
flags.DEFINE_integer("seed", 0, "Random seed (data order, init, dropout).")
flags.DEFINE_integer("max_steps", None, "Stop after this many steps (quick runs).")
flags.DEFINE_integer("max_train_examples", None, "Use a fixed random subset of the training set.")
flags.DEFINE_integer("eval_every", None, "Evaluate on dev every N steps (default: each epoch).")
flags.DEFINE_integer("checkpoint_every", None, "Checkpoint every N steps (default: each evaluation).")
flags.DEFINE_enum("strategy", "default", ["default", "one_device", "mirrored",
                                          "multi_worker_mirrored", "tpu"], "tf.distribute strategy.")
flags.DEFINE_string("tpu", None, "TPU name or 'local' for --strategy tpu.")
flags.DEFINE_enum("mixed_precision", None, ["bf16", "fp16"], "Keras mixed-precision policy.")
flags.DEFINE_enum("padding", "dynamic", ["dynamic", "max_length"],
                  "Pad each batch to its longest row, or every batch to max_seq_length.")
flags.DEFINE_list("bucket_boundaries", [], "Length buckets, e.g. 32,64,128 (dynamic padding).")
flags.DEFINE_string("saved_models_dir", "saved_models", "Output root; results go to <dir>/<task>/.")
flags.DEFINE_bool("predict_test", True, "Write GLUE test-set predictions with the best adapter.")
flags.DEFINE_integer("log_every", 20, "Progress line every N steps.")
flags.DEFINE_bool("overwrite", False, "Delete a previous run in the output directory first.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from adapter_bert.training import TrainingArgs, run

    try:
        buckets = tuple(int(b) for b in FLAGS.bucket_boundaries)
    except ValueError:
        sys.exit(f"error: --bucket_boundaries must be integers, got {FLAGS.bucket_boundaries}")
    args = TrainingArgs(
        task=FLAGS.task, casing=FLAGS.casing, data_dir=FLAGS.data_dir,
        adapter_config=FLAGS.adapter_config, method=FLAGS.method,
        bottleneck_size=FLAGS.bottleneck_size, non_linearity=FLAGS.non_linearity,
        pooling=FLAGS.pooling, batch_size=FLAGS.batch_size, eval_batch_size=FLAGS.eval_batch_size,
        epochs=FLAGS.epochs, max_seq_length=FLAGS.max_seq_length,
        learning_rate=FLAGS.learning_rate, warmup_ratio=FLAGS.warmup_ratio,
        weight_decay=FLAGS.weight_decay, max_grad_norm=FLAGS.max_grad_norm, seed=FLAGS.seed,
        max_steps=FLAGS.max_steps, max_train_examples=FLAGS.max_train_examples,
        eval_every=FLAGS.eval_every, checkpoint_every=FLAGS.checkpoint_every,
        strategy=FLAGS.strategy, tpu=FLAGS.tpu, mixed_precision=FLAGS.mixed_precision,
        padding=FLAGS.padding, bucket_boundaries=buckets, saved_models_dir=FLAGS.saved_models_dir,
        predict_test=FLAGS.predict_test, log_every=FLAGS.log_every, overwrite=FLAGS.overwrite)
    try:
        results = run(args)
    except (ValueError, FileNotFoundError, KeyError, TypeError) as e:
        message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    best = results["best"]
    print(f"best dev ({results['main_metric']}) at step {best['step']}: "
          + ", ".join(f"{k} {v:.4f}" for k, v in best["dev"].items()))
    print(f"results: {args.output_dir / 'results.json'}")


if __name__ == "__main__":
    app.run(main)
