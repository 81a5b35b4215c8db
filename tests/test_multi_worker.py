"""Two local workers (two processes on 127.0.0.1) train like one process on the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adapter_bert.testing import write_tiny_hf_checkpoint
from test_training import write_glue_task

REPO = Path(__file__).resolve().parents[1]

# Each worker trains, then dumps its final adapter + head weights (the chief alone writes files
# in a multi-worker run, so the test collects every worker's copy itself).
WORKER = r"""
import json, os, sys
import numpy as np
from adapter_bert.training import TrainingArgs, train, trained_variables
spec = json.loads(sys.argv[1])
index = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index", 0)
args = TrainingArgs(**spec["args"])
results, model = train(args)
weights = {k: v.numpy() for k, v in trained_variables(model, args).items()}
np.savez(os.path.join(spec["dump"], f"{spec['name']}_{index}.npz"), **weights)
print("REPLICAS", results["replicas"])
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mw")
    write_tiny_hf_checkpoint(root / "ckpt", seed=0, dropout=0.0)
    write_glue_task(root / "glue", "sst2", n=16)
    return root


def _spec(root, name, strategy):
    return {"name": name, "dump": str(root), "args": {
        "task": "sst2", "casing": str(root / "ckpt"), "data_dir": str(root / "glue"),
        "adapter_config": "double_seq_bn[reduction_factor=4]", "batch_size": 8, "epochs": 2,
        "max_seq_length": 32, "learning_rate": 1e-2, "strategy": strategy, "eval_every": 1000,
        "predict_test": False, "export": False, "saved_models_dir": str(root / name)}}


def test_two_local_workers_match_each_other_and_one_process(setup):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    single = subprocess.run([sys.executable, "-c", WORKER, json.dumps(_spec(setup, "single", "default"))],
                            capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert single.returncode == 0, single.stderr[-3000:]
    launched = subprocess.run(
        [sys.executable, "-m", "adapter_bert.launch", "--num_workers", "2", "--", sys.executable,
         "-c", WORKER, json.dumps(_spec(setup, "multi", "multi_worker_mirrored"))],
        capture_output=True, text=True, env=env, timeout=900, cwd=REPO)
    assert launched.returncode == 0, launched.stdout[-4000:] + launched.stderr[-2000:]
    assert launched.stdout.count("REPLICAS 2") == 2
    reference = np.load(setup / "single_0.npz")
    workers = [np.load(setup / f"multi_{i}.npz") for i in (0, 1)]
    for name in reference.files:
        np.testing.assert_allclose(workers[1][name], workers[0][name], atol=1e-6, err_msg=name)
        np.testing.assert_allclose(workers[0][name], reference[name], atol=1e-5, err_msg=name)
    # Only the chief wrote the run's files.
    assert (setup / "multi" / "sst2" / "results.json").is_file()
    assert (setup / "multi" / "sst2" / "adapter" / "adapter.safetensors").is_file()
    assert sorted(p.name for p in (setup / "multi" / "sst2").iterdir()) == [
        "adapter", "checkpoints", "logs", "results.json"]


def test_launcher_reports_a_failing_worker():
    result = subprocess.run([sys.executable, "-m", "adapter_bert.launch", "--num_workers", "2", "--",
                             sys.executable, "-c", "import sys, os, json; "
                             "sys.exit(3 if json.loads(os.environ['TF_CONFIG'])['task']['index'] else 0)"],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 3


def test_worker_flags_are_validated(tmp_path):
    from adapter_bert.training import TrainingArgs, validate_args

    with pytest.raises(ValueError, match="need --strategy multi_worker_mirrored"):
        validate_args(TrainingArgs(worker_hosts=("127.0.0.1:1",), task_index=0))
    with pytest.raises(ValueError, match="--task_index 2 is not in 0..1"):
        validate_args(TrainingArgs(strategy="multi_worker_mirrored",
                                   worker_hosts=("127.0.0.1:1", "127.0.0.1:2"), task_index=2))
