"""Adapter files of the PyTorch adapters library (1.3.0) and PEFT (0.21), read and written.

`tests/fixtures/make_interop_reference.py` ran both libraries once: each case under
`tests/fixtures/interop/{adapters,peft}/` is the library's own directory (its `save_adapter` /
`save_pretrained`, with fixed non-zero weights), and `outputs.npz` holds what the library computed
with it. Loading the directory must give the same last hidden states (and head logits) within
1e-4, and writing the loaded adapter back in that library's format must give the same files: the
same tensor names, shapes, dtypes and values, and the same config fields.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from adapter_bert import AdapterBertModel
from adapter_bert.formats import detect

FIXTURES = Path(__file__).parent / "fixtures" / "interop"
TINY = FIXTURES / "tiny_bert"
TOLERANCE = 1e-4

LIBRARY_CASES = ["seq_bn", "double_seq_bn", "par_bn", "lora", "ia3", "prefix_tuning", "prefix_flat",
                 "mam", "unipelt", "compacter", "seq_bn_inv", "seq_bn_inv_mlm", "prompt_tuning",
                 "dora", "vera", "loreft"]
PEFT_CASES = ["lora", "lora_patterns", "lora_layers", "lora_regex", "lora_seq_cls", "ia3", "prefix",
              "prefix_projection", "prompt"]
MINILM_CASES = [("adapters", "minilm_seq_bn"), ("adapters", "minilm_lora"), ("adapters", "minilm_ia3"),
                ("peft", "minilm_lora"), ("peft", "minilm_ia3")]
# PEFT's feature-extraction model drops token types for its prompt methods: so did the reference.
NO_TOKEN_TYPES = {("peft", "prefix"), ("peft", "prefix_projection"), ("peft", "prompt")}
# The library's files for these cannot be written back (see `test_refused_exports_write_nothing`).
NOT_WRITTEN = {("adapters", "loreft")}


@pytest.fixture(scope="module")
def reference():
    return np.load(FIXTURES / "outputs.npz")


@pytest.fixture(scope="module")
def minilm_model():
    return AdapterBertModel.from_pretrained("all-minilm-l6-v2")


def _inputs(reference, prefix: str, library: str, case: str) -> dict:
    inputs = {k: reference[f"{prefix}/{k}"] for k in ("input_ids", "attention_mask", "token_type_ids")}
    if (library, case) in NO_TOKEN_TYPES:
        inputs["token_type_ids"] = np.zeros_like(inputs["token_type_ids"])
    return inputs


def _check_outputs(model, name, inputs, reference, library, case, dims=None):
    model.set_active_adapters(name)
    mask = inputs["attention_mask"].astype(bool)
    hidden = model.bert(inputs)["sequence_output"].numpy()[mask]
    expected = reference[f"out/{library}/{case}"]
    np.testing.assert_allclose(hidden[:, :dims] if dims else hidden, expected, atol=TOLERANCE, rtol=0)
    if f"logits/{library}/{case}" in reference:
        model.active_head = name
        logits = model(inputs).numpy()
        if logits.ndim == 3:  # a masked-LM head: the real tokens
            logits = logits[mask]
        np.testing.assert_allclose(logits, reference[f"logits/{library}/{case}"],
                                   atol=TOLERANCE, rtol=0)


def _tiny_input_set(case):
    return "tiny_full" if case == "unipelt" else "tiny"


@pytest.mark.parametrize("library,case", [("adapters", c) for c in LIBRARY_CASES]
                         + [("peft", c) for c in PEFT_CASES])
def test_library_files_load_to_the_libraries_outputs(library, case, reference):
    model = AdapterBertModel.from_pretrained(TINY)
    directory = FIXTURES / library / case
    assert detect(directory) == library
    name = model.load_adapter(directory)
    assert name == case  # the adapters library's name, or PEFT's directory name
    inputs = _inputs(reference, _tiny_input_set(case), library, case)
    _check_outputs(model, name, inputs, reference, library, case)
    # The adapter acts: the base alone is far from the library's output.
    model.set_active_adapters(None)
    if _tiny_input_set(case) == "tiny":
        mask = inputs["attention_mask"].astype(bool)
        base = model.bert(inputs)["sequence_output"].numpy()[mask]
        assert np.abs(base - reference[f"out/{library}/{case}"]).max() > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("library,case", MINILM_CASES)
def test_library_files_on_the_packaged_minilm(library, case, reference, minilm_model):
    name = minilm_model.load_adapter(FIXTURES / library / case, load_as=f"{library}_{case}")
    inputs = _inputs(reference, "minilm", library, case)
    _check_outputs(minilm_model, name, inputs, reference, library, case, dims=64)
    minilm_model.set_active_adapters(None)
    minilm_model.delete_adapter(name)


def _files(directory: Path) -> dict:
    return {p.name: p for p in directory.iterdir() if p.suffix in (".json", ".safetensors")}


def _config_fields(value, path=""):
    """Every key path of a JSON value (the fields, not their values)."""
    if isinstance(value, dict):
        out = set()
        for key, item in value.items():
            out.add(path + key)
            if key in ("config", "configs"):
                out |= _config_fields(item, path + key + ".")
        return out
    if isinstance(value, list):
        return set().union(*[_config_fields(v, f"{path}{i}.") for i, v in enumerate(value)])
    return set()


# Values our export writes differently from the library's file, by design (see the writers):
# PEFT targets are written as whole module names (layers_to_transform in them), the wrapper's copy of the untrained
# classifier bias as the trained one.
SAME_FIELDS_OTHER_VALUES = {"target_modules", "rank_pattern", "alpha_pattern", "prefix_projection",
                            "layers_to_transform", "feedforward_modules", "encoder_hidden_size",
                            "base_model_name_or_path", "model_name", "dropout_prob"}


@pytest.mark.parametrize("library,case", [("adapters", c) for c in LIBRARY_CASES
                                           if ("adapters", c) not in NOT_WRITTEN]
                         + [("peft", c) for c in PEFT_CASES])
def test_exports_are_the_libraries_files(library, case, tmp_path, reference):
    model = AdapterBertModel.from_pretrained(TINY)
    original = FIXTURES / library / case
    name = model.load_adapter(original)
    target = tmp_path / case
    model.save_adapter(target, name, format=library)
    theirs, ours = _files(original), _files(target)
    assert sorted(ours) == sorted(theirs)
    for filename, path in theirs.items():
        if filename.endswith(".json"):
            a, b = json.loads(path.read_text()), json.loads(ours[filename].read_text())
            assert _config_fields(b) == _config_fields(a), filename
            flat_a = {k: v for k, v in a.items() if k not in SAME_FIELDS_OTHER_VALUES}
            flat_b = {k: v for k, v in b.items() if k not in SAME_FIELDS_OTHER_VALUES}
            if "config" in a:
                for side in (flat_a, flat_b):
                    side["config"] = {k: v for k, v in side["config"].items()
                                      if k not in SAME_FIELDS_OTHER_VALUES}
            assert flat_b == flat_a, filename
            continue
        expected, written = load_file(str(path)), load_file(str(ours[filename]))
        assert sorted(written) == sorted(expected), filename
        for key, value in expected.items():
            assert written[key].shape == value.shape and written[key].dtype == value.dtype, key
            if not key.endswith("original_module.bias"):
                np.testing.assert_allclose(written[key], value, atol=1e-6, rtol=0, err_msg=key)
    # And the export reads back to the libraries' outputs.
    again = AdapterBertModel.from_pretrained(TINY)
    again.load_adapter(target, load_as=name)
    _check_outputs(again, name, _inputs(reference, _tiny_input_set(case), library, case), reference,
                   library, case)


def test_native_files_are_marked_and_not_taken_for_the_libraries(tmp_path):
    model = AdapterBertModel.from_pretrained(TINY)
    model.add_adapter("a", config="seq_bn")
    model.save_adapter(tmp_path / "a", "a")
    meta = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert meta["library"] == "adapter_bert" and "peft_type" not in meta
    assert not str(meta.get("version", "")).startswith("adapters.")
    assert detect(tmp_path / "a") == "adapter_bert"
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "adapter_config.json").write_text(json.dumps({"config": {}, "name": "b"}))
    with pytest.raises(ValueError, match="none of the formats' marks"):
        detect(tmp_path / "b")


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("library,case,weights,pickle", [
    ("adapters", "seq_bn", "adapter.safetensors", "pytorch_adapter.bin"),
    ("adapters", "seq_bn", "model_head.safetensors", "pytorch_model_head.bin"),
    ("peft", "lora", "adapter_model.safetensors", "adapter_model.bin"),
])
def test_pickles_are_refused_with_the_conversion(library, case, weights, pickle, tmp_path):
    directory = tmp_path / case
    shutil.copytree(FIXTURES / library / case, directory)
    (directory / weights).unlink()
    (directory / pickle).write_bytes(b"\x80\x04not really a pickle")
    model = AdapterBertModel.from_pretrained(TINY)
    with pytest.raises(ValueError) as excinfo:
        model.load_adapter(directory)
    message = _one_line(excinfo)
    assert pickle in message and "safetensors.torch import save_file" in message
    assert weights in message
    assert not model.adapters


def _edited_copy(tmp_path, library, case, weights, edit):
    directory = tmp_path / case
    shutil.copytree(FIXTURES / library / case, directory)
    state = load_file(str(directory / weights))
    edit(state)
    save_file(state, str(directory / weights))
    return directory


@pytest.mark.parametrize("library,case,weights,edit,expected", [
    ("adapters", "seq_bn", "adapter.safetensors",
     lambda s: s.update({"bert.encoder.layer.0.output.adapters.seq_bn.adapter_mid.weight":
                         np.ones((2, 2), "float32")}),
     "adapter_mid.weight has no counterpart"),
    ("adapters", "seq_bn", "adapter.safetensors",
     lambda s: s.pop("bert.encoder.layer.1.output.adapters.seq_bn.adapter_up.bias"),
     "missing bottleneck.layer_1_output_adapter.up.bias"),
    ("adapters", "lora", "adapter.safetensors",
     lambda s: s.update({"bert.encoder.layer.0.attention.self.query.loras.lora.lora_A":
                         np.ones((4, 31), "float32")}),
     "has shape"),
    ("peft", "lora", "adapter_model.safetensors",
     lambda s: s.update({"base_model.model.encoder.layer.0.attention.self.key.lora_A.weight":
                         np.ones((4, 32), "float32")}),
     "attention.self.key.lora_A.weight maps to nothing"),
    ("peft", "lora", "adapter_model.safetensors",
     lambda s: s.pop("base_model.model.encoder.layer.1.attention.self.value.lora_B.weight"),
     "no weight 'encoder.layer.1.attention.self.value.lora_B.weight'"),
])
def test_a_weight_that_does_not_fit_is_named(library, case, weights, edit, expected, tmp_path):
    directory = _edited_copy(tmp_path, library, case, weights, edit)
    model = AdapterBertModel.from_pretrained(TINY)
    with pytest.raises(ValueError) as excinfo:
        model.load_adapter(directory)
    assert expected in _one_line(excinfo)
    assert not model.adapters and not model.heads


@pytest.mark.slow
@pytest.mark.parametrize("library,case", [("adapters", "lora"), ("peft", "lora")])
def test_a_file_for_another_base_size_is_refused(library, case, minilm_model):
    with pytest.raises(ValueError) as excinfo:
        minilm_model.load_adapter(FIXTURES / library / case)
    message = _one_line(excinfo)
    assert "another size" in message
    assert case not in minilm_model.adapters


@pytest.mark.parametrize("change,expected", [
    ({"peft_type": "LOHA"}, "PEFT type 'LOHA' has no counterpart here; known: LORA"),
    ({"use_dora": True}, "PEFT LoRA option use_dora=True has no counterpart"),
    ({"bias": "some"}, "bias 'some'"),
    ({"target_modules": ["nothing_here"]}, "match no Dense layer"),
    ({"modules_to_save": ["pooler"]}, "modules_to_save ['pooler']"),
])
def test_peft_configs_without_counterpart_are_refused(change, expected, tmp_path):
    directory = tmp_path / "lora"
    shutil.copytree(FIXTURES / "peft" / "lora", directory)
    meta = json.loads((directory / "adapter_config.json").read_text())
    meta.update(change)
    (directory / "adapter_config.json").write_text(json.dumps(meta))
    model = AdapterBertModel.from_pretrained(TINY)
    with pytest.raises(ValueError) as excinfo:
        model.load_adapter(directory)
    assert expected in _one_line(excinfo)


@pytest.mark.parametrize("config,format,expected", [
    ("loreft", "adapters", "LoReFT's orthonormal projection"),
    ("lora[target_modules=['pooler']]", "adapters", "target_modules=['pooler'] has no counterpart"),
    ("prefix_tuning[shift_positions=True]", "adapters", "shift_positions=True has no counterpart"),
    ("double_seq_bn", "peft", "has no PEFT counterpart"),
    ("dora", "peft", "DoRA and VeRA"),
    ("prefix_tuning", "peft", "shift_positions=False"),
    ("prompt_tuning", "peft", "input_embeddings=True"),
    ("ia3[alpha=2]", "peft", "no alpha"),
])
def test_refused_exports_write_nothing(config, format, expected, tmp_path):
    model = AdapterBertModel.from_pretrained(TINY)
    model.add_adapter("a", config=config)
    model.save_adapter(tmp_path / "a", "a")
    before = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    with pytest.raises(ValueError) as excinfo:
        model.save_adapter(tmp_path / "a", "a", format=format)
    assert expected in _one_line(excinfo)
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == before


@pytest.mark.parametrize("head,format,expected", [
    (dict(pooling="mean"), "adapters", "pools by the mean"),
    (dict(layers=2), "peft", "1-layer 'cls' classification head"),
    (dict(pooling="cls_token"), "peft", "1-layer 'cls' classification head"),
    ("masked_lm", "peft", "1-layer 'cls' classification head"),
])
def test_heads_without_counterpart_are_refused(head, format, expected, tmp_path):
    model = AdapterBertModel.from_pretrained(TINY)
    model.add_adapter("a", config="lora")
    if head == "masked_lm":
        model.add_masked_lm_head("a")
    else:
        model.add_classification_head("a", **head)
    with pytest.raises(ValueError) as excinfo:
        model.save_adapter(tmp_path / "a", "a", format=format)
    assert expected in _one_line(excinfo)
    assert not (tmp_path / "a").exists()
    model.save_adapter(tmp_path / "a", "a", format=format, with_head=False)
    assert not (tmp_path / "a" / "head_config.json").exists()


def test_unknown_format_is_one_line(tmp_path):
    model = AdapterBertModel.from_pretrained(TINY)
    model.add_adapter("a", config="lora")
    with pytest.raises(ValueError, match="unknown adapter format 'torch'; known: adapter_bert, "
                                         "adapters, peft"):
        model.save_adapter(tmp_path / "a", "a", format="torch")


# --- the Hugging Face Hub --------------------------------------------------------------------------

def _cache_repo(cache: Path, repo_id: str, source: Path) -> None:
    """`source`'s files as huggingface_hub caches a downloaded repository."""
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    shutil.copytree(source, folder / "snapshots" / commit)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # "owner/name" must not be a local path here
    return cache


@pytest.mark.parametrize("library,case", [("peft", "lora"), ("adapters", "seq_bn")])
def test_hub_ids_load_from_the_cache_offline(library, case, hub_cache, reference):
    _cache_repo(hub_cache, f"someone/{case}-adapter", FIXTURES / library / case)
    model = AdapterBertModel.from_pretrained(TINY)
    name = model.load_adapter(f"someone/{case}-adapter")
    assert name == (f"{case}-adapter" if library == "peft" else case)
    _check_outputs(model, name, _inputs(reference, "tiny", library, case), reference, library, case)


def test_a_hub_id_not_in_the_cache_is_one_line_offline(hub_cache):
    model = AdapterBertModel.from_pretrained(TINY)
    with pytest.raises(ValueError) as excinfo:
        model.load_adapter("someone/absent-adapter")
    message = _one_line(excinfo)
    assert "'someone/absent-adapter'" in message and "HF_HUB_OFFLINE" in message


def test_a_missing_local_directory_is_not_looked_up_on_the_hub(tmp_path):
    model = AdapterBertModel.from_pretrained(TINY)
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model.load_adapter(tmp_path / "runs" / "missing")
