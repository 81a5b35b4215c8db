"""The training command's flags (absl), shared by `run_tf_adapter_bert.py` and the sweep
(`python -m adapter_bert.sweep`), and their translation into `TrainingArgs`.

The module imports absl alone (no TensorFlow): the command loads it before installing its
stderr filter. Defining the flags twice in one process (the command's copy and the package's)
defines them once.

Example:
>>> from absl import flags
>>> define_training_flags()
>>> _ = flags.FLAGS(["prog", "--task=sst2", "--bottleneck_size=8"])
>>> args = args_from_flags(flags.FLAGS)
>>> args.task, args.bottleneck_size
('sst2', 8)
>>> flags.FLAGS.unparse_flags()
"""

import dataclasses

from absl import flags

FLAGS = flags.FLAGS


def define_training_flags() -> None:
    """Defines every flag of the training command (once per process)."""
    if "casing" in FLAGS:
        return
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
    flags.DEFINE_integer("adapter_drop", None, "AdapterDrop: leave the --method preset's adapters "
                         "out of the N lowest layers (no backward pass runs below them).")
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
    flags.DEFINE_float("max_grad_norm", None,
                      "Clip the global norm of the whole batch's gradient (all trained weights, "
                      "summed over replicas) to this value.")
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
    flags.DEFINE_bool("recompute_attention", False, "Recompute the attention probabilities in the "
                      "backward pass instead of keeping them: less memory, one more matmul and softmax per layer.")
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
