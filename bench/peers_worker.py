"""Trains one peer PyTorch system on a GLUE task, inside the venv that bench/peers.py builds.

    <out>/peer_venv/bin/python bench/peers_worker.py --mode throughput --task mrpc \
        --system adapters_houlsby --ckpt_dir CKPT --glue_dir ../shared/data/glue \
        --paddings dynamic,fixed --steps 30 --threads 2 --json_out /tmp/x.json

`bench/peers.py` runs it, once per system (and per seed in accuracy mode), so that peak RSS is
per run. Systems, all on BertForSequenceClassification over the packaged MiniLM checkpoint:

* adapters_houlsby: the `adapters` library's double_seq_bn (Houlsby) adapters, bottleneck 32.
* peft_lora: `peft` LoRA, r=8, alpha=8, on query and value.
* torch_full: every parameter trained.
* adapters:<identifier>: any config of the `adapters` library's table by its identifier
  (`adapters:compacter`, `adapters:loreft`, ...), at the library's defaults, at `--learning_rate`.

Modes: `throughput` times `steps` train steps (after 3 warmup steps) on the first batches of the
seed-0 shuffle for each padding; `accuracy` trains `epochs` epochs and evaluates on dev after each;
`profile` runs one pass over `--batches_npz`'s batches of the first `--paddings` under
torch.profiler and sums the op times by the categories of `bench/profile_step.py`.
Progress goes to stderr; the figures go to `--json_out`. Imports neither TensorFlow nor
adapter_bert: this process only has the peer stack.
"""

import argparse
import json
import math
import os
import platform
import random
import resource
import sys
import time

import numpy as np
import torch

NUM_LABELS = 2
WARMUP_STEPS = 3
EVAL_BATCH_SIZE = 64
WARMUP_RATIO = 0.1
LEARNING_RATES = {"adapters_houlsby": 1e-3, "peft_lora": 5e-4, "torch_full": 5e-5}
LIBRARY_PREFIX = "adapters:"


def learning_rate(system: str, given: float | None) -> float:
    """The system's rate: `--learning_rate` where given, else the fixed systems' own."""
    if given is not None:
        return given
    if system not in LEARNING_RATES:
        raise SystemExit(f"{system} needs --learning_rate")
    return LEARNING_RATES[system]


def check_system(system: str) -> str:
    if system in LEARNING_RATES or (system.startswith(LIBRARY_PREFIX) and len(system) > len(LIBRARY_PREFIX)):
        return system
    raise argparse.ArgumentTypeError(f"unknown system {system!r}; choose from "
                                     f"{', '.join(LEARNING_RATES)} or {LIBRARY_PREFIX}<identifier>")
# 384 // 12 = 32: the adapters library sizes the bottleneck as hidden_size // reduction_factor.
ADAPTER_BOTTLENECK = 32
LORA_RANK = 8
LORA_ALPHA = 8
TASK_DIRS = {"mrpc": "MRPC", "sst2": "SST-2"}


def log(message: str) -> None:
    """Prints a progress line to stderr (stdout stays free for anything a library prints)."""
    print(f"[worker {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def seed_everything(seed: int) -> None:
    """Seeds every RNG that model init, dropout or shuffling might draw from."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def read_tsv(path: str) -> list:
    """Reads a GLUE TSV with no quote handling (its text has bare quotes); drops the header.

    Args:
        path: The TSV file; utf-8-sig strips the byte order mark MRPC's header starts with.

    Returns:
        A list of rows, each a list of column strings.
    """
    with open(path, encoding="utf-8-sig") as handle:
        lines = [line.rstrip("\r\n") for line in handle]
    return [line.split("\t") for line in lines[1:] if line]


def read_examples(glue_dir: str, task: str, split: str) -> list:
    """Returns (text_a, text_b or None, label) triples of one GLUE split.

    Args:
        glue_dir: The directory holding MRPC/ and SST-2/.
        task: "mrpc" or "sst2".
        split: "train" or "dev".
    """
    rows = read_tsv(os.path.join(glue_dir, TASK_DIRS[task], f"{split}.tsv"))
    if task == "mrpc":
        # Quality, #1 ID, #2 ID, #1 String, #2 String
        return [(row[3], row[4], int(row[0])) for row in rows]
    return [(row[0], None, int(row[1])) for row in rows]


def project_subset(examples: list, size: int) -> list:
    """The subset adapter_bert's `--max_train_examples` trains on: the first `size` indices of
    numpy's seed-0 permutation, in file order."""
    if size <= 0 or size >= len(examples):
        return examples
    order = np.random.default_rng(0).permutation(len(examples))
    return [examples[index] for index in sorted(order[:size])]


def add_library_adapter(model, adapter_name: str, identifier: str):
    """Adds a trainable adapter of the `adapters` library's table (by identifier) and freezes the
    rest, as the library's own training does."""
    import adapters

    adapters.init(model)
    model.add_adapter(adapter_name, config=identifier)
    model.train_adapter(adapter_name)
    return model


def subsample(examples: list, size: int) -> list:
    """Returns the first `size` examples of a seed-0 shuffle, the same for every system and seed."""
    if size <= 0 or size >= len(examples):
        return examples
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(0)).tolist()
    return [examples[index] for index in order[:size]]


def tokenize(tokenizer, examples: list, max_seq_length: int) -> list:
    """Tokenises without padding; batches are padded later, by the padding under test.

    Returns:
        A list of (input_ids, token_type_ids, label) per example.
    """
    texts_a = [example[0] for example in examples]
    texts_b = [example[1] for example in examples]
    if all(text is None for text in texts_b):
        encoded = tokenizer(texts_a, truncation=True, max_length=max_seq_length)
    else:
        encoded = tokenizer(texts_a, texts_b, truncation=True, max_length=max_seq_length)
    return [(ids, types, example[2]) for ids, types, example
            in zip(encoded["input_ids"], encoded["token_type_ids"], examples)]


def collate(features: list, padding: str, max_seq_length: int, pad_id: int) -> dict:
    """Pads a batch to its longest sequence ("dynamic") or to max_seq_length ("fixed").

    Returns:
        Model inputs and labels as tensors.
    """
    length = max(len(ids) for ids, _, _ in features) if padding == "dynamic" else max_seq_length
    input_ids = torch.full((len(features), length), pad_id, dtype=torch.long)
    token_type_ids = torch.zeros((len(features), length), dtype=torch.long)
    attention_mask = torch.zeros((len(features), length), dtype=torch.long)
    for row, (ids, types, _) in enumerate(features):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        token_type_ids[row, :len(types)] = torch.tensor(types)
        attention_mask[row, :len(ids)] = 1
    labels = torch.tensor([label for _, _, label in features], dtype=torch.long)
    return {"input_ids": input_ids, "token_type_ids": token_type_ids,
            "attention_mask": attention_mask, "labels": labels}


def epoch_batches(features: list, batch_size: int, generator: torch.Generator) -> list:
    """Returns one epoch of shuffled batches (lists of features); the last one may be short."""
    order = torch.randperm(len(features), generator=generator).tolist()
    return [[features[index] for index in order[start:start + batch_size]]
            for start in range(0, len(order), batch_size)]


def add_houlsby_adapters(model, adapter_name: str):
    """Adds trainable double_seq_bn adapters with the `adapters` library and freezes the rest."""
    import adapters

    adapters.init(model)
    reduction_factor = model.config.hidden_size // ADAPTER_BOTTLENECK
    model.add_adapter(adapter_name, config=adapters.DoubleSeqBnConfig(
        reduction_factor=reduction_factor))
    # train_adapter freezes the base model, then unfreezes and activates this adapter.
    model.train_adapter(adapter_name)
    return model


def add_lora(model):
    """Wraps the model with peft LoRA on query and value; SEQ_CLS keeps the classifier trainable."""
    import peft

    config = peft.LoraConfig(task_type="SEQ_CLS", r=LORA_RANK, lora_alpha=LORA_ALPHA,
                             target_modules=["query", "value"], lora_dropout=0.0)
    return peft.get_peft_model(model, config)


def build_model(system: str, ckpt_dir: str, task: str):
    """Loads the checkpoint with a fresh classification head and applies the system's method."""
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(ckpt_dir, num_labels=NUM_LABELS)
    if system == "adapters_houlsby":
        model = add_houlsby_adapters(model, task)
    elif system == "peft_lora":
        model = add_lora(model)
    elif system.startswith(LIBRARY_PREFIX):
        model = add_library_adapter(model, task, system[len(LIBRARY_PREFIX):])
    elif system != "torch_full":
        raise ValueError(f"unknown system {system!r}")
    model.train()  # from_pretrained returns eval mode; dropout is meant to be on while training
    return model


def param_group(name: str) -> str:
    """Names the part of the model a parameter belongs to, for the trainable-parameter report."""
    if ".adapters." in name:
        return "adapters"
    if "lora_" in name:
        return "lora"
    if "classifier" in name:
        return "classifier"
    if "pooler" in name:
        return "pooler"
    return "encoder_and_embeddings"


def count_params(model) -> dict:
    """Counts trainable and total parameters, the trainable ones split by part of the model.

    peft's SEQ_CLS keeps a frozen original classifier beside the trainable copy; `total` counts
    both, as the library's own print_trainable_parameters does.
    """
    trainable = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            group = param_group(name)
            trainable[group] = trainable.get(group, 0) + param.numel()
    total_trainable = sum(trainable.values())
    without_head = total_trainable - trainable.get("classifier", 0) - trainable.get("pooler", 0)
    return {"trainable": total_trainable, "total": sum(p.numel() for p in model.parameters()),
            "trainable_by_part": trainable, "trainable_without_head": without_head}


def adapter_bottleneck(model) -> int:
    """Returns the width of the first adapter's down projection (should be ADAPTER_BOTTLENECK)."""
    for name, param in model.named_parameters():
        if ".adapters." in name and "adapter_down" in name and name.endswith("weight"):
            return int(param.shape[0])
    return 0


def make_optimizer(model, learning_rate: float, total_steps: int):
    """Builds AdamW on the trainable parameters with linear warmup (10%) then linear decay."""
    params = [param for param in model.parameters() if param.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    warmup = max(1, int(WARMUP_RATIO * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_step(model, optimizer, scheduler, batch: dict) -> float:
    """Runs forward, backward and one optimizer step; returns the loss."""
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def token_counts(batch: dict) -> tuple:
    """Returns (padded tokens, real tokens) of a batch."""
    return batch["input_ids"].numel(), int(batch["attention_mask"].sum())


def load_shared_batches(path: str) -> dict:
    """The padded batches bench/train_throughput.py timed, by padding name, as torch tensors.

    The file holds `<padding>__<index>__<feature>` int32 arrays (numpy's .npz, no pickle).
    """
    arrays = np.load(path, allow_pickle=False)
    batches = {}
    for key in arrays.files:
        padding, index, feature = key.split("__")
        batch = batches.setdefault(padding, {}).setdefault(int(index), {})
        batch[feature] = torch.from_numpy(arrays[key].astype(np.int64))
    return {padding: [by_index[i] for i in sorted(by_index)] for padding, by_index in batches.items()}


def measure_throughput(args, system: str, model_factory, features: list, pad_id: int) -> list:
    """Times `args.steps` train steps after WARMUP_STEPS, once per padding, on fresh models.

    Every system and padding sees the same batches: the first ones of the seed-0 shuffle (the
    order is repeated if more batches are needed than one epoch holds).
    """
    generator = torch.Generator().manual_seed(0)
    needed = WARMUP_STEPS + args.steps
    groups = []
    while len(groups) < needed:
        groups.extend(epoch_batches(features, args.batch_size, generator))
    groups = [group for group in groups if len(group) == args.batch_size][:needed]
    shared = load_shared_batches(args.batches_npz) if args.batches_npz else {}
    rows = []
    for padding in shared or args.paddings.split(","):
        seed_everything(0)
        model = model_factory()
        # A long schedule, so the learning rate never reaches zero within the timed steps.
        optimizer, scheduler = make_optimizer(model, learning_rate(system, args.learning_rate), 1000)
        if shared:
            # adapter_bert's own benchmark batches: one untimed pass over them, then timed
            # passes, as bench/train_throughput.py does.
            batches = shared[padding]
            timed = batches
            warmup = batches
        else:
            batches = [collate(group, padding, args.max_seq_length, pad_id) for group in groups]
            warmup, timed = batches[:WARMUP_STEPS], batches[WARMUP_STEPS:]
        for batch in warmup:
            train_step(model, optimizer, scheduler, batch)
        padded = sum(token_counts(batch)[0] for batch in timed)
        real = sum(token_counts(batch)[1] for batch in timed)
        examples = sum(int(batch["labels"].shape[0]) for batch in timed)
        # Several timed passes, median taken, as bench/train_throughput.py does (with --rounds).
        round_seconds, step_seconds = [], []
        for _ in range(args.rounds if shared else 1):
            start = time.perf_counter()
            for batch in timed:
                step_start = time.perf_counter()
                loss = train_step(model, optimizer, scheduler, batch)
                step_seconds.append(time.perf_counter() - step_start)
            round_seconds.append(time.perf_counter() - start)
        seconds = float(np.median(round_seconds))
        row = {"padding": padding, "steps": len(timed), "seconds": round(seconds, 3),
               "examples_per_second": examples / seconds,
               "rounds": [round(examples / s, 2) for s in round_seconds],
               "padded_tokens_per_second": padded / seconds,
               "real_tokens_per_second": real / seconds,
               "median_step_seconds": float(np.median(step_seconds)),
               "mean_padded_length": padded / examples,
               "last_loss": loss}
        log(f"{system} {padding}: {row['examples_per_second']:.1f} examples/s, "
            f"{row['padded_tokens_per_second']:.0f} padded tokens/s")
        rows.append(row)
        del model, optimizer, scheduler
    return rows


# bench/profile_step.py's categories (its CATEGORIES, which orders and checks what this
# reports), by aten op; anything under an optimizer step is "optimizer", the rest "other".
TORCH_CATEGORIES = {
    "aten::mm": "matmul (dense layers)", "aten::addmm": "matmul (dense layers)",
    "aten::bmm": "matmul (attention)", "aten::baddbmm": "matmul (attention)",
    "aten::gelu": "GELU", "aten::gelu_backward": "GELU",
    "aten::native_layer_norm": "LayerNorm", "aten::native_layer_norm_backward": "LayerNorm",
    "aten::bernoulli_": "dropout", "aten::native_dropout": "dropout",
    "aten::native_dropout_backward": "dropout",
    "aten::_softmax": "softmax", "aten::_softmax_backward_data": "softmax",
    "aten::copy_": "gathers, scatters, transposes", "aten::index_select": "gathers, scatters, transposes",
    "aten::cat": "gathers, scatters, transposes",
}


def torch_category(event) -> str:
    """The category of one profiled op: its own name, or an enclosing dropout or optimizer step."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("Optimizer.step"):
            return "optimizer"
        if parent.name in ("aten::dropout", "aten::native_dropout"):
            return "dropout"
        parent = parent.cpu_parent
    return TORCH_CATEGORIES.get(event.name, "other")


def profile_step(args, system: str, model_factory) -> dict:
    """Milliseconds per step by category over one profiled pass of the shared batches."""
    from torch.profiler import ProfilerActivity, profile

    padding = args.paddings.split(",")[0]
    batches = load_shared_batches(args.batches_npz)[padding]
    seed_everything(0)
    model = model_factory()
    optimizer, scheduler = make_optimizer(model, learning_rate(system, args.learning_rate), 1000)
    for _ in range(2):  # as bench/profile_step.py: two untimed passes, one timed, one profiled
        for batch in batches:
            train_step(model, optimizer, scheduler, batch)
    start = time.perf_counter()
    for batch in batches:
        train_step(model, optimizer, scheduler, batch)
    wall = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for batch in batches:
            train_step(model, optimizer, scheduler, batch)
        profiled = time.perf_counter() - start
    by_category, by_op = {}, {}
    for event in prof.events():
        if event.name.startswith(("Optimizer.step", "ProfilerStep")) or event.self_cpu_time_total <= 0:
            continue
        seconds = event.self_cpu_time_total * 1e-6
        category = torch_category(event)
        by_category[category] = by_category.get(category, 0.0) + seconds
        by_op[event.name] = by_op.get(event.name, 0.0) + seconds
    steps = len(batches)
    examples = sum(int(batch["labels"].shape[0]) for batch in batches)
    top = sorted(by_op.items(), key=lambda item: -item[1])[:10]
    return {"padding": padding, "steps": steps,
            "wall_ms_per_step": round(1e3 * wall / steps, 1),
            "op_ms_per_step": round(1e3 * sum(by_category.values()) / steps, 1),
            "categories_ms_per_step": {c: round(1e3 * v / steps, 1) for c, v in by_category.items()},
            "top_op_types_ms_per_step": {name: round(1e3 * v / steps, 1) for name, v in top},
            "examples_per_second": round(examples / wall, 2),
            "examples_per_second_profiled": round(examples / profiled, 2)}


@torch.no_grad()
def evaluate(model, features: list, task: str, max_seq_length: int, pad_id: int,
             padding: str) -> dict:
    """Scores the model on dev: accuracy, plus F1 of the positive class on MRPC."""
    from sklearn.metrics import f1_score

    model.eval()
    predictions = []
    for start in range(0, len(features), EVAL_BATCH_SIZE):
        batch = collate(features[start:start + EVAL_BATCH_SIZE], padding, max_seq_length, pad_id)
        labels = batch.pop("labels")
        predictions.extend(model(**batch).logits.argmax(-1).tolist())
    model.train()
    labels = [label for _, _, label in features]
    metrics = {"accuracy": float(np.mean(np.array(predictions) == np.array(labels)))}
    if task == "mrpc":
        metrics["f1"] = float(f1_score(labels, predictions, pos_label=1))
    return metrics


def train_and_evaluate(args, system: str, model, train: list, dev: list, pad_id: int) -> dict:
    """Trains `args.epochs` epochs on a seed-`args.seed` shuffle, evaluating after each epoch."""
    padding = args.paddings.split(",")[0]
    generator = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    optimizer, scheduler = make_optimizer(model, learning_rate(system, args.learning_rate),
                                          steps_per_epoch * args.epochs)
    epochs = []
    train_seconds = 0.0
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        losses = [train_step(model, optimizer, scheduler,
                             collate(group, padding, args.max_seq_length, pad_id))
                  for group in epoch_batches(train, args.batch_size, generator)]
        train_seconds += time.perf_counter() - start
        metrics = evaluate(model, dev, args.task, args.max_seq_length, pad_id, padding)
        epochs.append({"epoch": epoch, "train_loss": float(np.mean(losses)), **metrics})
        log(f"{system} seed {args.seed} epoch {epoch}: " +
            ", ".join(f"{key} {value:.4f}" for key, value in epochs[-1].items() if key != "epoch"))
    key = "f1" if args.task == "mrpc" else "accuracy"
    best = max(epochs, key=lambda row: row[key])  # earliest epoch wins a tie
    return {"padding": padding, "epochs": epochs, "final": epochs[-1], "best": best,
            "train_seconds": round(train_seconds, 2),
            "train_examples_per_second": len(train) * args.epochs / train_seconds}


def versions() -> dict:
    """Returns the versions of the peer stack in this venv."""
    import adapters
    import peft
    import sklearn
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "adapters": adapters.__version__,
            "peft": peft.__version__, "scikit-learn": sklearn.__version__}


def write_json_atomic(path: str, payload: dict) -> None:
    """Writes JSON through a temporary file in the same directory, then renames it into place."""
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(payload, handle, indent=2)
    os.replace(tmp, path)


def parse_args() -> argparse.Namespace:
    """Parses the command line bench/peers.py passes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("throughput", "accuracy", "profile"), required=True)
    parser.add_argument("--task", choices=tuple(TASK_DIRS), required=True)
    parser.add_argument("--system", type=check_system, required=True)
    parser.add_argument("--learning_rate", type=float, default=None)
    parser.add_argument("--ckpt_dir", required=True)
    parser.add_argument("--glue_dir", required=True)
    parser.add_argument("--json_out", required=True)
    parser.add_argument("--paddings", default="dynamic")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over --batches_npz")
    parser.add_argument("--batches_npz", default=None,
                        help="time these padded batches (from bench/train_throughput.py) instead")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train_subsample", type=int, default=0)
    parser.add_argument("--project_subset", type=int, default=0,
                        help="train on adapter_bert's --max_train_examples subset of this size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_seq_length", type=int, default=128)
    return parser.parse_args()


def main() -> int:
    wall_start = time.perf_counter()
    args = parse_args()
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.ckpt_dir)
    train_examples = read_examples(args.glue_dir, args.task, "train")
    train_examples = (project_subset(train_examples, args.project_subset) if args.project_subset
                      else subsample(train_examples, args.train_subsample))
    train = tokenize(tokenizer, train_examples, args.max_seq_length)
    log(f"{args.task}: {len(train)} train examples, system {args.system}, "
        f"{args.threads} threads")

    def model_factory():
        return build_model(args.system, args.ckpt_dir, args.task)

    # Initialised under the run's seed so the classifier (and adapter) init differs per seed only.
    seed_everything(args.seed)
    model = model_factory()
    params = count_params(model)
    log(f"trainable {params['trainable']:,} of {params['total']:,}: {params['trainable_by_part']}")
    record = {"system": args.system, "task": args.task, "mode": args.mode, "seed": args.seed,
              "learning_rate": learning_rate(args.system, args.learning_rate), "threads": args.threads,
              "batch_size": args.batch_size, "max_seq_length": args.max_seq_length,
              "train_examples": len(train), "params": params, "versions": versions()}
    if args.system.startswith(LIBRARY_PREFIX):
        record["active_adapters"] = str(model.active_adapters)
    if args.system == "adapters_houlsby":
        record["adapter_bottleneck"] = adapter_bottleneck(model)
        record["active_adapters"] = str(model.active_adapters)
    if args.mode == "profile":
        if not args.batches_npz:
            raise SystemExit("--mode profile needs --batches_npz")
        del model
        record["profile"] = profile_step(args, args.system, model_factory)
    elif args.mode == "throughput":
        del model  # each padding gets a fresh model from the factory
        record["throughput"] = measure_throughput(args, args.system, model_factory, train,
                                                  tokenizer.pad_token_id)
    else:
        dev = tokenize(tokenizer, read_examples(args.glue_dir, args.task, "dev"),
                       args.max_seq_length)
        record["dev_examples"] = len(dev)
        record.update(train_and_evaluate(args, args.system, model, train, dev,
                                         tokenizer.pad_token_id))
    record["wall_seconds"] = round(time.perf_counter() - wall_start, 2)
    # ru_maxrss is in KiB on Linux; each run is its own process, so this is the run's own peak.
    record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write_json_atomic(args.json_out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
