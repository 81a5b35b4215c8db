"""The selection protocol command (`python -m adapter_bert.sweep`) on a tiny BERT."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from test_training import assert_refused_in_one_line, write_glue_task

REPO = Path(__file__).resolve().parents[1]


def _sweep_command(tmp_path, checkpoint, *extra):
    flagfile = tmp_path / "tiny.flags"
    flagfile.write_text("\n".join([
        f"--casing={checkpoint}", "--task=mrpc", f"--data_dir={tmp_path / 'glue'}",
        "--batch_size=4", "--epochs=2", "--max_seq_length=32", "--log_every=100",
        f"--saved_models_dir={tmp_path / 'runs'}"]) + "\n")
    return [sys.executable, "-m", "adapter_bert.sweep", "--flagfile", str(flagfile),
            "--grid", "learning_rate=1e-3,2e-2",
            "--grid", "adapter_config=seq_bn[reduction_factor=4],lora[r=4,alpha=8]",
            "--seeds", "0,1", "--sweep_dir", str(tmp_path / "sweep"), *extra]


def test_grid_runs_resumes_after_a_kill_and_keeps_the_best_cell(tmp_path, tiny_checkpoint):
    write_glue_task(tmp_path / "glue", "mrpc", n=16)
    command = _sweep_command(tmp_path, tiny_checkpoint)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=env, cwd=REPO)
    sweep_dir = tmp_path / "sweep"
    deadline = time.time() + 400
    while time.time() < deadline and process.poll() is None:
        if len(list(sweep_dir.glob("*/seed_*/mrpc/results.json"))) >= 3:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the sweep ended before it could be killed"
    finished = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/seed_*/mrpc/results.json")}
    assert 3 <= len(finished) < 8

    again = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("finished earlier, not rerun") == len(finished)
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in finished.items())  # not rerun
    assert "run 8/8" in again.stderr and "eta" in again.stderr
    assert "oneDNN" not in again.stderr and "cuda" not in again.stderr.lower()

    table = json.loads((sweep_dir / "sweep.json").read_text())
    assert len(table["cells"]) == 4 and table["main_metric"] == "f1"
    for row in table["cells"]:
        scores = []
        for run in row["runs"]:
            results = json.loads((sweep_dir / run["dir"] / "mrpc" / "results.json").read_text())
            assert results["args"]["seed"] == run["seed"]
            assert results["args"]["learning_rate"] == float(row["values"]["learning_rate"])
            scores.append(results["best"]["dev"]["f1"])
        assert row["mean"] == pytest.approx(np.mean(scores))
    means = [row["mean"] for row in table["cells"]]
    assert table["best"]["index"] == int(np.argmax(means))  # the first of equal means
    best = table["cells"][table["best"]["index"]]
    best_run = max(best["runs"], key=lambda r: r["score"])
    assert table["best"]["seed"] == best_run["seed"]
    kept = (sweep_dir / "best" / "adapter" / "adapter.safetensors").read_bytes()
    assert kept == (sweep_dir / best_run["dir"] / "mrpc" / "adapter" / "adapter.safetensors").read_bytes()
    assert list((sweep_dir / "best" / "export").glob("*/saved_model.pb"))
    markdown = (sweep_dir / "sweep.md").read_text()
    best_line = [line for line in markdown.splitlines() if line.endswith("| best |")]
    assert len(best_line) == 1 and best["values"]["adapter_config"] in best_line[0]
    assert f"{best['mean']:.4f}" in best_line[0]
    assert "best cell:" in again.stdout

    # The same sweep directory with another base flag: refused before anything trains.
    before = (sweep_dir / "sweep.json").read_bytes()
    other = command + ["--max_steps", "3"]
    refused = subprocess.run(other, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert "--sweep_dir" in assert_refused_in_one_line(refused, "max_steps differ")
    assert (sweep_dir / "sweep.json").read_bytes() == before


@pytest.mark.parametrize("grid, message", [
    ("nope=1,2", "--grid nope: not a training flag"),
    ("flagfile=a,b", "--grid flagfile: not a training flag"),
    ("task=mrpc,rte", "--grid task: one value for the whole sweep"),
    ("seed=1,2", "the sweep sets seed itself (use --seeds)"),
    ("batch_size=4,x", "--grid batch_size: bad value 'x'"),
    ("learning_rate", "--grid takes NAME=V1,V2,..."),
    ("batch_size=4,4", "empty or repeated values"),
    ("learning_rate=1e-4", "--grid learning_rate is given twice"),
])
def test_bad_grid_is_one_line_and_writes_nothing(tmp_path, tiny_checkpoint, grid, message):
    write_glue_task(tmp_path / "glue", "mrpc", n=16)
    command = _sweep_command(tmp_path, tiny_checkpoint, "--grid", grid)
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert_refused_in_one_line(result, message)
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "runs").exists()
