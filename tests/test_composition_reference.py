"""Composition blocks against the real adapters library (1.3.0) on the packaged MiniLM.

`tests/fixtures/make_composition_reference.py` ran the library once, in a throwaway virtualenv,
and stored its adapters' weights and last hidden states (real tokens, first `DIMS` units); here
the same weights are loaded by name and our blocks must give the same numbers within 1e-4.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from adapter_bert import AdapterBertModel, Average, BatchSplit, Fuse, Parallel, Split, Stack
from adapter_bert.formats.adapters_library import from_library_state, fusion_from_library_state
from adapter_bert.fusion import AdapterFusionConfig

FIXTURE = Path(__file__).parent / "fixtures" / "composition_reference.npz"
TOLERANCE = 1e-4

# The library's `Average` divides the weighted sum once more by the number of members (see
# adapter_bert.composition), so its Average(weights=w) is ours with weights w / n, unnormalised.
CASES = {
    "single_a": "a",
    "stack_ab": Stack("a", "b"),
    "parallel_ab": Parallel("a", "b"),
    "batch_split_ab": BatchSplit("a", "b", batch_sizes=[1, 3]),
    "average_ab": Average("a", "b", weights=[0.35, 0.15], normalize_weights=False),
    "split_ab": Split("a", "b", splits=[5, 7]),
    "stack_cd": Stack("c", "d"),
    "parallel_cd": Parallel("c", "d"),
    "stack_pq": Stack("p", "q"),
    "average_pq": Average("p", "q", weights=[0.25, 0.25], normalize_weights=False),
    "stack_a_parallel_cd": Stack("a", Parallel("c", "d")),
    "stack_la_lb": Stack("la", "lb"),
    "stack_la_lc": Stack("la", "lc"),
    "parallel_la_lb": Parallel("la", "lb"),
    "batch_split_la_lb": BatchSplit("la", "lb", batch_sizes=[2, 2]),
    "average_la_lb": Average("la", "lb", weights=[0.3, 0.2], normalize_weights=False),
    "stack_ia_ib": Stack("ia", "ib"),
    "stack_pa_pb": Stack("pa", "pb"),
    "parallel_pa_pb": Parallel("pa", "pb"),
    "batch_split_pa_pb": BatchSplit("pa", "pb", batch_sizes=[3, 1]),
    "skip_stack_ab": Stack("a", "b"),
}
SKIP_LAYERS = {"skip_stack_ab": [0, 1, 2]}
FUSIONS = {"fuse_ab": Fuse("a", "b", name="fuse_ab"),
           "fuse_ab_static": Fuse("a", "b", name="fuse_ab_static"),
           "fuse_ab_variant": Fuse("a", "b", name="fuse_ab_variant"),
           "fuse_cd": Fuse("c", "d", name="fuse_cd")}
AVERAGES = {
    "avg_lora_linear": (["la", "la2"], [0.6, 0.4], "linear", None),
    "avg_lora_negate_b": (["la", "la2"], [1.0, -0.5], "lora_linear_only_negate_b", None),
    "avg_lora_svd": (["la", "la2"], [0.5, 0.5], "lora_delta_w_svd", 2),
    "avg_bn_linear": (["a", "a2"], [0.3, 0.7], "linear", None),
}


@pytest.fixture(scope="module")
def reference():
    data = np.load(FIXTURE)
    model = AdapterBertModel.from_pretrained("all-minilm-l6-v2")
    state = {k.removeprefix("weight/"): data[k].astype(np.float32)
             for k in data.files if k.startswith("weight/")}
    for key in data.files:
        if key.startswith("config/"):
            name = key.removeprefix("config/")
            model.add_adapter(name, config=str(data[key]))
            module = model.adapters[name]
            _assign(module, from_library_state(module, state))
    for key in data.files:  # fusion kernels are stored as factors (see the fixture script)
        if key.startswith("factors/") and key.endswith("/a"):
            name = key.removeprefix("factors/").removesuffix("/a")
            state[name] = _fusion_kernel(name, data[key], data[f"factors/{name}/b"])
    for key in data.files:
        if key.startswith("fusion/"):
            name = key.removeprefix("fusion/")
            spec = json.loads(str(data[key]))
            config = spec["config"] if isinstance(spec["config"], str) else \
                AdapterFusionConfig.load("dynamic", **spec["config"])
            model.add_adapter_fusion(Fuse(*spec["adapters"], name=name), config=config)
            fusion = model.fusions[name]
            _assign(fusion, fusion_from_library_state(fusion, state))
    inputs = {k: data[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    return model, data, inputs


def _fusion_kernel(key, a, b):
    value = a.astype(np.float64) @ b.astype(np.float64)
    if key.endswith("value.weight"):
        value = value + np.eye(value.shape[0])
    return value.astype(np.float32)


def _assign(module, values):
    variables = module.named_variables()
    assert sorted(values) == sorted(variables), "every weight comes from the library's file"
    for key, value in values.items():
        variables[key].assign(value)


def _real_tokens(model, inputs, dims):
    out = model.bert(inputs)
    outs = out if isinstance(out, list) else [out]
    mask = inputs["attention_mask"].astype(bool)
    return np.concatenate([o["sequence_output"].numpy()[mask][:, :dims] for o in outs])


@pytest.mark.slow
def test_the_base_matches(reference):
    model, data, inputs = reference
    model.set_active_adapters(None)
    expected = data["out/base"]
    np.testing.assert_allclose(_real_tokens(model, inputs, expected.shape[1]), expected,
                               atol=TOLERANCE)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_blocks_match_the_adapters_library(reference, case):
    model, data, inputs = reference
    model.set_active_adapters(CASES[case], skip_layers=SKIP_LAYERS.get(case))
    expected = data[f"out/{case}"]
    ours = _real_tokens(model, inputs, expected.shape[1])
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, atol=TOLERANCE)
    # Each case changes the output: the adapters act.
    assert np.abs(expected[:len(data["out/base"])] - data["out/base"]).max() > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(AVERAGES))
def test_average_adapter_matches_the_adapters_library(reference, name):
    model, data, inputs = reference
    sources, weights, strategy, rank = AVERAGES[name]
    model.average_adapter(name, sources, weights=weights, combine_strategy=strategy,
                          svd_rank=rank, overwrite_ok=True)
    model.set_active_adapters(name)
    expected = data[f"out/{name}"]
    np.testing.assert_allclose(_real_tokens(model, inputs, expected.shape[1]), expected,
                               atol=TOLERANCE)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_adapter_fusion_matches_the_adapters_library(reference, name):
    model, data, inputs = reference
    model.set_active_adapters(FUSIONS[name])
    expected = data[f"out/{name}"]
    np.testing.assert_allclose(_real_tokens(model, inputs, expected.shape[1]), expected,
                               atol=TOLERANCE)
    assert np.abs(expected - data["out/stack_ab"]).max() > 1e-2
