"""SavedModels for TF Serving, loaded in a fresh process that imports only TensorFlow."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adapter_bert import AdapterBertModel, load_tokenizer
from adapter_bert.export import export_saved_model, next_version
from adapter_bert.testing import write_tiny_hf_checkpoint

PAIRS_A = ["the cat sat on the mat", "a dog", "it was not a very good movie !"]
PAIRS_B = ["the dog sat", "a cat is good", "bad"]

# Runs in a fresh interpreter: only tensorflow (and tensorflow_text for the text signature).
LOADER = r"""
import json, sys
import numpy as np
import tensorflow as tf
if "--text" in sys.argv:
    import tensorflow_text  # noqa: F401  registers the tokenizer ops the text signature needs
spec = json.loads(sys.argv[1])
loaded = tf.saved_model.load(spec["path"])
out = {"signatures": sorted(loaded.signatures.keys()), "results": {}}
for name, kwargs in spec["calls"].items():
    fn = loaded.signatures[name]
    args = {k: tf.constant(v, dtype=tf.string if isinstance(v[0], str) else tf.int32)
            for k, v in kwargs.items()}
    out["results"][name] = {k: v.numpy().tolist() for k, v in fn(**args).items()}
mods = sorted(m for m in sys.modules if m.split(".")[0] == "adapter_bert")
out["adapter_bert_modules"] = mods
print("JSON" + json.dumps(out))
"""


def _load_in_fresh_process(path, calls, text=False):
    argv = [sys.executable, "-c", LOADER, json.dumps({"path": str(path), "calls": calls})]
    if text:
        argv.append("--text")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, cwd="/")
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("JSON"))[4:])
    assert out["adapter_bert_modules"] == []
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny")
    write_tiny_hf_checkpoint(directory, seed=0)
    return directory


def _model(checkpoint, tasks):
    model = AdapterBertModel.from_pretrained(checkpoint)
    rng = np.random.default_rng(0)
    for task, config, labels in tasks:
        model.add_adapter(task, config=config)
        if labels == 1:
            model.add_regression_head(task)
        else:
            model.add_classification_head(task, num_labels=labels)
        for v in model.adapter_modules[task].named_variables().values():
            v.assign(v.numpy() + 0.1 * rng.standard_normal(v.shape).astype("float32"))
    return model


def _keras_outputs(model, tokenizer, task, text_b=True):
    model.set_active_adapters(task)
    model.active_head = task
    features = tokenizer.encode(PAIRS_A, PAIRS_B if text_b else None, max_seq_length=32)
    return features, model(features).numpy()


def test_single_task_export_both_signatures_in_a_fresh_process(tmp_path, tiny):
    model = _model(tiny, [("mrpc", "double_seq_bn[reduction_factor=4]", 2)])
    tokenizer = load_tokenizer(tiny)
    features, logits = _keras_outputs(model, tokenizer, "mrpc")
    path = export_saved_model(model, tmp_path / "export", "mrpc", tokenizer, max_seq_length=32)
    assert path == tmp_path / "export" / "1"
    calls = {"serving_default": {k: v.tolist() for k, v in features.items()},
             "serve_text": {"text_a": PAIRS_A, "text_b": PAIRS_B}}
    out = _load_in_fresh_process(path, calls, text=True)
    assert {"serving_default", "serve_text"} <= set(out["signatures"])
    for name in calls:
        result = out["results"][name]
        np.testing.assert_allclose(result["logits"], logits, atol=1e-5)
        np.testing.assert_allclose(np.sum(result["probabilities"], -1), 1.0, atol=1e-5)
        assert result["label"] == logits.argmax(-1).tolist()
    assert next_version(tmp_path / "export") == 2


def test_regression_export_and_saved_model_cli(tmp_path, tiny):
    model = _model(tiny, [("stsb", "lora", 1)])
    tokenizer = load_tokenizer(tiny)
    features, logits = _keras_outputs(model, tokenizer, "stsb")
    path = export_saved_model(model, tmp_path / "export", "stsb", tokenizer, max_seq_length=32)
    # Any SavedModel holding the text signature needs tensorflow_text's ops registered to load.
    out = _load_in_fresh_process(path, {"serving_default": {k: v.tolist() for k, v in features.items()}},
                                 text=True)
    np.testing.assert_allclose(out["results"]["serving_default"]["score"], logits[:, 0], atol=1e-5)
    ids_only = export_saved_model(model, tmp_path / "ids_only", "stsb")  # no tokenizer: plain TF
    out = _load_in_fresh_process(ids_only, {"serving_default": {k: v.tolist() for k, v in features.items()}})
    assert "serve_text" not in out["signatures"]
    np.testing.assert_allclose(out["results"]["serving_default"]["score"], logits[:, 0], atol=1e-5)
    # saved_model_cli from the interpreter's own bin directory (what `saved_model_cli` on PATH
    # runs when TensorFlow's scripts are installed there), else its module.
    cli = Path(sys.executable).with_name("saved_model_cli")
    command = [str(cli)] if cli.is_file() else [sys.executable, "-m",
                                                "tensorflow.python.tools.saved_model_cli"]
    shown = subprocess.run(command + ["show", "--dir", str(path), "--all"], capture_output=True,
                           text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    for text in ("signature_def['serving_default']", "signature_def['serve_text']",
                 "inputs['input_ids']", "outputs['score']", "inputs['text_a']"):
        assert text in shown.stdout


def test_merged_lora_export_matches_and_model_is_reset(tmp_path, tiny):
    model = _model(tiny, [("sst2", "lora[r=4, intermediate_lora=True]", 2)])
    tokenizer = load_tokenizer(tiny)
    base_weights = [w.numpy().copy() for w in model.bert.weights]
    features, logits = _keras_outputs(model, tokenizer, "sst2", text_b=False)
    path = export_saved_model(model, tmp_path / "export", "sst2", tokenizer, max_seq_length=32,
                              merge=True)
    out = _load_in_fresh_process(path, {"serving_default": {k: v.tolist() for k, v in features.items()},
                                        "serve_text": {"text_a": PAIRS_A}}, text=True)
    for name in ("serving_default", "serve_text"):
        np.testing.assert_allclose(out["results"][name]["logits"], logits, atol=1e-5)
    for w, before in zip(model.bert.weights, base_weights):
        np.testing.assert_array_equal(w.numpy(), before)
    assert not model.adapter_modules["sst2"].merged


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_multi_adapter_export_shares_the_base(tmp_path, tiny):
    tasks = [("mrpc", "double_seq_bn[reduction_factor=4]", 2), ("rte", "lora", 2),
             ("stsb", "prefix_tuning[prefix_length=4, bottleneck_size=8]", 1)]
    model = _model(tiny, tasks)
    tokenizer = load_tokenizer(tiny)
    expected = {t: _keras_outputs(model, tokenizer, t) for t, _, _ in tasks}
    multi = export_saved_model(model, tmp_path / "multi", [t for t, _, _ in tasks], tokenizer,
                               max_seq_length=32)
    singles = [export_saved_model(model, tmp_path / t, t, tokenizer, max_seq_length=32)
               for t, _, _ in tasks]
    base = sum(int(np.prod(w.shape)) * 4 for w in model.bert.weights)
    # The weights (variables/) hold the base once; the graphs grow with the signatures.
    weights = [_size(p / "variables") for p in [multi] + singles]
    assert weights[0] <= sum(weights[1:]) - base * (len(tasks) - 1)
    calls = {}
    for t, _, _ in tasks:
        calls[t] = {k: v.tolist() for k, v in expected[t][0].items()}
        calls[f"{t}_text"] = {"text_a": PAIRS_A, "text_b": PAIRS_B}
    out = _load_in_fresh_process(multi, calls, text=True)
    for t, _, labels in tasks:
        key = "score" if labels == 1 else "logits"
        logits = expected[t][1][:, 0] if labels == 1 else expected[t][1]
        for name in (t, f"{t}_text"):
            np.testing.assert_allclose(out["results"][name][key], logits, atol=1e-5, err_msg=name)


def test_predict_request_can_be_built(tmp_path, tiny):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mrpc"
    request.model_spec.signature_name = "serve_text"
    request.inputs["text_a"].CopyFrom(tf.make_tensor_proto(PAIRS_A))
    request.inputs["text_b"].CopyFrom(tf.make_tensor_proto(PAIRS_B))
    assert request.inputs["text_a"].tensor_shape.dim[0].size == 3
    assert predict_pb2.PredictRequest.FromString(request.SerializeToString()) == request


def test_export_errors(tmp_path, tiny):
    model = _model(tiny, [("a", "seq_bn", 2), ("b", "lora", 2)])
    with pytest.raises(KeyError, match="no adapter named 'nope'"):
        export_saved_model(model, tmp_path, "nope")
    with pytest.raises(ValueError, match="merge=True merges one adapter"):
        export_saved_model(model, tmp_path, ["a", "b"], merge=True)
    export_saved_model(model, tmp_path, "a", version=3)
    with pytest.raises(FileExistsError, match="exists already"):
        export_saved_model(model, tmp_path, "a", version=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3"]


def test_mixed_signature_serves_each_row_with_its_own_task(tmp_path, tiny):
    tasks = [("mrpc", "double_seq_bn[reduction_factor=4]", 2), ("stsb", "lora", 1),
             ("sst2", "prefix_tuning[prefix_length=4, bottleneck_size=8]", 3),
             ("rte", "seq_bn[reduction_factor=2]", 2)]
    model = _model(tiny, tasks)
    tokenizer = load_tokenizer(tiny)
    names = [t for t, _, _ in tasks]
    path = export_saved_model(model, tmp_path / "export", names, tokenizer, max_seq_length=32,
                              pair_tasks=["mrpc", "stsb", "rte"])
    features = tokenizer.encode(PAIRS_A * 2, PAIRS_B * 2, max_seq_length=32)
    row_tasks = ["mrpc", "stsb", "sst2", "rte", "stsb", "sst2"]
    ids = {k: v.tolist() for k, v in features.items()}
    calls = {t: ids for t in names}
    calls.update({f"{t}_text": {"text_a": PAIRS_A * 2, **({"text_b": PAIRS_B * 2} if t != "sst2" else {})}
                  for t in names})
    calls["mixed"] = {**ids, "task": row_tasks}
    calls["mixed_text"] = {"text_a": PAIRS_A * 2, "text_b": PAIRS_B * 2, "task": row_tasks}
    out = _load_in_fresh_process(path, calls, text=True)
    assert {"mixed", "mixed_text"} <= set(out["signatures"])
    for mixed, own in (("mixed", ""), ("mixed_text", "_text")):
        result = {k: np.asarray(v) for k, v in out["results"][mixed].items()}
        for row, task in enumerate(row_tasks):
            mine = {k: np.asarray(v) for k, v in out["results"][task + own].items()}
            if task == "stsb":  # regression: the score, and nothing in the class columns
                np.testing.assert_allclose(result["score"][row], mine["score"][row], atol=1e-5)
                assert result["label"][row] == -1 and np.isneginf(result["logits"][row]).all()
                assert (result["probabilities"][row] == 0).all()
                continue
            labels = mine["logits"].shape[1]
            np.testing.assert_allclose(result["logits"][row, :labels], mine["logits"][row],
                                       atol=1e-5, err_msg=f"{mixed} row {row}")
            np.testing.assert_allclose(result["probabilities"][row, :labels],
                                       mine["probabilities"][row], atol=1e-5)
            assert np.isneginf(result["logits"][row, labels:]).all()
            assert (result["probabilities"][row, labels:] == 0).all()
            assert result["label"][row] == mine["label"][row] and np.isnan(result["score"][row])
        assert result["task_index"].tolist() == [names.index(t) for t in row_tasks]
    # An unknown task is an error of the call that names it, not a row of zeros.
    script = ("import sys, tensorflow as tf, tensorflow_text\n"
              "f = tf.saved_model.load(sys.argv[1]).signatures['mixed']\n"
              "ids = tf.constant([[7, 9, 8]]); f(input_ids=ids, attention_mask=tf.ones_like(ids),"
              " token_type_ids=tf.zeros_like(ids), task=tf.constant(['nope']))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    failed = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                            text=True, timeout=300, env=env, cwd="/")
    assert failed.returncode != 0
    assert "unknown task in `task`; the known tasks are mrpc, stsb, sst2, rte; unknown:] [nope]" \
        in failed.stderr
    cli = Path(sys.executable).with_name("saved_model_cli")
    command = [str(cli)] if cli.is_file() else [sys.executable, "-m",
                                                "tensorflow.python.tools.saved_model_cli"]
    shown = subprocess.run(command + ["show", "--dir", str(path), "--all"], capture_output=True,
                           text=True, timeout=300)
    assert "signature_def['mixed']" in shown.stdout and "inputs['task']" in shown.stdout


def test_prompt_tuning_export_takes_the_unextended_inputs(tmp_path, tiny):
    model = _model(tiny, [("sst2", "prompt_tuning[prompt_length=3]", 2)])
    tokenizer = load_tokenizer(tiny)
    features, logits = _keras_outputs(model, tokenizer, "sst2", text_b=False)
    path = export_saved_model(model, tmp_path / "export", "sst2", tokenizer, max_seq_length=32)
    out = _load_in_fresh_process(path, {"serving_default": {k: v.tolist() for k, v in features.items()},
                                        "serve_text": {"text_a": PAIRS_A}}, text=True)
    for name in ("serving_default", "serve_text"):
        np.testing.assert_allclose(out["results"][name]["logits"], logits, atol=1e-5)
