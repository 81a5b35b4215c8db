"""Real parts through the command line: every newer method on the real MRPC files with the
packaged MiniLM (a few steps each), and MAD-X: a language adapter trained with masked language
modelling on text written here, then an MRPC adapter stacked on it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "run_tf_adapter_bert.py"
COMMON = ["--casing", "all-minilm-l6-v2", "--batch_size", "8", "--max_seq_length", "64",
          "--epochs", "1", "--predict_test=false", "--export=false", "--log_every", "50",
          "--eval_batch_size", "64"]


def _cli(*flags):
    result = subprocess.run([sys.executable, str(SCRIPT), *COMMON, *flags], capture_output=True,
                            text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=900,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


METHODS = ["compacter", "compacter++", "seq_bn_inv", "double_seq_bn_inv", "prompt_tuning",
           "unipelt", "dora", "vera", "loreft", "noreft", "direft"]


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_every_newer_method_trains_on_mrpc_through_the_command(glue_dir, tmp_path, method):
    _cli("--task", "mrpc", "--data_dir", str(glue_dir / "MRPC"), "--adapter_config", method,
         "--max_train_examples", "48", "--max_steps", "3", "--learning_rate", "1e-3",
         "--saved_models_dir", str(tmp_path))
    out = tmp_path / "mrpc"
    results = json.loads((out / "results.json").read_text())
    assert results["adapter_config"] == method and results["train_steps"] == 3
    assert set(results["best"]["dev"]) == {"f1", "accuracy"}
    assert 0.0 <= results["best"]["dev"]["accuracy"] <= 1.0
    # What trained is what was saved: the adapter's and head's weights, nothing of the base
    # (VeRA also keeps its frozen shared pair, so the adapter reloads exactly).
    saved = {**load_file(str(out / "adapter" / "adapter.safetensors")),
             **load_file(str(out / "adapter" / "head.safetensors"))}
    frozen = sum(int(np.prod(v.shape)) for k, v in saved.items() if k.split(".")[-1] in
                 ("shared_A", "shared_B"))
    assert (method == "vera") == (frozen > 0)
    assert sum(int(np.prod(v.shape)) for v in saved.values()) - frozen == results["trainable_params"]
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["name"] == "mrpc"


ENGLISH = {
    "subject": ["the company", "a spokesman", "the government", "the bank", "shares of the firm",
                "the court", "the minister", "investors", "the board", "police", "the report",
                "the council", "analysts", "the union", "the airline"],
    "verb": ["said", "announced", "expected", "reported", "denied", "confirmed", "rejected",
             "approved", "warned", "predicted"],
    "object": ["a rise in profits", "the new plan", "higher prices", "a fall in sales",
               "the proposed merger", "more job cuts", "a strong quarter", "the deal",
               "an investigation", "lower interest rates", "the decision", "record losses"],
    "tail": ["on monday", "last week", "in a statement", "this year", "on friday",
             "after the meeting", "in new york", "for the second time", "early on tuesday"],
}


def english_lines(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(str(rng.choice(ENGLISH[part])) for part in ("subject", "verb", "object", "tail"))
            .capitalize() + "." for _ in range(n)]


@pytest.mark.slow
def test_mad_x_language_adapter_with_mlm_then_task_adapter_in_a_stack(glue_dir, tmp_path):
    (tmp_path / "en.txt").write_text("\n".join(english_lines(300, 0)) + "\n", encoding="utf-8")
    (tmp_path / "en_dev.txt").write_text("\n".join(english_lines(40, 1)) + "\n", encoding="utf-8")
    _cli("--task", "mlm", "--train_file", str(tmp_path / "en.txt"),
         "--dev_file", str(tmp_path / "en_dev.txt"), "--adapter_name", "en",
         "--adapter_config", "seq_bn_inv", "--batch_size", "16", "--epochs", "2",
         "--eval_every", "10", "--learning_rate", "1e-3", "--saved_models_dir", str(tmp_path))
    results = json.loads((tmp_path / "en" / "results.json").read_text())
    assert results["task"] == "mlm" and results["train_steps"] == 38  # 300 lines / 16, 2 epochs
    curve = [e["dev"]["perplexity"] for e in results["epochs"]]
    print("MLM dev perplexity:", [round(p, 1) for p in curve])
    # The head starts untrained (this checkpoint has none); in 38 steps the dev perplexity must
    # fall to under half of what it was after the first 10 (about 430 to 180 on this machine).
    assert curve[-1] < curve[0] / 2 and results["best"]["dev"]["perplexity"] == min(curve)

    language = tmp_path / "en" / "adapter"
    before = {p.name: p.read_bytes() for p in language.iterdir()}
    _cli("--task", "mrpc", "--data_dir", str(glue_dir / "MRPC"), "--max_train_examples", "48",
         "--max_steps", "3", "--load_adapter", str(language), "--adapter_setup", "Stack(en, mrpc)",
         "--saved_models_dir", str(tmp_path / "task"))
    assert {p.name: p.read_bytes() for p in language.iterdir()} == before  # frozen, untouched
    task = json.loads((tmp_path / "task" / "mrpc" / "results.json").read_text())
    assert task["adapter_setup"] == "Stack[en, mrpc]"
    assert task["loaded_adapters"][0]["name"] == "en"
    saved_setup = tmp_path / "task" / "mrpc" / "setup"
    assert (saved_setup / "en" / "adapter.safetensors").is_file()
