"""Real parts end to end: the packaged MiniLM, the real MRPC files, the training command's loop."""

import json

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
