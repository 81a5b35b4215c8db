"""The benchmark scripts' own logic: argument checks, commands, summaries and the report.

The benchmarks themselves run outside CI (bench/run_all.sh); these tests keep the scripts that
produce docs/RESULTS.md honest without timing anything.
"""

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import accuracy  # noqa: E402
import common  # noqa: E402
import report  # noqa: E402


@pytest.mark.parametrize("script, argv, message", [
    ("train_throughput", ["--methods", "houlsby,adapterdrop"], "unknown method or padding: adapterdrop"),
    ("train_throughput", ["--paddings", "ragged"], "unknown method or padding: ragged"),
    ("train_throughput", ["--methods", "houlsby@fp8"], "unknown method or padding: houlsby@fp8"),
    ("memory", ["--methods", "nope"], "unknown method or padding: nope"),
    ("efficiency", ["--methods", "prefix"], "unknown or not per-token method, or unknown padding: prefix"),
    ("efficiency", ["--paddings", "ragged"], "unknown or not per-token method, or unknown padding: ragged"),
    ("accuracy", ["--tasks", "cola"], "unknown task or method: cola"),
    ("matmul_peak", ["--tokens", "0"], "--tokens and --repeats must be positive"),
    ("elementwise", ["--repeats", "0"], "--tokens and --repeats must be positive"),
    ("accuracy", ["--learning_rate", "0"], "--learning_rate must be positive, got 0.0"),
    ("accuracy", ["--bottleneck_size", "0"], "--bottleneck_size must be positive, got 0"),
    ("accuracy", ["--methods", "houlsby,lora", "--bottleneck_size", "64"],
     "--bottleneck_size applies to houlsby, pfeiffer, parallel only, not lora"),
    ("profile_step", ["--methods", "houlsby,nope"], "unknown method: nope"),
    ("profile_step", ["--steps", "0"], "--steps must be at least 1"),
    ("profile_step", ["--peers", "torch_lora"], "unknown peer: torch_lora"),
    ("profile_step", ["--inter_op_threads", "-1"], "--inter_op_threads must be 0 or more"),
    ("mixed_serving", ["--methods", "houlsby,lora"], "--methods needs 4 of houlsby"),
    ("mixed_serving", ["--rounds", "0"], "must be positive"),
    ("composition_runs", ["--seeds", "a"], "--seeds must be integers, got 'a'"),
    ("composition_runs", ["--fusion_epochs", "0"], "must be positive"),
    ("continual", ["--rows", "full,adapters"], "unknown task or row: adapters"),
    ("continual", ["--tasks", "mrpc,cola"], "unknown task or row: cola"),
    ("continual", ["--epochs", "0"], "must be positive"),
    ("selection", ["--rows", "lora"], "unknown task or row: lora"),
    ("selection", ["--seeds", "0,x"], "--seeds must be integers"),
])
def test_bad_choices_exit_with_usage_error(script, argv, message, capsys):
    module = __import__(script)
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_accuracy_command_is_the_training_command_with_each_methods_rate():
    command = accuracy.run_command("sst2", "houlsby", 2, 3, Path("/tmp/x"), 4000)
    assert command[1].endswith("run_tf_adapter_bert.py")
    flags = dict(arg.lstrip("-").split("=", 1) for arg in command[2:] if "=" in arg)
    assert flags["method"] == "houlsby" and flags["bottleneck_size"] == "32"
    assert flags["learning_rate"] == "0.001" and flags["seed"] == "2" and flags["epochs"] == "3"
    assert flags["max_train_examples"] == "4000" and flags["bucket_boundaries"] == "32,48,64,96,128"
    assert "--noexport" in command and "--nopredict_test" in command
    lora = dict(arg.lstrip("-").split("=", 1) for arg in accuracy.run_command(
        "mrpc", "lora", 0, 3, Path("/tmp/x"), None)[2:] if "=" in arg)
    assert lora["learning_rate"] == "0.0005" and "bottleneck_size" not in lora
    assert "max_train_examples" not in lora


def test_newer_methods_run_by_identifier_and_report_beside_the_library(tmp_path):
    import newer_methods_report

    command = accuracy.run_command("mrpc", "loreft", 1, 2, Path("/tmp/x"), 1000)
    flags = dict(arg.lstrip("-").split("=", 1) for arg in command[2:] if "=" in arg)
    assert flags["adapter_config"] == "loreft" and "method" not in flags
    assert flags["learning_rate"] == "0.002" and flags["max_train_examples"] == "1000"
    results = tmp_path / "results"
    (results / "newer").mkdir(parents=True)
    (results / "newer" / "train_throughput.json").write_text(json.dumps({
        "machine": {"cpu": "CPU X", "cores": 2, "cpu_flags": ["avx2"], "python": "3.11",
                    "tensorflow": "2.21", "keras": "3.15"},
        "methods": {"loreft": {"trainable_params": 9998, "dynamic": {"examples_per_second": 60.0}}}}))
    (results / "newer" / "peers" / "runs").mkdir(parents=True)
    (results / "newer" / "peers" / "peers.json").write_text(json.dumps({
        "machine": {"torch": "2.13", "transformers": "4.57", "adapters": "1.3.0"},
        "results": {"throughput_mrpc": {"records": [{
            "system": "adapters:loreft", "params": {"trainable": 9998},
            "throughput": [{"padding": "dynamic", "examples_per_second": 40.0}]}]}}}))
    for seed, f1 in ((0, 0.80), (1, 0.82)):
        (results / "newer" / "peers" / "runs" / f"accuracy_mrpc_adapters:loreft_seed{seed}.json").write_text(
            json.dumps({"system": "adapters:loreft", "final": {"f1": f1, "accuracy": 0.7}}))
    for seed, f1 in ((0, 0.81), (1, 0.83), (2, 0.85)):
        run = results / "checks" / "newer_methods" / "accuracy_runs" / "mrpc" / "loreft" / f"seed{seed}" / "mrpc"
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps(
            {"final": {"dev": {"f1": f1, "accuracy": 0.7}}, "trainable_params": 9998}))
    table = newer_methods_report.render(results)
    row = next(line for line in table.splitlines() if line.startswith("| loreft |"))
    assert row == ("| loreft | 9,998 / 9,998 | 60.0 / 40.0 | 1.50x | 83.0 ± 2.0 / 81.0 ± 1.4 | "
                   "70.0 ± 0.0 / 70.0 ± 0.0 | 3 / 2 |")
    assert "CPU X" in table and "adapters 1.3.0" in table


def test_full_budget_table_puts_each_seed_of_both_sides_in_one_row(tmp_path):
    import newer_methods_report

    results = tmp_path / "results"
    runs = results / "newer_full" / "peers" / "runs"
    runs.mkdir(parents=True)
    # Written out of seed order: the row lists the library's seeds in order.
    for seed, f1 in ((2, 0.84), (0, 0.80), (1, 0.82)):
        (runs / f"accuracy_mrpc_adapters:dora_seed{seed}.json").write_text(json.dumps(
            {"system": "adapters:dora", "seed": seed, "final": {"f1": f1, "accuracy": 0.75}}))
    for seed, f1 in ((0, 0.851), (1, 0.853)):
        run = results / "newer_full" / "accuracy_runs" / "mrpc" / "dora" / f"seed{seed}" / "mrpc"
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps({"final": {"dev": {"f1": f1, "accuracy": 0.8}}}))
    table = newer_methods_report.render_full_budget(results)
    assert not table.startswith("_")  # no machine line without the benchmark's own record
    (results / "newer_full" / "accuracy.json").write_text(json.dumps({"machine": {
        "cpu": "CPU X", "cores": 2, "cpu_flags": ["avx2"], "python": "3.11", "tensorflow": "2.21",
        "keras": "3.15"}}))
    table = newer_methods_report.render_full_budget(results)
    assert table.splitlines()[0].startswith("_Machine: CPU X, 2 cores, flags avx2;")
    assert table.splitlines()[4:] == [
        "| dora | 85.2 ± 0.1 / 82.0 ± 2.0 | 80.0 ± 0.0 / 75.0 ± 0.0 | 85.1 85.3 | 80.0 82.0 84.0 "
        "| 2 / 3 |"]  # methods with no run on either side are left out


def test_summary_is_mean_and_sample_std():
    s = accuracy.summarise([0.80, 0.84, 0.88])
    assert s["mean"] == pytest.approx(0.84) and s["std"] == pytest.approx(0.04)
    assert (s["min"], s["max"], s["n"]) == (0.8, 0.88, 3)
    assert accuracy.summarise([0.5])["std"] == 0.0


def _results_json(seed, f1s, trainable=1000, total=100000):
    epochs = [{"epoch": i + 1, "step": 10 * (i + 1), "dev": {"f1": f, "accuracy": f - 0.1}}
              for i, f in enumerate(f1s)]
    best = max(epochs, key=lambda e: e["dev"]["f1"])
    return {"main_metric": "f1", "epochs": epochs, "final": epochs[-1], "best": best,
            "trainable_params": trainable, "total_params": total, "args": {"seed": seed},
            "train_examples_per_second": 30.0, "wall_seconds": 100.0}


def test_report_summarises_runs_tables_and_plots(tmp_path):
    results, docs = tmp_path / "results", tmp_path / "docs"
    for method, seed, f1s in [("houlsby", 0, [0.80, 0.86, 0.84]), ("houlsby", 1, [0.82, 0.85, 0.88]),
                              ("full", 0, [0.85, 0.90, 0.90])]:
        run = results / "accuracy_runs" / "mrpc" / method / f"seed{seed}" / "mrpc"
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps(_results_json(seed, f1s)))
    machine = {"cpu": "test cpu", "cores": 2, "python": "3.11", "tensorflow": "2.21.0", "keras": "3"}
    method = {"trainable_params": 1000, **{p: {"examples_per_second": v, "mean_padded_length": n}
                                           for p, v, n in [("fixed", 10.0, 128), ("fixed_dense", 5.0, 128),
                                                           ("dynamic", 20.0, 80)]}}
    (results / "train_throughput.json").write_text(json.dumps(
        {"machine": machine, "methods": {"houlsby": method, "full": method},
         "houlsby_over_full": {"fixed": 1.0, "dynamic": 1.0},
         "bucketed_over_fixed": {"houlsby": 1.5}, "bucketed_over_fixed_dense": {"houlsby": 3.0}}))
    peer_rows = [{"padding": p, "examples_per_second": v, "mean_padded_length": n}
                 for p, v, n in [("fixed", 8.0, 128), ("dynamic", 16.0, 80)]]
    (results / "peers").mkdir()
    (results / "peers" / "peers.json").write_text(json.dumps({"results": {"throughput_mrpc": {
        "machine": machine, "records": [{"system": "adapters_houlsby", "params": {"trainable": 300674},
                                         "throughput": peer_rows, "peak_rss_mb": 1800.0},
                                        {"system": "torch_full", "params": {"trainable": 22713986},
                                         "throughput": peer_rows, "peak_rss_mb": 2000.0}]},
        "accuracy_mrpc": {"machine": machine, "records": [
            {"system": "adapters_houlsby", "seed": seed, "params": {"trainable": 300674, "total": 23013890},
             "final": {"f1": f1, "accuracy": 0.8}, "best": {"f1": f1 + 0.01, "epoch": 3},
             "peak_rss_mb": 1850.0} for seed, f1 in [(0, 0.85), (1, 0.87)]]}}}))
    memory = {"trainable_params": 10, "rss_after_model_load_mb": 1000, "optimizer_state_mb": 0.1}
    (results / "memory.json").write_text(json.dumps({"machine": machine, "paddings": {
        "fixed": {"methods": {"houlsby": {**memory, "peak_rss_mb": 1800, "padded_lengths": [128]},
                              "full": {**memory, "peak_rss_mb": 2000, "padded_lengths": [128]}},
                  "peak_rss_below_full": {"houlsby": 0.1}},
        "bucketed": {"methods": {"houlsby": {**memory, "peak_rss_mb": 1500, "padded_lengths": [96, 90]},
                                 "full": {**memory, "peak_rss_mb": 2000, "padded_lengths": [96, 90]}},
                     "peak_rss_below_full": {"houlsby": 0.25}}}}))
    def variant(relative):
        return {"examples_per_second": 100 * relative, "relative_to_base": relative, "rounds": [100.0]}
    (results / "inference.json").write_text(json.dumps({"machine": machine, "rounds": 1, "variants": {
        "dynamic": {"base": variant(1.0), "base_control": variant(0.995), "lora_merged": variant(0.99),
                    "houlsby": variant(0.9)},
        "fixed": {"base": variant(1.0), "base_control": variant(1.03), "lora_merged": variant(1.0),
                  "houlsby": variant(0.95)}}}))
    (results / "matmul_peak.json").write_text(json.dumps({"machine": machine, "repeats": 3, "matmuls": {
        "FFN in": {"shape": "[1536, 384] @ [384, 1536]", "median_ms": 10.0, "gflops": 181.2}}}))
    docs.mkdir()
    (docs / "RESULTS.md").write_text(f"# R\n\nprose\n{report.START}\nold\n{report.END}\nmore prose\n")

    assert report.main(["--results", str(results), "--docs", str(docs)]) == 0

    page = (docs / "RESULTS.md").read_text()
    assert page.startswith("# R\n\nprose\n") and page.endswith("more prose\n") and "old" not in page
    # final F1 84 and 88 -> mean 86.0, sample std 2.8; best epochs 86 and 88 -> 87.0 ± 1.4
    assert "| houlsby | 1,000 | 1.00 | 86.0 ± 2.8 | 87.0 ± 1.4 | 2 |" in page
    assert "| full | 1,000 | 1.00 | 90.0 | 90.0 | 1 |" in page  # one seed: no spread shown
    assert "| MRPC houlsby within 1.0 point of full fine-tuning | 4.0 points below | **missed** (see the accuracy notes) |" in page
    assert "| adapter_bert houlsby | 1,000 | 10.0 | 5.0 | 20.0 |" in page
    assert "| FFN in | [1536, 384] @ [384, 1536] | 181.2 |" in page
    assert "| bucketing ≥ 2x fixed-128 (Houlsby, MRPC) | 1.50x | **missed** |" in page
    assert "| bucketing ≥ 2x fixed-128 computing on the padding (Houlsby, MRPC) | 3.00x | met |" in page
    assert "| Houlsby training ≥ 1.5x our full fine-tuning (fixed) | 1.00x | **missed** |" in page
    assert "| adapters 1.3.0, double_seq_bn 32 | 300,674 | 8.0 | - | 16.0 |" in page
    assert "| Houlsby training ≥ 1.2x the adapters library (fixed) | 1.25x | met |" in page
    assert "| Houlsby MRPC F1, best epoch ≥ 87 (mean of 2 seeds) | 87.0 | met |" in page
    # theirs: final 85 and 87 -> 86.0 ± 1.4; ours 86.0 -> not below theirs
    assert "| adapters 1.3.0, double_seq_bn 32 | 300,674 | 86.0 ± 1.4 | 87.0 ± 1.4 | 2 | 1850 |" in page
    assert "| Houlsby MRPC F1 (final epoch) ≥ the adapters library's (2 vs 2 seeds) | 86.0 vs 86.0 | met |" in page
    assert "| lora_merged inference within 2% of the base (dynamic) | 1.0% slower | met |" in page
    assert "| active houlsby adapter costs ≤ 8% (dynamic) | 10.0% slower | **missed** |" in page
    assert "| lora_merged inference within 2% of the base (fixed) | 0.0% slower | not resolved" in page
    assert "| Houlsby training peak RSS ≥ 25% below full fine-tuning (fixed) | 10.0% below | **missed** |" in page
    assert "| Houlsby training peak RSS ≥ 25% below full fine-tuning (bucketed) | 25.0% below | met |" in page
    assert "- adapters 1.3.0, double_seq_bn 32 below PyTorch full fine-tuning: 10.0%" in page
    assert "padded lengths 90, 96" in page and "| houlsby | 10 | 1000 | 1500 | 0.10 | 25.0% |" in page
    for name in ("mrpc_score_vs_params.png", "train_throughput.png"):
        assert (docs / "results" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_lists_checks_beside_the_preset(tmp_path):
    for root, lr, seeds in [(tmp_path, 5e-4, {0: [0.80, 0.82], 1: [0.80, 0.84]}),
                            (tmp_path / "checks" / "lora_lr1e-3", 1e-3, {0: [0.82, 0.86], 1: [0.83, 0.88]})]:
        for seed, f1s in seeds.items():
            run = root / "accuracy_runs" / "mrpc" / "lora" / f"seed{seed}" / "mrpc"
            run.mkdir(parents=True)
            record = _results_json(seed, f1s)
            record["args"].update(learning_rate=lr, epochs=2)
            (run / "results.json").write_text(json.dumps(record))
    res = report.load_results(tmp_path)
    assert list(res["accuracy"]["mrpc"]) == ["lora"]  # the checks stay out of the main grid
    # final 86 and 88 -> 87.0 ± 1.4, beside the preset's 82 and 84 -> 83.0 ± 1.4
    assert ("| lora_lr1e-3 | mrpc | lora | 0.001 | - | 2 | all | 87.0 ± 1.4 | 87.0 ± 1.4 | 2 | 83.0 ± 1.4 (2) |"
            in report.render_tables(res))
    accuracy_main = accuracy.run_command("mrpc", "lora", 0, 3, Path("/tmp/x"), None, learning_rate=1e-3)
    assert "--learning_rate=0.001" in accuracy_main
    wide = accuracy.run_command("sst2", "houlsby", 0, 3, Path("/tmp/x"), 2000, bottleneck_size=256)
    assert "--bottleneck_size=256" in wide and "--bottleneck_size=32" not in wide


def test_report_refuses_a_page_without_markers(tmp_path):
    (tmp_path / "RESULTS.md").write_text("# hand-written only\n")
    with pytest.raises(SystemExit, match="markers"):
        report.main(["--results", str(tmp_path / "none"), "--docs", str(tmp_path)])
    assert (tmp_path / "RESULTS.md").read_text() == "# hand-written only\n"


def test_every_benchmark_method_uses_its_flagfiles_learning_rate():
    for method in common.PRESETS:
        lines = (common.REPO / "flags" / "methods" / f"{method}.flags").read_text().splitlines()
        rate = next(float(line.split("=", 1)[1]) for line in lines if line.startswith("--learning_rate="))
        assert common.LEARNING_RATES[method] == rate, method


def test_peers_accuracy_keeps_only_runs_made_with_the_same_settings(tmp_path, monkeypatch):
    import peers
    monkeypatch.setattr(sys, "argv", ["peers.py", "--mode", "accuracy", "--epochs", "3",
                                      "--padding", "dynamic"])
    args = peers.parse_args()
    record = {"seed": 1, "padding": "dynamic", "threads": 2, "batch_size": 32,
              "max_seq_length": 128, "train_examples": 3668, "epochs": [{}, {}, {}]}
    path = tmp_path / "run.json"
    assert peers.finished_accuracy_run(path, args, 1) is None  # nothing there yet
    path.write_text(json.dumps(record))
    assert peers.finished_accuracy_run(path, args, 1) == record
    assert peers.finished_accuracy_run(path, args, 2) is None  # another seed's file
    path.write_text(json.dumps({**record, "epochs": [{}, {}]}))  # fewer epochs than asked
    assert peers.finished_accuracy_run(path, args, 1) is None
    path.write_text(json.dumps({**record, "padding": "fixed"}))
    assert peers.finished_accuracy_run(path, args, 1) is None
    path.write_text('{"seed": 1, "padd')  # a file cut short
    assert peers.finished_accuracy_run(path, args, 1) is None
    args.mode = "throughput"  # timings are never reused
    path.write_text(json.dumps(record))
    assert peers.finished_accuracy_run(path, args, 1) is None


def test_memory_bench_trains_an_epochs_heaviest_batches():
    import memory
    heaviest = memory.heaviest_batches("mrpc", "bucketed", 3)
    lengths = [int(inputs["input_ids"].shape[1]) for inputs, _ in heaviest]
    assert len(lengths) == 3 and lengths == sorted(lengths, reverse=True)
    assert all(int(labels.shape[0]) == 32 for _, labels in heaviest)
    # Only 5 MRPC training pairs exceed 96 tokens (the longest has 103): their batch of 5 rows is
    # lighter than a full batch from the 64-96 bucket, which is therefore the heaviest.
    assert lengths[0] == 96
    fixed = memory.heaviest_batches("mrpc", "fixed", 2)
    assert [int(inputs["input_ids"].shape[1]) for inputs, _ in fixed] == [128, 128]


def test_dense_fixed_padding_times_the_fixed_batches_on_a_step_without_skip_padding(tmp_path, monkeypatch):
    import numpy as np
    import train_throughput
    batches = train_throughput.epoch_batches("mrpc", ["fixed", "fixed_dense", "dynamic"], 2)
    assert batches["fixed_dense"] is batches["fixed"]
    train_throughput.save_batches(tmp_path / "b.npz", batches)
    with np.load(tmp_path / "b.npz") as saved:  # the peers compute on the padding at `fixed` already
        assert {key.split("__")[0] for key in saved.files} == {"fixed", "dynamic"}

    built, timed = [], []
    def make_step(method, task, skip_padding=True):
        built.append((method, skip_padding))
        return (method, skip_padding), {"trainable_params": 1, "total_params": 2}
    def time_pass(step, chosen):
        timed.append(step)
        return 1.0, 32 * len(chosen), 32 * len(chosen) * 128
    monkeypatch.setattr(train_throughput, "make_step", make_step)
    monkeypatch.setattr(train_throughput, "time_pass", time_pass)
    figures = train_throughput.time_methods(["houlsby", "full"], "mrpc", batches, rounds=2)
    assert built == [("houlsby", True), ("houlsby", False), ("full", True), ("full", False)]
    # Per round: fixed, fixed_dense, dynamic for each method, each padding on its own step.
    assert timed[6:12] == [("houlsby", True), ("full", True), ("houlsby", False), ("full", False),
                           ("houlsby", True), ("full", True)]
    assert set(figures["houlsby"]) >= {"fixed", "fixed_dense", "dynamic"}


def test_inference_figures_are_per_batch_medians_relative_to_the_base():
    import inference
    # Two batches, three rounds; round 2 is a slow spell that hits both variants alike.
    seconds = {"base": [[1.0, 3.0, 1.0], [2.0, 6.0, 2.0]],
               "lora_merged": [[1.1, 3.3, 1.1], [2.2, 6.6, 2.2]]}
    figures = inference.summarise(seconds, examples=64)
    assert figures["base"] == {"examples_per_second": round(64 / 3.0, 1), "relative_to_base": 1.0,
                               "rounds": [21.3, 7.1, 21.3]}
    assert figures["lora_merged"]["relative_to_base"] == round(3.0 / 3.3, 4)


def test_accuracy_collect_only_summarises_finished_runs_and_trains_nothing(tmp_path, monkeypatch):
    run = tmp_path / "accuracy_runs" / "mrpc" / "houlsby" / "seed1" / "mrpc"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(_results_json(1, [0.80, 0.86, 0.84])))

    def no_training(*args, **kwargs):
        raise AssertionError("--collect_only must not train")
    monkeypatch.setattr(accuracy, "run_command", no_training)
    assert accuracy.main(["--tasks", "mrpc,sst2", "--seeds", "0,1,2", "--out", str(tmp_path),
                          "--collect_only"]) == 0
    summary = json.loads((tmp_path / "accuracy.json").read_text())["tasks"]
    assert list(summary["mrpc"]) == ["houlsby"] and summary["sst2"] == {}
    assert summary["mrpc"]["houlsby"]["final"] == {"mean": 0.84, "std": 0.0, "min": 0.84, "max": 0.84, "n": 1}
    assert summary["mrpc"]["houlsby"]["best_epoch"]["mean"] == 0.86


@pytest.mark.parametrize("name, op_type, category", [
    ("m/bert_encoder/layer_0/intermediate/BiasAdd", "_MklNativeFusedMatMul", "matmul (dense layers)"),
    ("gradient_tape/m/bert_encoder/layer_0/output/MatMul/MatMul", "_MklMatMul", "matmul (dense layers)"),
    ("m/bert_encoder/layer_0/attention/MatMul_1", "_MklBatchMatMulV2", "matmul (attention)"),
    ("gradient_tape/m/bert_encoder/layer_3/gelu/mul", "Mul", "GELU"),
    ("m/bert_encoder/layer_3/attention_ln/layer_norm/moments/mean", "Mean", "LayerNorm"),
    ("m/bert_encoder/layer_3/layer_3_mh_adapter/task_layer_norm/layer_norm/sub", "Sub", "LayerNorm"),
    ("m/bert_encoder/layer_1/attention/attention_dropout/stateless_dropout/random", "StatelessRandomUniformV2", "dropout"),
    ("m/bert_encoder/layer_1/attention/attend/dropout/stateless_random_uniform", "StatelessRandomUniformV2", "dropout"),
    ("m/bert_encoder/layer_1/attention/attend_grad/dropout/SelectV2", "SelectV2", "dropout"),
    ("m/bert_encoder/layer_1/attention/Softmax", "_MklSoftmax", "softmax"),
    ("m/bert_encoder/layer_1/attention/GatherV2_1", "GatherV2", "gathers, scatters, transposes"),
    ("m/bert_encoder/layer_1/attention/transpose", "_MklTranspose", "gathers, scatters, transposes"),
    ("adam_w/Mul_3", "Mul", "optimizer"),
    ("m/ArithmeticOptimizer/AddOpsRewrite_add_1", "AddN", "other"),
    ("m/bert_encoder/layer_1/attention/add", "AddV2", "other"),
])
def test_profile_categories_name_each_op(name, op_type, category):
    import profile_step

    assert profile_step.tf_category(name, op_type) == category


def test_profile_summary_and_report_table():
    import profile_step

    events = [("a/layer_0/gelu/mul", "Mul", 0.010), ("a/x/BiasAdd", "_MklNativeFusedMatMul", 0.030),
              ("a/x/BiasAdd", "_MklNativeFusedMatMul", 0.030), ("a/y", "AddV2", 0.010)]
    summary = profile_step.summarize(events, steps=2, wall_seconds=0.07)
    assert summary["wall_ms_per_step"] == 35.0 and summary["op_ms_per_step"] == 40.0
    assert summary["categories_ms_per_step"]["matmul (dense layers)"] == 30.0
    assert summary["categories_ms_per_step"]["GELU"] == 5.0
    assert sum(summary["categories_ms_per_step"].values()) == 40.0
    peer = dict(summary, categories_ms_per_step=dict(summary["categories_ms_per_step"], GELU=1.0))
    profile = {"padding": "bucketed", "steps": 2, "inter_op_threads": 1,
               "machine": {"cpu": "X", "cores": 2, "python": "3.11"},
               "methods": {"houlsby": summary}, "peers": {"adapters_houlsby": peer}}
    table = "\n".join(report.profile_section(profile))
    assert "| GELU | 5 (12%) | 1 (2%) |" in table
    rows = [line.split(" | ")[0].lstrip("| ") for line in table.splitlines() if line.startswith("| ")]
    assert rows[3:5] == ["matmul (dense layers)", "matmul (attention)"]  # profile_step's order
    assert "adapters lib (PyTorch)" in table and "ops one at a time" in table


def test_a_peers_categories_take_profile_steps_order_and_unknown_ones_are_refused():
    import profile_step

    ordered = profile_step.in_category_order({"other": 3.0, "GELU": 1.0, "matmul (dense layers)": 9.0})
    assert list(ordered) == list(profile_step.CATEGORIES)
    assert ordered["GELU"] == 1.0 and ordered["LayerNorm"] == 0.0
    with pytest.raises(ValueError, match="does not know: \\['fused attention'\\]"):
        profile_step.in_category_order({"fused attention": 2.0})


@pytest.mark.slow
def test_profile_attributes_a_real_houlsby_step(tmp_path):
    """One bucketed MRPC batch of the packaged MiniLM under the TF profiler: every part is found."""
    import profile_step
    import train_throughput

    batches = train_throughput.epoch_batches("mrpc", ["bucketed"], 1)["bucketed"]
    figures = profile_step.profile_method("houlsby", "mrpc", batches, tmp_path / "trace")
    categories = figures["categories_ms_per_step"]
    assert abs(sum(categories.values()) - figures["op_ms_per_step"]) < 0.5
    for category in ("matmul (dense layers)", "matmul (attention)", "GELU", "LayerNorm", "dropout",
                     "softmax", "gathers, scatters, transposes", "optimizer"):
        assert categories[category] > 0, category
    # The dense layers' matmuls are the largest part; "other" holds only what no category names.
    assert categories["matmul (dense layers)"] == max(categories.values())
    assert categories["other"] < 0.25 * figures["op_ms_per_step"]


def test_continual_stages_chain_the_rows_technique(tmp_path):
    """Each full-fine-tuning stage starts from the previous stage's weights with its technique;
    the adapter row trains each task on the untouched base."""
    import argparse

    import continual

    options = argparse.Namespace(seed=0, epochs=2, train_examples=1000, ewc_strength=1e6,
                                 l2sp_strength=10.0, layer_lr_decay=0.8)
    first = continual.stage_args("full+ewc", "mrpc", 1, tmp_path, None, options)
    assert first.method == "full" and first.save_fisher and first.regularizer is None
    second = continual.stage_args("full+ewc", "sst2", 2, tmp_path, first.output_dir, options)
    assert second.regularizer == "ewc" and second.fisher_from == str(first.output_dir)
    assert second.regularizer_strength == 1e6 and second.adapter_name == "sst2_2"
    assert second.load_adapters == (str(first.output_dir / "adapter"),)
    l2sp = continual.stage_args("full+l2sp", "sst2", 2, tmp_path, first.output_dir, options)
    assert l2sp.regularizer == "l2sp" and l2sp.fisher_from is None
    decay = continual.stage_args("full+layer_decay", "mrpc", 1, tmp_path, None, options)
    assert decay.layer_lr_decay == 0.8 and decay.regularizer is None
    adapters = continual.stage_args("houlsby", "sst2", 2, tmp_path, first.output_dir, options)
    assert adapters.load_adapters == () and adapters.bottleneck_size == 32
    assert adapters.learning_rate == common.LEARNING_RATES["houlsby"]


def test_adapter_drop_rows_run_the_preset_with_its_lowest_layers_left_out():
    command = accuracy.run_command("mrpc", "houlsby_drop3", 0, 3, Path("/tmp/x"), None)
    flags = dict(arg.lstrip("-").split("=", 1) for arg in command[2:] if "=" in arg)
    assert flags["method"] == "houlsby" and flags["adapter_drop"] == "3"
    assert flags["bottleneck_size"] == "32" and flags["learning_rate"] == "0.001"
    lora = common.training_args("lora_drop3")
    assert (lora.method, lora.adapter_drop, lora.learning_rate) == ("lora", 3, 5e-4)


def test_throughput_precision_suffix_builds_the_model_under_the_bf16_policy():
    import keras

    import train_throughput

    assert common.split_variant("houlsby@bf16") == ("houlsby", "bf16")
    assert common.split_variant("full") == ("full", None)
    assert common.known_method("houlsby@recompute") and not common.known_method("houlsby@fp8")
    before = keras.mixed_precision.global_policy().name
    step, counts = train_throughput.make_step("bitfit@bf16", "mrpc")
    assert keras.mixed_precision.global_policy().name == before  # put back
    assert counts["trainable_params"] > 0


def test_useful_flops_count_real_tokens_forward_and_the_backward_each_method_needs():
    """Hand-counted multiply-adds on a 2-layer, 8-wide, 16-inner BERT, two examples of 3 and 1
    real tokens (padding to 4 is not useful work)."""
    import efficiency

    from adapter_bert.bert.config import BertConfig

    config = BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=16)
    batch = ({"attention_mask": [[1, 1, 1, 0], [1, 0, 0, 0]]}, None)
    dense = 4 * 8 * 8 + 2 * 8 * 16  # 512 per token and layer
    attention = 2 * (3 ** 2 + 1 ** 2) * 8  # 160 per layer: scores and weighted values
    forward = 2 * (4 * dense + attention)
    # Full fine-tuning (lowest trained: the embeddings, -1): input gradients in both layers
    # (attention twice) and the weight gradients of every dense matrix.
    full = efficiency.useful_flops([batch], config, 0, 2 * dense, -1) / 2
    assert full == forward + 2 * (4 * dense + 2 * attention) + 4 * 2 * dense
    # An adapter of 100 weights per token in every layer: its forward, its input and weight
    # gradients, and the input gradients of layer 1 only (above the lowest trained layer).
    adapter = efficiency.useful_flops([batch], config, 100, 0, 0) / 2
    assert adapter == forward + 4 * 100 + (4 * dense + 2 * attention) + 2 * 4 * 100
    assert efficiency.useful_flops([batch], config, 0, 0, None) / 2 == forward  # nothing trained


def test_trained_matrices_find_the_lowest_adapted_layer_and_skip_the_head():
    import efficiency

    from adapter_bert import AdapterBertModel
    from adapter_bert.testing import tiny_bert_config

    model = AdapterBertModel.from_config(tiny_bert_config(num_hidden_layers=3))
    hidden = model.config.hidden_size
    model.add_adapter("a", config="seq_bn[reduction_factor=4, leave_out=[0]]")
    model.add_classification_head("a", num_labels=2)
    model.train_adapter("a")
    adapter, base, lowest = efficiency.trained_matrices(model)
    assert (lowest, base) == (1, 0)
    assert adapter == 2 * 2 * hidden * (hidden // 4)  # down and up, in layers 1 and 2
    full = AdapterBertModel.from_config(tiny_bert_config(num_hidden_layers=3))
    full.add_adapter("f", config="full")
    full.add_classification_head("f", num_labels=2)
    full.train_adapter("f")
    config = full.config
    per_layer = 4 * config.hidden_size ** 2 + 2 * config.hidden_size * config.intermediate_size
    assert efficiency.trained_matrices(full) == (0, 3 * per_layer, -1)


def test_accuracy_variant_runs_the_command_with_the_variant_flag():
    command = accuracy.run_command("mrpc", "houlsby@bf16", 1, 3, Path("/tmp/x"), None)
    assert "--mixed_precision=bf16" in command and "--method=houlsby" in command
    assert "--learning_rate=0.001" in command and "--seed=1" in command
    plain = accuracy.run_command("mrpc", "houlsby", 1, 3, Path("/tmp/x"), None)
    assert [c for c in command if c not in plain] == ["--mixed_precision=bf16"]
    assert "--recompute_attention" in accuracy.run_command("mrpc", "full@recompute", 0, 3,
                                                           Path("/tmp/x"), None)


@pytest.mark.parametrize("name, layer", [
    ("gradient_tape/bert_encoder_1/layer_3_1/attention_1/query_1/MatMul", 3),
    ("bert_encoder_1/layer_1_1/output_ln_1/layer_norm_grad/sub", 1),
    ("bert_encoder_1/layer_0_1/attention_1/attend_grad/MatMul_2", 0),
    ("gradient_tape/layer_4_mh_adapter_1/down_1/MatMul", 4),
    ("bert_encoder_1/layer_2_1/intermediate_1/MatMul", None),  # forward
    ("gradient_tape/head_mrpc_1/classifier_1/MatMul", None),  # backward outside the layers
    ("adam_w/Mul_3", None),
])
def test_profile_attributes_backward_ops_to_their_layer(name, layer):
    import profile_step

    assert profile_step.backward_layer(name) == layer


def test_elementwise_alternatives_compute_the_same_functions():
    """The fused alternatives the elementwise benchmark times are the same GELU and LayerNorm."""
    import elementwise
    import numpy as np
    import tensorflow as tf

    from adapter_bert.bert import fast_ops

    x = tf.constant(np.random.default_rng(0).normal(0, 2, (37, 96)).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        padded, plain = elementwise.padded_xla_gelu()(x), fast_ops.gelu(x)
    np.testing.assert_allclose(padded, plain, atol=1e-6)
    np.testing.assert_allclose(tape.gradient(padded, x), tape.gradient(plain, x), atol=1e-5)
    gamma, beta = tf.ones(96) * 1.5, tf.ones(96) * 0.25
    np.testing.assert_allclose(elementwise.fused_batch_norm_layer_norm(x, gamma, beta),
                               fast_ops.layer_norm(x, gamma, beta, 1e-12), atol=1e-4)
    sizes = {int(elementwise.padded_size(tokens * 1536)) for tokens in range(600, 3300)}
    assert len(sizes) <= 24  # bounded compiled shapes over bucketed MRPC token counts
    assert all(n <= int(elementwise.padded_size(n)) <= 1.125 * n for n in (40_001, 2_521_000))


def test_a_method_run_with_the_library_s_head_gets_its_own_row(tmp_path):
    import newer_methods_report

    command = accuracy.run_command("mrpc", "compacter++@cls", 0, 3, Path("/tmp/x"), None)
    flags = dict(arg.lstrip("-").split("=", 1) for arg in command[2:] if "=" in arg)
    assert flags["pooling"] == "cls" and flags["adapter_config"] == "compacter++"
    results = tmp_path / "results"
    runs = results / "newer_full" / "peers" / "runs"
    runs.mkdir(parents=True)
    (runs / "accuracy_mrpc_adapters:dora_seed0.json").write_text(json.dumps(
        {"system": "adapters:dora", "seed": 0, "final": {"f1": 0.80, "accuracy": 0.75}}))
    for method, f1 in (("dora", 0.85), ("dora@cls", 0.81)):
        run = results / "newer_full" / "accuracy_runs" / "mrpc" / method / "seed0" / "mrpc"
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps({"final": {"dev": {"f1": f1, "accuracy": 0.7}}}))
    rows = newer_methods_report.render_full_budget(results).splitlines()[2:]
    assert rows == [
        "| dora | 85.0 / 80.0 | 70.0 / 75.0 | 85.0 | 80.0 | 1 / 1 |",
        "| dora, ours with the peers' head (pooler over [CLS]) | 81.0 / 80.0 | 70.0 / 75.0 | 81.0 | 80.0 | 1 / 1 |"]
