"""Where a training step's time goes, op by op: ours under the TF profiler, the peers under torch's.

    python bench/profile_step.py [--methods houlsby,full] [--padding bucketed] [--steps 5] \
        [--peers adapters_houlsby,torch_full] [--out /tmp/adapter_bert_bench]

Each method's compiled step (`bench/train_throughput.py`'s `make_step`) runs two untimed passes
over `--steps` MRPC batches, one timed pass, and one pass under `tf.profiler`. The trace's op
events are summed by category (`tf_category`): the dense layers' and attention's matmuls, GELU,
LayerNorm, dropout, softmax, the gathers, scatters and transposes that move rows about, the
optimizer, and the rest. With `--peers`, the PyTorch peers profile the very same batches in their
virtual environment (`bench/peers_worker.py --mode profile`, torch.profiler, the same categories
by aten op). Writes `<out>/profile_step.json`; traces stay under `<out>/profile/` for TensorBoard.

By default TensorFlow runs ops one at a time here (`--inter_op_threads 1`), as PyTorch does, so
each op's time is its own and the categories add up to about the step's wall time. With more
inter-op threads (TensorFlow's default, 2 on this machine, about 8% faster) two ops share the
cores and each one's time is stretched by the other.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import common

CATEGORIES = ("matmul (dense layers)", "matmul (attention)", "GELU", "LayerNorm", "dropout",
              "softmax", "gathers, scatters, transposes", "optimizer", "other")
LAYOUT_OPS = {"ScatterNd", "GatherNd", "GatherV2", "Transpose", "_MklTranspose", "ConcatV2",
              "UnsortedSegmentSum", "Where"}
# An op event is labelled "<op name>:<op type>"; the executor's and eager runtime's own events
# ("ExecutorState::Process", "EagerLocalExecute: ...") enclose op events and are not ops.
OP_LABEL = re.compile(r"^([^:\s]+):([A-Za-z_][A-Za-z0-9_]*)$")
# Top-level name scopes of Keras optimizers' update ops (adam_w, adam, sgd, ...).
OPTIMIZER_SCOPE = re.compile(r"^(adam\w*|sgd\w*|lamb\w*|optimizer)(_\d+)?$")


def tf_category(name: str, op_type: str) -> str:
    """The category of one TensorFlow op event, from its type and its name scope."""
    lower = name.lower()
    if "BatchMatMul" in op_type:
        return "matmul (attention)"
    if "MatMul" in op_type:
        return "matmul (dense layers)"
    if OPTIMIZER_SCOPE.match(lower.split("/", 1)[0]) or op_type.endswith("VariableOp"):
        return "optimizer"
    if "dropout" in lower:
        return "dropout"
    if "gelu" in lower:
        return "GELU"
    if "layer_norm" in lower or re.search(r"_ln(_\d+)?/", lower):
        return "LayerNorm"
    if "Softmax" in op_type:
        return "softmax"
    if op_type in LAYOUT_OPS:
        return "gathers, scatters, transposes"
    return "other"


# A BERT layer's ops (`layer_3_1/...`, Keras' unique suffix) and its adapters' (`layer_3_mh_adapter/`).
LAYER_SCOPE = re.compile(r"(?:^|/)layer_(\d+)(?=[_/])")


def backward_layer(name: str) -> int | None:
    """The layer index of a backward-pass op (autodiff's `gradient_tape/...` ops and the
    hand-written gradients' `..._grad/` scopes), else None: forward ops, the optimizer, and
    backward ops outside the layers (head, pooler, embeddings)."""
    if not (name.startswith("gradient_tape/") or "_grad/" in name):
        return None
    match = LAYER_SCOPE.search(name)
    return int(match.group(1)) if match else None


def op_events(logdir: Path):
    """(op name, op type, seconds) of every op a TF profiler trace under `logdir` recorded."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = sorted(logdir.glob("**/*.xplane.pb"))
    if not paths:
        raise FileNotFoundError(f"no TF profiler trace (*.xplane.pb) under {logdir}")
    space = xplane_pb2.XSpace()
    space.ParseFromString(paths[-1].read_bytes())
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                label = OP_LABEL.match(plane.event_metadata[event.metadata_id].name)
                if label:
                    yield label.group(1), label.group(2), event.duration_ps * 1e-12


def summarize(events, steps: int, wall_seconds: float) -> dict:
    """Milliseconds per step by category and the ten costliest op types."""
    by_category, by_type, by_layer = (collections.Counter() for _ in range(3))
    for name, op_type, seconds in events:
        by_category[tf_category(name, op_type)] += seconds
        by_type[op_type] += seconds
        layer = backward_layer(name)
        if layer is not None:
            by_layer[layer] += seconds
    total = sum(by_category.values())
    return {"wall_ms_per_step": round(1e3 * wall_seconds / steps, 1),
            "op_ms_per_step": round(1e3 * total / steps, 1),
            "categories_ms_per_step": {c: round(1e3 * by_category[c] / steps, 1) for c in CATEGORIES},
            "top_op_types_ms_per_step": {t: round(1e3 * s / steps, 1) for t, s in by_type.most_common(10)},
            # Where the backward pass runs: an AdapterDrop setup must show none below its lowest
            # adapter.
            "backward_ms_per_step_by_layer": {str(i): round(1e3 * by_layer[i] / steps, 1)
                                              for i in sorted(by_layer)}}


def profile_method(method: str, task: str, batches: list, logdir: Path) -> dict:
    import shutil

    import tensorflow as tf

    from train_throughput import make_step, time_pass

    step, counts = make_step(method, task)
    for _ in range(2):
        time_pass(step, batches)
    wall, examples, _ = time_pass(step, batches)
    shutil.rmtree(logdir, ignore_errors=True)
    tf.profiler.experimental.start(str(logdir))
    try:
        profiled, _, _ = time_pass(step, batches)
    finally:
        tf.profiler.experimental.stop()
    summary = summarize(op_events(logdir), len(batches), wall)
    summary.update(examples_per_second=round(examples / wall, 2),
                   examples_per_second_profiled=round(examples / profiled, 2),
                   trainable_params=counts["trainable_params"])
    return summary


def profile_peer(system: str, task: str, batches_npz: Path, padding: str, out: Path) -> dict:
    import peers

    python = peers.ensure_venv(out / "peer_venv")
    json_out = out / "profile" / f"torch_{system}.json"
    json_out.unlink(missing_ok=True)
    command = [str(python), str(peers.WORKER), "--mode", "profile", "--task", task,
               "--system", system, "--ckpt_dir", peers.checkpoint_dir(),
               "--glue_dir", str(common.GLUE_DIR), "--batches_npz", str(batches_npz),
               "--paddings", padding, "--threads", "2", "--json_out", str(json_out)]
    subprocess.run(command, check=True, env=peers.worker_env(out, 2))
    record = json.loads(json_out.read_text())
    figures = record["profile"]
    figures["categories_ms_per_step"] = in_category_order(figures["categories_ms_per_step"])
    return {**figures, "versions": record["versions"], "trainable_params": record["params"]["trainable"]}


def in_category_order(ms_per_step: dict) -> dict:
    """A peer's {category: ms} in CATEGORIES' order, 0 for a category it never saw.

    The worker names categories itself (it cannot import this module's stack); a name outside
    CATEGORIES means the two lists drifted apart, which must not pass silently.
    """
    unknown = sorted(set(ms_per_step) - set(CATEGORIES))
    if unknown:
        raise ValueError(f"the peer reported categories profile_step does not know: {unknown}")
    return {category: ms_per_step.get(category, 0.0) for category in CATEGORIES}


def print_table(rows: dict) -> None:
    names = list(rows)
    print("ms per step".ljust(32) + "".join(n[:18].rjust(20) for n in names))
    for key in ("wall_ms_per_step", "op_ms_per_step"):
        print(key.ljust(32) + "".join(f"{rows[n][key]:20.1f}" for n in names))
    for category in CATEGORIES:
        print(category.ljust(32) + "".join(
            f"{rows[n]['categories_ms_per_step'][category]:20.1f}" for n in names))
    layers = sorted({int(i) for n in names for i in rows[n].get("backward_ms_per_step_by_layer", {})})
    for layer in layers:
        print(f"backward, layer {layer}".ljust(32) + "".join(
            f"{rows[n].get('backward_ms_per_step_by_layer', {}).get(str(layer), 0.0):20.1f}"
            for n in names))


def main(argv=None) -> int:
    import train_throughput

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="mrpc", choices=sorted(common.DATA_DIRS))
    parser.add_argument("--methods", default="houlsby,full")
    parser.add_argument("--padding", default="bucketed",
                        choices=[p for p in train_throughput.PADDINGS if p not in train_throughput.DENSE])
    parser.add_argument("--steps", type=int, default=5, help="batches per profiled pass")
    parser.add_argument("--peers", default="", help="PyTorch peers to profile too, e.g. "
                        "adapters_houlsby,torch_full (bench/peers.py builds their venv)")
    parser.add_argument("--inter_op_threads", type=int, default=1,
                        help="TensorFlow ops run at once (0: TensorFlow's default)")
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT)
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    peer_systems = [p for p in args.peers.split(",") if p]
    unknown = sorted(set(methods) - set(common.METHODS))
    if unknown:
        parser.error(f"unknown method: {', '.join(unknown)}")
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.inter_op_threads < 0:
        parser.error("--inter_op_threads must be 0 or more")
    if peer_systems:
        import peers

        bad = sorted(set(peer_systems) - set(peers.SYSTEMS))
        if bad:
            parser.error(f"unknown peer: {', '.join(bad)}; choose from {', '.join(peers.SYSTEMS)}")

    import tensorflow as tf

    # Before the first op runs: the runtime fixes its thread pools then.
    tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    batches = train_throughput.epoch_batches(args.task, [args.padding], args.steps)
    results = {}
    for method in methods:
        results[method] = profile_method(method, args.task, batches[args.padding],
                                         args.out / "profile" / f"tf_{method}_{args.padding}")
        print(f"{method}: {results[method]['examples_per_second']} examples/s", file=sys.stderr)
    peer_results = {}
    if peer_systems:
        npz = args.out / "profile" / "batches.npz"
        train_throughput.save_batches(npz, batches)
        for system in peer_systems:
            peer_results[system] = profile_peer(system, args.task, npz, args.padding, args.out)
    report = {"benchmark": "profile_step", "machine": common.machine(), "task": args.task,
              "padding": args.padding, "steps": args.steps, "batch_size": 32,
              "inter_op_threads": args.inter_op_threads,
              "command": " ".join([sys.executable] + sys.argv), "methods": results,
              "peers": peer_results}
    print_table({**results, **peer_results})
    common.write_report(args.out, "profile_step", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
