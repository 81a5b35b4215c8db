"""The newer methods beside the adapters library: one markdown table of speed and accuracy.

    M=compacter,compacter++,seq_bn_inv,double_seq_bn_inv,prompt_tuning,unipelt,dora,vera,loreft,noreft,direft
    python bench/train_throughput.py --methods houlsby,$M --paddings dynamic --steps 5 --rounds 3 \
        --out /tmp/adapter_bert_bench/newer
    python bench/peers.py --mode throughput --systems adapters_houlsby,adapters:compacter,... \
        --batches_npz /tmp/adapter_bert_bench/newer/train_batches.npz --rounds 3 --padding dynamic \
        --out /tmp/adapter_bert_bench/newer/peers
    python bench/accuracy.py --tasks mrpc --methods $M --mrpc_train_examples 1000 --epochs 2 \
        --out /tmp/adapter_bert_bench/checks/newer_methods
    python bench/peers.py --mode accuracy --systems adapters:compacter,... --project_subset 1000 \
        --epochs 2 --padding dynamic --out /tmp/adapter_bert_bench/newer/peers
    python bench/accuracy.py --tasks mrpc --methods $M,compacter@cls,compacter++@cls,seq_bn_inv@cls,loreft@cls \
        --seeds 0,1,2 --epochs 3 \
        --out /tmp/adapter_bert_bench/newer_full
    python bench/peers.py --mode accuracy --systems adapters:compacter,... --seeds 0,1,2 \
        --epochs 3 --padding dynamic --out /tmp/adapter_bert_bench/newer_full/peers
    python bench/newer_methods_report.py [--results /tmp/adapter_bert_bench]

Both sides train the same MRPC pairs (adapter_bert's `--max_train_examples` subset, or all of
MRPC for the full-budget grid) with the same batch, epochs, warmup and learning rate
(`bench/common.py`), and the throughput of both is timed on the same saved batches. Prints the
machine and versions, the speed and subset table, then the full-budget accuracy table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import common


def _read(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    values = [100 * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def library_records(peers: list[dict], mode: str) -> dict:
    """{identifier: [records]} of the `adapters:<identifier>` runs (and Houlsby's)."""
    found = {}
    records = [r for p in peers for r in p.get("results", {}).get(f"{mode}_mrpc", {}).get("records", [])]
    for record in records:
        system = record["system"]
        name = ("houlsby" if system == "adapters_houlsby"
                else system.split(":", 1)[1] if system.startswith("adapters:") else None)
        if name:
            found.setdefault(name, []).append(record)
    return found


def our_accuracy(results: Path, method: str, folder: str = "checks/newer_methods") -> list[dict]:
    """adapter_bert's finished MRPC runs of `method` under `<results>/<folder>`, one per seed."""
    runs = sorted((results / folder / "accuracy_runs" / "mrpc" / method)
                  .glob("seed*/mrpc/results.json"))
    return [json.loads(f.read_text()) for f in runs]


def library_accuracy(results: Path, folders: tuple[str, ...]) -> dict:
    """{identifier: [records]} of the library's accuracy runs, read one file each so that runs of
    several peers.py calls (seeds added later) all count."""
    runs = [json.loads(f.read_text()) for d in folders
            for f in sorted((results / d).glob("accuracy_mrpc_adapters*_seed*.json"))]
    return library_records([{"results": {"accuracy_mrpc": {"records": runs}}}], "accuracy")


def _final(run: dict, metric: str) -> float:
    """A run's final dev metric: adapter_bert's results.json nests it under "dev", the peers'
    records do not."""
    final = run["final"]
    return final.get("dev", final)[metric]


def _summary(runs: list[dict], metric: str) -> str:
    return _mean_std([_final(r, metric) for r in runs])


def _machine_line(m: dict) -> str:
    return (f"_Machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['cpu_flags'])}; "
            f"python {m['python']}, tensorflow {m['tensorflow']}, keras {m['keras']}._")


def render_full_budget(results: Path) -> str:
    """The 3-epoch grid on all of MRPC: final dev F1 and accuracy per method, ours and the
    library's, with each seed's F1 so the spread is visible."""
    accuracy = library_accuracy(results, ("newer_full/peers/runs",))
    lines = []
    ours_bench = _read(results / "newer_full" / "accuracy.json")
    if ours_bench:
        lines.append(_machine_line(ours_bench["machine"]))
    peers = _read(results / "newer_full" / "peers" / "peers.json")
    if peers:
        m = peers.get("machine", {})
        lines.append(f"_Library side: {m.get('cpu')}, {m.get('cores')} cores; torch {m.get('torch')}, "
                     f"transformers {m.get('transformers')}, adapters {m.get('adapters')}._")
    if lines:
        lines.append("")
    lines += ["| method | MRPC dev F1, final (ours / library) | dev accuracy (ours / library) "
             "| F1 per seed, ours | F1 per seed, library | seeds (ours / library) |",
             "|---|---|---|---|---|---|"]
    def row(label, ours, lib):
        per_seed = [" ".join(f"{100 * _final(r, 'f1'):.1f}" for r in runs) or "-"
                    for runs in (ours, lib)]
        return (f"| {label} | {_summary(ours, 'f1')} / {_summary(lib, 'f1')} | "
                f"{_summary(ours, 'accuracy')} / {_summary(lib, 'accuracy')} | {per_seed[0]} | "
                f"{per_seed[1]} | {len(ours)} / {len(lib)} |")

    for method in common.NEWER_METHODS:
        ours = our_accuracy(results, method, "newer_full")
        lib = sorted(accuracy.get(method, []), key=lambda r: r["seed"])
        if ours or lib:
            lines.append(row(method, ours, lib))
        # Ours again with the peers' head, where run (`METHOD@cls`): tells a head effect from a
        # method effect.
        same_head = our_accuracy(results, f"{method}@cls", "newer_full")
        if same_head:
            lines.append(row(f"{method}, ours with the peers' head (pooler over [CLS])", same_head, lib))
    return "\n".join(lines)


def render(results: Path) -> str:
    ours_speed = _read(results / "newer" / "train_throughput.json")
    # bench/run_all.sh keeps these runs in newer/peers; by hand they may be in peers/.
    peers = [p for p in (_read(results / "newer" / "peers" / "peers.json"),
                         _read(results / "peers" / "peers.json")) if p]
    speed = library_records(peers, "throughput")
    accuracy = library_accuracy(results, ("newer/peers/runs", "peers/runs"))
    lines = []
    if ours_speed:
        lines.append(_machine_line(ours_speed["machine"]))
    if peers:
        m = peers[0].get("machine", {})
        lines.append(f"_Peers: torch {m.get('torch')}, transformers {m.get('transformers')}, "
                     f"adapters {m.get('adapters')}._")
    lines += ["", "| method | trainable (ours / library) | train ex/s dynamic (ours / library) "
              "| speed-up | MRPC dev F1, final (ours / library) | dev accuracy (ours / library) "
              "| seeds (ours / library) |",
              "|---|---|---|---|---|---|---|"]
    methods = ["houlsby"] + list(common.NEWER_METHODS)
    for method in methods:
        ours = (ours_speed or {}).get("methods", {}).get(method)
        lib = speed.get(method, [None])[0]
        ours_rate = ours["dynamic"]["examples_per_second"] if ours else None
        lib_rate = next((r["examples_per_second"] for r in lib["throughput"]
                         if r["padding"] == "dynamic"), None) if lib else None
        ours_runs = our_accuracy(results, method)
        lib_runs = accuracy.get(method, [])
        trainable_ours = (ours or {}).get("trainable_params") or (
            ours_runs[0]["trainable_params"] if ours_runs else None)
        trainable_lib = (lib or (lib_runs[0] if lib_runs else None) or {}).get("params", {}).get("trainable")
        lines.append(_row(method, trainable_ours, trainable_lib, ours_rate, lib_rate, ours_runs,
                          lib_runs))
    return "\n".join(lines)


def _row(method, trainable_ours, trainable_lib, ours_rate, lib_rate, ours_runs, lib_runs) -> str:
    def count(n):
        return f"{n:,}" if n else "-"

    def rate(r):
        return f"{r:.1f}" if r else "-"

    ratio = f"{ours_rate / lib_rate:.2f}x" if ours_rate and lib_rate else "-"
    f1 = f"{_summary(ours_runs, 'f1')} / {_summary(lib_runs, 'f1')}"
    accuracy = f"{_summary(ours_runs, 'accuracy')} / {_summary(lib_runs, 'accuracy')}"
    seeds = f"{len(ours_runs)} / {len(lib_runs)}"
    return (f"| {method} | {count(trainable_ours)} / {count(trainable_lib)} | "
            f"{rate(ours_rate)} / {rate(lib_rate)} | {ratio} | {f1} | {accuracy} | {seeds} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=common.DEFAULT_OUT)
    args = parser.parse_args(argv)
    print(render(args.results))
    print("\nFull budget: all of MRPC, 3 epochs, batch 32.\n")
    print(render_full_budget(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
