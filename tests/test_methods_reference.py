"""The newer methods against the real adapters library (1.3.0) on the packaged MiniLM.

`tests/fixtures/make_methods_reference.py` ran the library once with fixed weights; loading the
same weights by name must give the same last hidden states within 1e-4, and for the invertible
adapters the same masked-LM logits (their heads invert the adapter before decoding).
"""

from pathlib import Path

import numpy as np
import pytest

from adapter_bert import AdapterBertModel
from adapter_bert.formats.adapters_library import (from_library_state,
                                                   masked_lm_head_from_library_state)

FIXTURE = Path(__file__).parent / "fixtures" / "methods_reference.npz"
TOLERANCE = 1e-4


def _state(data) -> dict:
    state = {k.removeprefix("weight/"): data[k].astype(np.float32)
             for k in data.files if k.startswith("weight/")}
    for key in data.files:  # large square matrices are stored as factors (see the script)
        if key.startswith("factors/") and key.endswith("/a"):
            name = key.removeprefix("factors/").removesuffix("/a")
            a, b = data[key], data[f"factors/{name}/b"]
            value = a.astype(np.float64) @ b.astype(np.float64)
            eye = float(data[f"factors/{name}/eye"])
            if eye:
                value = value + eye * np.eye(value.shape[0])
            state[name] = value.astype(np.float32)
    return state


@pytest.fixture(scope="module")
def reference():
    data = np.load(FIXTURE)
    model = AdapterBertModel.from_pretrained("all-minilm-l6-v2")
    state = _state(data)
    names = [k.removeprefix("config/") for k in data.files if k.startswith("config/")]
    for name in names:
        model.add_adapter(name, config=str(data[f"config/{name}"]))
        module = model.adapters[name]
        values = from_library_state(module, state)
        variables = module.named_variables()
        assert sorted(values) == sorted(variables), "every weight comes from the library's file"
        for key, value in values.items():
            variables[key].assign(value)
        if f"mlm/{name}" in data.files:
            model.add_masked_lm_head(name, set_active=False)
            model.heads[name].assign_pretrained(masked_lm_head_from_library_state(state, name))
    inputs = {k: data[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    return model, data, inputs, names


def _real_tokens(model, inputs, dims):
    mask = inputs["attention_mask"].astype(bool)
    return model.bert(inputs)["sequence_output"].numpy()[mask][:, :dims]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dora", "vera", "prompt", "prompt_bos", "compacter",
                                  "compacterpp", "compacter_shared_w", "compacter_rules",
                                  "unipelt", "loreft", "noreft", "direft", "inv", "inv_double"])
def test_methods_match_the_adapters_library(reference, name):
    model, data, inputs, names = reference
    assert name in names
    if name == "unipelt":  # its gates average padding too in the library: unpadded rows
        inputs = {k: data[f"unpadded_{k}"] for k in ("input_ids", "attention_mask", "token_type_ids")}
    model.set_active_adapters(name)
    expected = data[f"out/{name}"]
    np.testing.assert_allclose(_real_tokens(model, inputs, expected.shape[1]), expected,
                               atol=TOLERANCE)
    if name != "unipelt":
        assert np.abs(expected - data["out/base"]).max() > 1e-2  # the adapter acts


@pytest.mark.slow
@pytest.mark.parametrize("name", ["inv", "inv_double"])
def test_invertible_adapters_masked_lm_logits_match_the_adapters_library(reference, name):
    model, data, inputs, _ = reference
    model.set_active_adapters(name)
    model.active_head = name
    mask = inputs["attention_mask"].astype(bool)
    logits = model(inputs).numpy()[mask][:, data["mlm_vocab"]]
    expected = data[f"mlm/{name}"]
    scale = np.abs(expected).max()
    np.testing.assert_allclose(logits / scale, expected / scale, atol=TOLERANCE)
    # The same encoder output decoded without the inverse differs: the head undoes the adapter.
    plain = model.heads[name](model.bert(inputs)).numpy()[mask][:, data["mlm_vocab"]]
    assert np.abs(plain - expected).max() > 1e-1
