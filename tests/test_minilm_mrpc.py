"""Real parts end to end: the packaged MiniLM, the real MRPC files, the training command's loop."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from adapter_bert.bert.checkpoint import read_checkpoint
from adapter_bert.training import TrainingArgs, run


@pytest.mark.slow
def test_houlsby_adapter_one_epoch_beats_majority_class(glue_dir, tmp_path):
    """One epoch of MRPC train (3,668 pairs); dev must beat the majority class (68.4% accuracy)."""
    results = run(TrainingArgs(
        task="mrpc", casing="all-minilm-l6-v2", data_dir=str(glue_dir / "MRPC"), method="houlsby",
        bottleneck_size=32, non_linearity="gelu", pooling="mean", batch_size=32, epochs=1,
        learning_rate=1e-3, warmup_ratio=0.1, bucket_boundaries=(32, 48, 64, 96, 128),
        saved_models_dir=str(tmp_path), log_every=40, predict_test=False, export=False))
    dev = results["best"]["dev"]
    print(f"MRPC dev after one epoch: {dev}, {results['train_examples_per_second']:.1f} ex/s")
    assert dev["accuracy"] > 0.684 + 0.02
    assert results["train_steps"] == 115
    # The base stayed frozen: the adapter file holds adapter weights only, and the checkpoint on
    # disk was never touched (the model was loaded from it, not saved).
    out = tmp_path / "mrpc"
    weights = load_file(str(out / "adapter" / "adapter.safetensors"))
    config, _, _ = read_checkpoint("all-minilm-l6-v2")
    bottleneck = 2 * config.num_hidden_layers * (2 * 384 * 32 + 32 + 384)
    layer_norms = 2 * config.num_hidden_layers * 2 * 384
    assert sum(int(np.prod(v.shape)) for v in weights.values()) == bottleneck + layer_norms
    assert json.loads((out / "results.json").read_text())["best"]["dev"] == dev


@pytest.mark.slow
def test_mrpc_adapter_trains_inside_a_stack_with_a_loaded_sst2_adapter(glue_dir, tmp_path):
    """The command line end to end: a Pfeiffer adapter on SST-2, then a new one on MRPC inside
    Stack(sst2, mrpc); the SavedModel serves the stack in a process without adapter_bert."""
    import subprocess
    import sys

    from test_export import _load_in_fresh_process

    script = Path(__file__).resolve().parents[1] / "run_tf_adapter_bert.py"
    common = ["--casing", "all-minilm-l6-v2", "--method", "pfeiffer", "--batch_size", "16",
              "--eval_batch_size", "64", "--saved_models_dir", str(tmp_path),
              "--predict_test=false", "--log_every", "50"]

    def cli(*flags):
        result = subprocess.run([sys.executable, str(script), *common, *flags], capture_output=True,
                                text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    cli("--task", "sst2", "--data_dir", str(glue_dir / "SST-2"), "--max_train_examples", "2000",
        "--epochs", "1", "--max_steps", "6", "--export=false", "--learning_rate", "1e-3")
    sst2 = tmp_path / "sst2" / "adapter"
    before = {p.name: p.read_bytes() for p in sst2.iterdir()}
    cli("--task", "mrpc", "--data_dir", str(glue_dir / "MRPC"), "--epochs", "1", "--max_steps", "4",
        "--load_adapter", str(sst2), "--adapter_setup", "Stack(sst2, mrpc)")
    assert {p.name: p.read_bytes() for p in sst2.iterdir()} == before
    out = tmp_path / "mrpc"
    results = json.loads((out / "results.json").read_text())
    assert results["adapter_setup"] == "Stack[sst2, mrpc]" and results["train_steps"] == 4
    assert set(results["best"]["dev"]) == {"f1", "accuracy"}
    assert sorted(p.name for p in (out / "adapter").iterdir()) == [
        "adapter.safetensors", "adapter_config.json", "head.safetensors", "head_config.json"]
    # Served in a fresh process (tensorflow and tensorflow_text only), the stack's logits equal
    # the model rebuilt from the saved setup.
    from adapter_bert import AdapterBertModel, load_tokenizer

    model = AdapterBertModel.from_pretrained("all-minilm-l6-v2")
    model.load_adapter_setup(out / "setup")
    tokenizer = load_tokenizer("all-minilm-l6-v2")
    features = tokenizer.encode(["The company said profits rose."], ["Profits went up, it said."])
    features = {k: np.asarray(v, "int32") for k, v in features.items()}
    served = _load_in_fresh_process(out / results["export"], {
        "serving_default": {k: v.tolist() for k, v in features.items()},
        "serve_text": {"text_a": ["The company said profits rose."],
                       "text_b": ["Profits went up, it said."]}}, text=True)
    expected = model(features).numpy()
    for signature in ("serving_default", "serve_text"):
        np.testing.assert_allclose(served["results"][signature]["logits"], expected, atol=1e-4)
