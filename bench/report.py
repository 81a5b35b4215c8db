"""Turns the benchmarks' JSON files into docs/RESULTS.md's tables and plots.

    python bench/report.py [--results /tmp/adapter_bert_bench] [--docs docs]

Reads what the other bench scripts wrote under `--results` (any subset; missing benchmarks are
left out): `train_throughput.json`, `inference.json`, `memory.json`, `onednn.json`,
`matmul_peak.json`, `peers/peers.json`, every run under `accuracy_runs/` (summarised over however
many seeds are there), and the accuracy checks under `checks/<name>/accuracy_runs/`
(`bench/accuracy.py` with one setting changed, listed beside the presets' figures). Writes
`<docs>/results/*.png` and replaces the text between the `generated` markers of
`<docs>/RESULTS.md`; the prose around them is written by hand.

Example (with no results at all, the generated part says so):
>>> import tempfile
>>> with tempfile.TemporaryDirectory() as tmp:
...     print(render_tables(load_results(Path(tmp)))[:40])
_No benchmark results found._
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

START, END = "<!-- generated:start -->", "<!-- generated:end -->"
PEER_NAMES = {"adapters_houlsby": "adapters 1.3.0, double_seq_bn 32",
              "peft_lora": "PEFT, LoRA r 8 (query, value)", "torch_full": "PyTorch full fine-tuning"}
PLOT_NAMES = {"adapters_houlsby": "adapters lib (PyTorch)", "peft_lora": "PEFT LoRA (PyTorch)",
              "torch_full": "PyTorch full"}
OUR_PEERS = {"adapters_houlsby": "houlsby", "peft_lora": "lora", "torch_full": "full"}


def _read(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def load_accuracy(results: Path) -> dict:
    """{task: {method: summary}} from every finished run under `accuracy_runs/`."""
    from accuracy import collect

    summaries = {}
    for task_dir in sorted((results / "accuracy_runs").glob("*")):
        methods = [m for m in common.METHODS if (task_dir / m).is_dir()] + sorted(
            d.name for d in task_dir.glob("*@*") if common.known_method(d.name))
        for method in methods:
            files = sorted((task_dir / method).glob(f"seed*/{task_dir.name}/results.json"))
            if files:
                runs = [json.loads(f.read_text()) for f in files]
                summaries.setdefault(task_dir.name, {})[method] = collect(task_dir.name, method, runs)
    return summaries


def load_checks(results: Path) -> dict:
    """{check name: {task: {method: summary}}} for every check under `checks/`."""
    checks = {}
    for check_dir in sorted((results / "checks").glob("*")):
        summaries = load_accuracy(check_dir)
        if summaries:
            checks[check_dir.name] = summaries
    return checks


def load_results(results: Path) -> dict:
    peers = (_read(results / "peers" / "peers.json") or {}).get("results", {})
    return {"train": _read(results / "train_throughput.json"), "inference": _read(results / "inference.json"),
            "memory": _read(results / "memory.json"), "onednn": _read(results / "onednn.json"),
            "matmul_peak": _read(results / "matmul_peak.json"),
            "profile": _read(results / "profile_step.json"),
            "peers_train": peers.get("throughput_mrpc"), "peers_accuracy": peers.get("accuracy_mrpc"),
            "accuracy": load_accuracy(results), "checks": load_checks(results)}


def _machine_line(report: dict) -> str:
    m = report["machine"]
    versions = ", ".join(f"{k} {m[k]}" for k in ("python", "tensorflow", "keras", "torch", "transformers",
                                                 "adapters", "peft") if k in m)
    return f"_Machine: {m['cpu']}, {m['cores']} cores; {versions}._"


def _order(method: str) -> int:
    return common.METHODS.index(method) if method in common.METHODS else len(common.METHODS)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def peer_throughput(peers: dict) -> dict:
    """{system: {padding: (examples/s, mean padded length)}} from peers.json's throughput entry."""
    table = {}
    for record in peers["records"]:
        for row in record["throughput"]:
            table.setdefault(record["system"], {})[row["padding"]] = (row["examples_per_second"],
                                                                      row["mean_padded_length"])
    return table


# The fixed-128 paddings bucketing is compared with (bench/train_throughput.py).
BASELINES = {"fixed": "fixed-128", "fixed_dense": "fixed-128 computing on the padding"}


def train_section(res: dict) -> list[str]:
    train, peers = res["train"], res["peers_train"]
    out = ["### Training throughput (examples/s, batch 32, MRPC train, dropout on)", "",
           _machine_line(train), ""]
    paddings = [p for p in ("fixed", "fixed_dense", "dynamic", "bucketed")
                if p in next(iter(train["methods"].values()))]
    rows = []
    for method, fig in sorted(train["methods"].items(), key=lambda kv: _order(kv[0])):
        rows.append([f"adapter_bert {method}", f"{fig['trainable_params']:,}"]
                    + [f"{fig[p]['examples_per_second']:.1f}" for p in paddings])
    if peers:
        for system, figs in peer_throughput(peers).items():
            trainable = next(r["params"]["trainable"] for r in peers["records"] if r["system"] == system)
            rows.append([PEER_NAMES[system], f"{trainable:,}"]
                        + [f"{figs[p][0]:.1f}" if p in figs else "-" for p in paddings])
    lengths = {p: next(iter(train["methods"].values()))[p]["mean_padded_length"] for p in paddings}
    out.append(_table(["system", "trainable params"]
                      + [f"{p} (mean length {lengths[p]:.0f})" for p in paddings], rows))
    out.append("")
    ratios = []
    if "houlsby_over_full" in train:
        ratios.append("Houlsby over our full fine-tuning: " + ", ".join(
            f"{p} {v:.2f}x" for p, v in train["houlsby_over_full"].items()))
    if peers:
        peer = peer_throughput(peers)
        for system, ours in OUR_PEERS.items():
            if system in peer and ours in train["methods"]:
                ratios.append(f"adapter_bert {ours} over {PEER_NAMES[system]}: " + ", ".join(
                    f"{p} {train['methods'][ours][p]['examples_per_second'] / peer[system][p][0]:.2f}x"
                    for p in paddings if p in peer[system]))
    for baseline, label in BASELINES.items():
        if f"bucketed_over_{baseline}" in train:
            ratios.append(f"bucketed over {label}: " + ", ".join(
                f"{m} {v:.2f}x" for m, v in train[f"bucketed_over_{baseline}"].items()))
    out += [f"- {r}" for r in ratios] + [""]
    if "fixed_dense" in paddings:
        out += ["`fixed` skips the padding in every layer but attention (`BertEncoder.skip_padding`, "
                "the default off TPU); `fixed_dense` is the same batches with it off, computing on "
                "the padding as on TPU and as the PyTorch peers do. The peers' `fixed` column is "
                "theirs on those batches.", ""]
    return out


def inference_section(inf: dict) -> list[str]:
    out = ["### Inference throughput (examples/s, MRPC dev, batch 32; per-batch medians of "
           f"{inf['rounds']} interleaved rounds)", "", _machine_line(inf), "",
           "`base_control` is the base traced a second time and `base_instance` the base in a second "
           "model instance (as the merged variants are): their difference from `base` is the noise of "
           "the measurement, and a smaller cost is not claimed.", ""]
    paddings = list(inf["variants"])
    rows = []
    for variant in inf["variants"][paddings[0]]:
        rows.append([variant] + [f"{inf['variants'][p][variant]['examples_per_second']:.1f} "
                                 f"({100 * (inf['variants'][p][variant]['relative_to_base'] - 1):+.1f}%, "
                                 f"rounds {', '.join(f'{x:.0f}' for x in inf['variants'][p][variant]['rounds'])})"
                                 for p in paddings])
    out += [_table(["variant"] + [f"{p} padding (vs base)" for p in paddings], rows), ""]
    return out


MEMORY_PADDINGS = {"fixed": "every batch padded to 128 tokens",
                   "bucketed": "length buckets as in the accuracy runs, an epoch's heaviest batches"}


def peer_memory_lines(peers_train: dict | None) -> list[str]:
    """The peers' peak RSS in their throughput runs (fixed 128 and dynamic batches, one process each)."""
    records = {r["system"]: r for r in (peers_train or {}).get("records", []) if "peak_rss_mb" in r}
    if not records:
        return []
    out = ["For comparison, the PyTorch peers' peak RSS over their throughput runs (the same batches, "
           "fixed 128 included):", ""]
    out += [f"- {PEER_NAMES[s]}: {r['peak_rss_mb']:.0f} MB" for s, r in records.items()]
    if "torch_full" in records:
        full = records["torch_full"]["peak_rss_mb"]
        out += [f"- {PEER_NAMES[s]} below PyTorch full fine-tuning: {100 * (1 - r['peak_rss_mb'] / full):.1f}%"
                for s, r in records.items() if s != "torch_full"]
    return out + [""]


def memory_section(mem: dict, peers_train: dict | None = None) -> list[str]:
    out = ["### Memory (peak RSS of a training process, batch 32)", "", _machine_line(mem), ""]
    for padding, entry in mem["paddings"].items():
        lengths = sorted({n for r in entry["methods"].values() for n in r.get("padded_lengths", [])})
        out += [f"**{padding}** ({MEMORY_PADDINGS.get(padding, padding)}; padded lengths "
                f"{', '.join(map(str, lengths))})", ""]
        below = entry.get("peak_rss_below_full", {})
        rows = [[m, f"{r['trainable_params']:,}", f"{r['rss_after_model_load_mb']:.0f}",
                 f"{r['peak_rss_mb']:.0f}", f"{r['optimizer_state_mb']:.2f}",
                 f"{100 * below[m]:.1f}%" if m in below else "-"]
                for m, r in sorted(entry["methods"].items(), key=lambda kv: _order(kv[0]))]
        out += [_table(["method", "trainable params", "RSS after load (MB)", "peak RSS (MB)",
                        "optimizer state (MB)", "peak below full"], rows), ""]
    return out + peer_memory_lines(peers_train)


def accuracy_section(res: dict) -> list[str]:
    out = []
    for task, methods in res["accuracy"].items():
        metric = next(iter(methods.values()))["main_metric"]
        out += [f"### {task.upper()} dev {metric} (packaged MiniLM; mean ± std over seeds)", ""]
        rows = []
        for method, s in methods.items():
            rows.append([method, f"{s['trainable_params']:,}", _pct(s["trainable_fraction"]),
                         _summary_cell(s["final"]), _summary_cell(s["best_epoch"]), s["final"]["n"]])
        out += [_table(["method", "trainable params", "trainable %", f"final epoch {metric}",
                        f"best epoch {metric}", "seeds"], rows), ""]
    out += checks_section(res)
    peers = res["peers_accuracy"]
    if peers:
        out += ["### PyTorch peers, MRPC dev (same checkpoint, data, batch, epochs)", ""]
        by_system = _peer_runs(peers)
        rows = []
        for system, records in by_system.items():
            finals = [100 * r["final"]["f1"] for r in records]
            bests = [100 * r["best"]["f1"] for r in records]
            rows.append([PEER_NAMES[system], f"{records[0]['params']['trainable']:,}",
                         _mean_std(finals), _mean_std(bests),
                         len(records), f"{max(r['peak_rss_mb'] for r in records):.0f}"])
        out += [_table(["system", "trainable params", "final F1", "best epoch F1",
                        "seeds", "peak RSS (MB)"], rows), ""]
    return out


def checks_section(res: dict) -> list[str]:
    """The accuracy checks, each beside the preset run of the same method and task."""
    rows = []
    for name, tasks in res.get("checks", {}).items():
        for task, methods in tasks.items():
            for method, s in methods.items():
                preset = res["accuracy"].get(task, {}).get(common.split_variant(method)[0])
                rows.append([name, task, method, f"{s['learning_rate']:g}", s.get("bottleneck_size") or "-",
                             s["epochs"],
                             f"{s['train_examples']:,}" if s["train_examples"] else "all",
                             _summary_cell(s["final"]), _summary_cell(s["best_epoch"]), s["final"]["n"],
                             f"{_summary_cell(preset['final'])} ({preset['final']['n']})" if preset else "-"])
    if not rows:
        return []
    return ["### Accuracy checks (one setting changed from the preset)", "",
            _table(["check", "task", "method", "learning rate", "bottleneck", "epochs", "train examples", "final",
                    "best epoch", "seeds", "preset's final (seeds)"], rows), ""]


def _summary_cell(summary: dict) -> str:
    """Mean ± std in points; one seed has no spread to show."""
    if summary["n"] < 2:
        return f"{100 * summary['mean']:.1f}"
    return f"{100 * summary['mean']:.1f} ± {100 * summary['std']:.1f}"


def _mean_std(values: list) -> str:
    """Mean ± sample standard deviation, as in our own accuracy tables."""
    if len(values) < 2:
        return f"{statistics.mean(values):.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _cost(cost: float) -> str:
    return f"{100 * cost:.1f}% slower" if cost >= 0 else f"{-100 * cost:.1f}% faster"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def targets_section(res: dict) -> list[str]:
    """The speed and memory targets, each with the measured figure and whether it is met."""
    rows = []
    train, peers_train = res["train"], res["peers_train"]
    if train and "houlsby_over_full" in train:
        for padding, ratio in train["houlsby_over_full"].items():
            rows.append([f"Houlsby training ≥ 1.5x our full fine-tuning ({padding})", f"{ratio:.2f}x",
                         _verdict(ratio >= 1.5)])
    if train and peers_train:
        peer = peer_throughput(peers_train).get("adapters_houlsby", {})
        for padding, (value, _) in peer.items():
            if padding in train["methods"].get("houlsby", {}):
                ratio = train["methods"]["houlsby"][padding]["examples_per_second"] / value
                rows.append([f"Houlsby training ≥ 1.2x the adapters library ({padding})", f"{ratio:.2f}x",
                             _verdict(ratio >= 1.2)])
        if "bucketed" in train["methods"].get("houlsby", {}) and "dynamic" in peer:
            ratio = train["methods"]["houlsby"]["bucketed"]["examples_per_second"] / peer["dynamic"][0]
            rows.append(["(for reference) our bucketed Houlsby vs the adapters library's dynamic padding",
                         f"{ratio:.2f}x", "-"])
    for baseline, label in BASELINES.items():
        ratio = (train or {}).get(f"bucketed_over_{baseline}", {}).get("houlsby")
        if ratio:
            rows.append([f"bucketing ≥ 2x {label} (Houlsby, MRPC)", f"{ratio:.2f}x", _verdict(ratio >= 2)])
    if res["inference"]:
        for padding, variants in res["inference"]["variants"].items():
            # The base against itself: a difference smaller than that is not measured.
            controls = [abs(variants[c]["relative_to_base"] - 1) for c in ("base_control", "base_instance")
                        if c in variants]
            noise = max(controls) if controls else 1.0
            checks = [(n, f"{n} inference within 2% of the base", 0.02) for n in ("lora_merged", "ia3_merged")]
            checks += [(n, f"active {n} adapter costs ≤ 8%", 0.08) for n in ("houlsby", "pfeiffer", "parallel")]
            for name, label, limit in checks:
                if name in variants:
                    cost = 1 - variants[name]["relative_to_base"]
                    verdict = _verdict(cost <= limit)
                    if noise > limit / 2:
                        verdict = f"not resolved (base vs itself {100 * noise:.1f}%)"
                    rows.append([f"{label} ({padding})", _cost(cost), verdict])
    for padding, entry in (res["memory"] or {}).get("paddings", {}).items():
        below = entry.get("peak_rss_below_full", {}).get("houlsby")
        if below is not None:
            rows.append([f"Houlsby training peak RSS ≥ 25% below full fine-tuning ({padding})",
                         f"{100 * below:.1f}% below", _verdict(below >= 0.25)])
    mrpc = res["accuracy"].get("mrpc", {})
    if "houlsby" in mrpc:
        h = mrpc["houlsby"]
        best = h["best_epoch"]["mean"]
        rows.append([f"Houlsby MRPC F1, best epoch ≥ 87 (mean of {h['best_epoch']['n']} seeds)",
                     f"{100 * best:.1f}", _verdict(best >= 0.87)])
        peers = res["peers_accuracy"]
        lib = [r for r in (peers or {}).get("records", []) if r["system"] == "adapters_houlsby"]
        if lib:
            theirs = sum(r["final"]["f1"] for r in lib) / len(lib)
            ours = h["final"]["mean"]
            rows.append([f"Houlsby MRPC F1 (final epoch) ≥ the adapters library's "
                         f"({h['final']['n']} vs {len(lib)} seeds)", f"{100 * ours:.1f} vs {100 * theirs:.1f}",
                         _verdict(ours >= theirs)])
    for task, methods in res["accuracy"].items():
        if "full" not in methods:
            continue
        full = methods["full"]["final"]["mean"]
        for method, summary in methods.items():
            if method != "full":
                gap = full - summary["final"]["mean"]
                if gap > 0.01:
                    rows.append([f"{task.upper()} {method} within 1.0 point of full fine-tuning",
                                 f"{100 * gap:.1f} points below", "**missed** (see the accuracy notes)"])
    if not rows:
        return []
    return ["### Speed and memory targets", "", _table(["target", "measured", "verdict"], rows), ""]


def profile_section(profile: dict) -> list[str]:
    """Op time per training step by category, ours beside the peers', from profile_step.json."""
    from profile_step import CATEGORIES

    ours = {m: profile["methods"][m] for m in sorted(profile["methods"], key=_order)}
    columns = {**ours, **{PLOT_NAMES.get(k, k): v for k, v in profile["peers"].items()}}
    recorded = next(iter(columns.values()))["categories_ms_per_step"]
    # The JSON is written with sorted keys; the table keeps profile_step's order.
    categories = [c for c in CATEGORIES if c in recorded] + sorted(set(recorded) - set(CATEGORIES))

    def cell(figures: dict, ms: float) -> str:
        return f"{ms:.0f} ({100 * ms / figures['op_ms_per_step']:.0f}%)"

    rows = [["wall time of a step"] + [f"{c['wall_ms_per_step']:.0f}" for c in columns.values()],
            ["op time, all ops"] + [f"{c['op_ms_per_step']:.0f}" for c in columns.values()]]
    rows += [[category] + [cell(c, c["categories_ms_per_step"][category]) for c in columns.values()]
             for category in categories]
    threads = profile.get("inter_op_threads")
    ops_at_once = {1: "; ops one at a time", 0: "; TensorFlow's default inter-op threads"}.get(
        threads, f"; {threads} inter-op threads" if threads else "")
    return [f"### Where a training step's time goes ({profile['padding']}, {profile['steps']} "
            f"MRPC batches{ops_at_once}; ms per step, share of op time)", "", _machine_line(profile), "",
            _table(["", *columns], rows), ""]


def render_tables(res: dict) -> str:
    parts = targets_section(res)
    if res["train"]:
        parts += train_section(res)
    if res["onednn"]:
        on = res["onednn"]
        parts += ["### oneDNN on and off (bucketed training, examples/s)", "",
                  _table(["method", "TF_ENABLE_ONEDNN_OPTS=0", "=1", "speedup"],
                         [[m, on["examples_per_second"]["TF_ENABLE_ONEDNN_OPTS=0"][m],
                           on["examples_per_second"]["TF_ENABLE_ONEDNN_OPTS=1"][m], f"{s:.2f}x"]
                          for m, s in on["speedup"].items()]), ""]
    if res.get("matmul_peak"):
        peak = res["matmul_peak"]
        parts += [f"### Bare matmul rate (TensorFlow, oneDNN on; median of {peak['repeats']} calls)", "",
                  _machine_line(peak), "",
                  _table(["matmul", "shape", "GFLOP/s"],
                         [[name, m["shape"], f"{m['gflops']:.1f}"] for name, m in peak["matmuls"].items()]), ""]
    if res.get("profile"):
        parts += profile_section(res["profile"])
    if res["inference"]:
        parts += inference_section(res["inference"])
    if res["memory"]:
        parts += memory_section(res["memory"], res["peers_train"])
    if res["accuracy"] or res["peers_accuracy"]:
        parts += accuracy_section(res)
    return "\n".join(parts) if parts else "_No benchmark results found._"


def _peer_runs(peers_accuracy: dict | None) -> dict:
    """The peers' accuracy records grouped by system."""
    by_system = {}
    for record in (peers_accuracy or {}).get("records", []):
        by_system.setdefault(record["system"], []).append(record)
    return by_system


def plot(res: dict, figures: Path) -> list[str]:
    """Draws the PNGs; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures.mkdir(parents=True, exist_ok=True)
    written = []
    for task, methods in res["accuracy"].items():
        fig, ax = plt.subplots(figsize=(6, 4))
        for method, s in methods.items():
            x = 100 * s["trainable_fraction"]
            ax.errorbar(x, 100 * s["final"]["mean"], yerr=100 * s["final"]["std"], fmt="o", capsize=3)
            ax.annotate(method, (x, 100 * s["final"]["mean"]), textcoords="offset points", xytext=(5, 4))
        if task == "mrpc":
            for system, records in _peer_runs(res["peers_accuracy"]).items():
                finals = [100 * r["final"]["f1"] for r in records]
                x = 100 * records[0]["params"]["trainable"] / records[0]["params"]["total"]
                ax.errorbar(x, statistics.mean(finals), yerr=statistics.stdev(finals) if len(finals) > 1 else 0,
                            fmt="s", color="black", capsize=3)
                # Left of the point: our method of the same kind sits close by, labelled on the right.
                ax.annotate(PLOT_NAMES[system], (x, statistics.mean(finals)),
                            textcoords="offset points", xytext=(-8, 6), ha="right", fontsize=7,
                            color="black")
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (% of the model, log scale)")
        ax.set_ylabel(f"dev {next(iter(methods.values()))['main_metric']} (final epoch)")
        ax.set_title(f"{task.upper()}: score vs trainable fraction (MiniLM-L6)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        name = f"{task}_score_vs_params.png"
        fig.savefig(figures / name, dpi=110)
        plt.close(fig)
        written.append(name)
    if res["train"]:
        train = res["train"]["methods"]
        padding = "dynamic"
        ordered = sorted(train, key=_order)
        labels = [f"ours: {m}" for m in ordered]
        values = [train[m][padding]["examples_per_second"] for m in ordered]
        colors = ["tab:blue"] * len(train)
        if res["peers_train"]:
            for system, figs in peer_throughput(res["peers_train"]).items():
                if padding in figs:
                    labels.append(PEER_NAMES[system])
                    values.append(figs[padding][0])
                    colors.append("tab:orange")
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(labels) + 1.4))
        ax.barh(range(len(labels)), values, color=colors)
        ax.set_yticks(range(len(labels)), labels)
        ax.invert_yaxis()
        ax.set_xlabel(f"examples/s (MRPC, batch 32, {padding} padding, same batches)")
        ax.set_title("Training throughput: ours (blue), PyTorch peers (orange)")
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        name = "train_throughput.png"
        fig.savefig(figures / name, dpi=110)
        plt.close(fig)
        written.append(name)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=common.DEFAULT_OUT)
    parser.add_argument("--docs", type=Path, default=common.REPO / "docs")
    args = parser.parse_args(argv)
    res = load_results(args.results)
    written = plot(res, args.docs / "results")
    page = args.docs / "RESULTS.md"
    text = page.read_text() if page.is_file() else f"# Results\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        raise SystemExit(f"{page} has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    tmp = page.with_name(f".{page.name}.tmp")
    tmp.write_text(f"{head}{START}\n{render_tables(res)}\n{END}{tail}")
    tmp.replace(page)
    print(f"wrote {page} and {', '.join(written) or 'no plots'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
