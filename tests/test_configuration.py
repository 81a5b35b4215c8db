"""Config objects and the config-string grammar, with the adapters library's own test cases."""

import dataclasses
import json

import pytest

from adapter_bert import (AdapterConfig, BitFitConfig, ConfigUnion, DoubleSeqBnConfig, IA3Config,
                          LoRAConfig, MAMConfig, ParBnConfig, PrefixTuningConfig, SeqBnConfig)
from adapter_bert.methods.registry import ADAPTER_CONFIG_MAP, config_identifier


@pytest.mark.parametrize("text, expected", [
    ("double_seq_bn", DoubleSeqBnConfig()),
    ("seq_bn[reduction_factor=2, leave_out=[11]]", SeqBnConfig(reduction_factor=2, leave_out=[11])),
    ("par_bn[reduction_factor={'0': 8, '1': 8, 'default': 16}]",
     ParBnConfig(reduction_factor={"0": 8, "1": 8, "default": 16})),
    ("prefix_tuning[prefix_length=30, flat=True]", PrefixTuningConfig(prefix_length=30, flat=True)),
    ("lora[r=200,alpha=8]", LoRAConfig(r=200, alpha=8)),
    ("prefix_tuning|par_bn", ConfigUnion(PrefixTuningConfig(), ParBnConfig())),
    ("lora[attn_matrices=['k', 'v']]", LoRAConfig(attn_matrices=["k", "v"])),
    ("lora[use_gating=True]|prefix_tuning[use_gating=True]|seq_bn[use_gating=True]",
     ConfigUnion(LoRAConfig(use_gating=True), PrefixTuningConfig(use_gating=True),
                 SeqBnConfig(use_gating=True))),
    ("double_seq_bn[reduction_factor=24]", DoubleSeqBnConfig(reduction_factor=24)),
    ("scaled_par_bn", ParBnConfig(scaling="learned")),
    ("prefix_tuning_flat", PrefixTuningConfig(flat=True)),
    ("ia3", IA3Config()),
    ("mam", MAMConfig()),
    ("  seq_bn [ non_linearity = 'gelu' ] ", SeqBnConfig(non_linearity="gelu")),
])
def test_config_string_valid(text, expected):
    assert AdapterConfig.load(text) == expected


@pytest.mark.parametrize("text, error", [
    ("seq_bn[invalid_key=2]", TypeError),
    ("lora[r=8]|invalid_name", ValueError),
    ("prefix_tuning[flat=True", ValueError),
    ("double_seq_bn[reduction_factor=dict(default=1)]", ValueError),
    ("seq_bn[reduction_factor=__import__('os').getcwd()]", ValueError),  # never evaluated
    ("seq_bn[reduction_factor]", ValueError),
    ("", ValueError),
    ("mam|seq_bn", TypeError),
    ("seq_bn[reduction_factor=-4]", ValueError),
    ("seq_bn[non_linearity='softplus']", ValueError),
    ("lora[attn_matrices=['x']]", ValueError),
    ("seq_bn_inv[inv_adapter='realnvp']", ValueError),
    ("seq_bn[inv_adapter='nice']", ValueError),  # no reduction factor
])
def test_config_string_invalid(text, error):
    with pytest.raises(error):
        AdapterConfig.load(text)


def test_unknown_identifier_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown adapter config 'invalid_name'; known: .*double_seq_bn"):
        AdapterConfig.load("invalid_name")


@pytest.mark.parametrize("union", [
    [PrefixTuningConfig(), ParBnConfig()],
    [PrefixTuningConfig(), SeqBnConfig()],
    [DoubleSeqBnConfig(mh_adapter=False), DoubleSeqBnConfig(output_adapter=False, reduction_factor=2)],
    [SeqBnConfig(leave_out=[9, 10, 11], reduction_factor=2), SeqBnConfig(leave_out=list(range(9)))],
])
def test_config_union_valid_and_round_trips_through_json(union):
    config = ConfigUnion(*union)
    assert config.architecture == "union"
    again = AdapterConfig.load(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert all(isinstance(c, AdapterConfig) for c in again)


@pytest.mark.parametrize("union, error", [
    ([MAMConfig(), SeqBnConfig()], TypeError),
    ([SeqBnConfig(), SeqBnConfig()], ValueError),
    ([SeqBnConfig(), DoubleSeqBnConfig()], ValueError),
    ([LoRAConfig(), IA3Config()], ValueError),
])
def test_config_union_invalid(union, error):
    with pytest.raises(error):
        ConfigUnion(*union)


@pytest.mark.parametrize("identifier", sorted(ADAPTER_CONFIG_MAP))
def test_configs_are_immutable_but_accept_custom_attributes(identifier):
    config = ADAPTER_CONFIG_MAP[identifier]
    if not isinstance(config, ConfigUnion):
        field = dataclasses.fields(config)[0].name if dataclasses.fields(config) else None
        if field:
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(config, field, "dummy")
    copy = config.replace()
    copy.dummy_attr = "test_value"
    assert copy.dummy_attr == "test_value"
    aliases = {"houlsby": "double_seq_bn", "pfeiffer": "seq_bn", "parallel": "par_bn",
               "scaled_parallel": "scaled_par_bn", "pfeiffer+inv": "seq_bn_inv",
               "houlsby+inv": "double_seq_bn_inv"}
    assert config_identifier(config) == aliases.get(identifier, identifier)


def test_custom_config_subclass_keeps_its_class():
    @dataclasses.dataclass
    class CustomAdapterConfig(SeqBnConfig):
        custom_attr: str = "test_value"

    config = CustomAdapterConfig()
    assert config.to_dict()["custom_attr"] == "test_value"
    config = AdapterConfig.load(config, custom_attr="test_value_2")
    assert isinstance(config, CustomAdapterConfig)
    assert config["custom_attr"] == "test_value_2"


def test_json_file_config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(LoRAConfig(r=4, alpha=16).config_dict()))
    assert AdapterConfig.load(str(path)) == LoRAConfig(r=4, alpha=16)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        AdapterConfig.load(str(tmp_path / "missing.json"))
    path.write_text("{broken")
    with pytest.raises(ValueError, match="is not valid JSON"):
        AdapterConfig.load(str(path))


def test_reduction_factor_per_layer():
    config = ParBnConfig(reduction_factor={"0": 8, "1": 4, "default": 16})
    assert [config.bottleneck_size(i, 768) for i in range(3)] == [96, 192, 48]
    with pytest.raises(ValueError, match="no entry for layer 2 and no 'default'"):
        ParBnConfig(reduction_factor={"0": 8}).bottleneck_size(2, 768)


def test_library_aliases_and_loading_semantics():
    assert AdapterConfig.load("prefix_tuning[bottleneck_size=800]|parallel") == MAMConfig()
    assert AdapterConfig.load("houlsby") == DoubleSeqBnConfig()
    assert config_identifier(AdapterConfig.load("pfeiffer")) == "seq_bn"
    loaded = AdapterConfig.load("seq_bn")
    assert loaded is not ADAPTER_CONFIG_MAP["seq_bn"]  # callers never get the shared default
    assert AdapterConfig.load("seq_bn", reduction_factor=None) == SeqBnConfig()  # None: not given
    # A library dict without "architecture" is a bottleneck config.
    assert AdapterConfig.load({"mh_adapter": True, "output_adapter": False, "reduction_factor": 8,
                               "non_linearity": "relu"}).reduction_factor == 8


# --- configs saved by the adapters library (1.3.0) --------------------------------------------
# What its `to_dict()` writes for each method: every field, including the options adapter_bert does
# not implement, at their defaults. Bottleneck dicts carry no "architecture" key there.

_LIBRARY_BN_ONLY = {"init_weights_seed": None, "cross_adapter": False, "stochastic_depth": 0.0}
_LIBRARY_LORA_ONLY = {"init_weights_seed": None, "dtype": None}


def _library_dict(config):
    """`config` as the adapters library would save it: our fields plus its extra options."""
    values = config.to_dict()
    if config.architecture == "bottleneck":
        del values["architecture"]
        values.pop("task_layer_norm")  # adapter_bert's own option, at its default here
        values.update(_LIBRARY_BN_ONLY)
    elif config.architecture == "lora":
        values.update(_LIBRARY_LORA_ONLY)
    elif config.architecture == "prefix_tuning":
        values["init_weights_seed"] = None
    return values


@pytest.mark.parametrize("config", [SeqBnConfig(), DoubleSeqBnConfig(reduction_factor=24),
                                    ParBnConfig(), LoRAConfig(r=4), IA3Config(alpha=2),
                                    PrefixTuningConfig(flat=True)],
                         ids=["seq_bn", "double_seq_bn", "par_bn", "lora", "ia3", "prefix_flat"])
def test_library_dicts_with_default_only_options_load(config):
    loaded = AdapterConfig.load(_library_dict(config))
    assert {k: v for k, v in loaded.to_dict().items() if k != "architecture"} == \
        {k: v for k, v in config.to_dict().items() if k != "architecture"}
    assert type(loaded).__name__ == ("BnConfig" if config.architecture == "bottleneck"
                                     else type(config).__name__)


def test_library_mam_dict_loads_with_the_same_values():
    values = {"architecture": "union", "configs": [_library_dict(c) for c in MAMConfig()]}
    loaded = AdapterConfig.load(values)
    # The library's bottleneck dicts do not name their class, so the adapter part is a BnConfig.
    assert [type(c).__name__ for c in loaded] == ["PrefixTuningConfig", "BnConfig"]
    assert [c.to_dict() for c in loaded] == [c.to_dict() for c in MAMConfig()]


@pytest.mark.parametrize("config, changes, keys", [
    (SeqBnConfig(), {"stochastic_depth": 0.1}, ["stochastic_depth"]),
    (DoubleSeqBnConfig(), {"stochastic_depth": 0.2, "init_weights_seed": 1},
     ["init_weights_seed", "stochastic_depth"]),
    (ParBnConfig(), {"cross_adapter": True, "init_weights_seed": 8},
     ["cross_adapter", "init_weights_seed"]),
    (LoRAConfig(), {"init_weights_seed": 3}, ["init_weights_seed"]),
    (IA3Config(), {"dtype": "bfloat16"}, ["dtype"]),
    (PrefixTuningConfig(), {"init_weights_seed": 42}, ["init_weights_seed"]),
])
def test_library_only_options_off_their_default_are_a_clear_error(config, changes, keys):
    values = dict(_library_dict(config), **changes)
    with pytest.raises(ValueError) as info:
        AdapterConfig.load(values)
    message = str(info.value)
    assert f"{type(config).__name__ if config.architecture != 'bottleneck' else 'BnConfig'} " \
           f"({config.architecture})" in message
    for key in keys:
        assert f"{key}={changes[key]!r}" in message
    assert "adapters library" in message and "not implemented" in message
    assert [k for k in _LIBRARY_BN_ONLY | _LIBRARY_LORA_ONLY if f"{k}=" in message] == \
        [k for k in _LIBRARY_BN_ONLY | _LIBRARY_LORA_ONLY if k in keys]  # only the offending ones


def test_library_only_options_in_strings_and_overrides():
    assert AdapterConfig.load("seq_bn[cross_adapter=False, stochastic_depth=0.0]") == SeqBnConfig()
    assert AdapterConfig.load("lora", use_dora=False, dtype=None) == LoRAConfig()
    assert AdapterConfig.load("mam", init_weights_seed=None) == MAMConfig()
    with pytest.raises(ValueError, match=r"SeqBnConfig \(bottleneck\).*cross_adapter=True"):
        AdapterConfig.load("seq_bn[cross_adapter=True]")
    with pytest.raises(ValueError, match=r"ParBnConfig \(bottleneck\).*stochastic_depth=0.5"):
        AdapterConfig.load("mam", stochastic_depth=0.5)
    # Keys that neither library defines stay a TypeError, now naming the key and the class.
    with pytest.raises(TypeError, match=r"SeqBnConfig has no field\(s\) \['reduction'\]"):
        AdapterConfig.load({"architecture": "bottleneck", "config_class": "SeqBnConfig",
                            "reduction": 4})


# --- mam keeps its identity ---------------------------------------------------------------------

def test_mam_round_trips_with_its_identity():
    for config in (MAMConfig(), AdapterConfig.load("mam"),
                   MAMConfig(adapter=ParBnConfig(reduction_factor=4))):
        for again in (AdapterConfig.load(json.loads(json.dumps(config.config_dict()))),
                      AdapterConfig.load(config), config.replace(dropout=0.0)):
            assert type(again) is MAMConfig
            assert again == config
            assert config_identifier(again) == "mam"
            assert repr(again).startswith("MAMConfig(PrefixTuningConfig(")
    changed = AdapterConfig.load("mam", reduction_factor=4)
    assert type(changed) is MAMConfig and changed.adapter.reduction_factor == 4
    assert config_identifier(changed) == "mam"
    # A plain union keeps being one, and a union that is not MAM is named by its parts.
    plain = AdapterConfig.load(ConfigUnion(PrefixTuningConfig(), SeqBnConfig()).config_dict())
    assert type(plain) is ConfigUnion and config_identifier(plain) == "prefix_tuning|seq_bn"
    with pytest.raises(TypeError, match="MAMConfig takes a PrefixTuningConfig and a BnConfig"):
        MAMConfig(ParBnConfig(), PrefixTuningConfig())


# --- union rules of the adapters library's ConfigUnion.validate --------------------------------

@pytest.mark.parametrize("union", [
    # Same method, but one has a leave_out: the library cannot decide without the model.
    [LoRAConfig(leave_out=[0]), LoRAConfig(leave_out=[1])],
    [LoRAConfig(leave_out=[3]), IA3Config()],
    [PrefixTuningConfig(leave_out=[0]), PrefixTuningConfig(leave_out=[1], flat=True)],
    [SeqBnConfig(leave_out=[5]), SeqBnConfig()],
    # Bottleneck adapters at complementary locations.
    [DoubleSeqBnConfig(mh_adapter=False), DoubleSeqBnConfig(output_adapter=False)],
    # Different methods always combine.
    [LoRAConfig(), PrefixTuningConfig(), SeqBnConfig()],
])
def test_config_union_accepts_what_the_library_accepts(union):
    assert list(ConfigUnion(*union)) == union


@pytest.mark.parametrize("union, match", [
    ([LoRAConfig(), LoRAConfig(r=4)], "two lora configs"),
    ([LoRAConfig(), IA3Config()], "two lora configs"),
    ([LoRAConfig(attn_matrices=["q"]), LoRAConfig(selfattn_lora=False, intermediate_lora=True)],
     "two lora configs"),
    ([PrefixTuningConfig(), PrefixTuningConfig(flat=True)], "two prefix_tuning configs"),
    ([BitFitConfig(), BitFitConfig()], "two bitfit configs"),
    ([SeqBnConfig(), ParBnConfig()], "two bottleneck adapters of a union sit at the same location"),
    ([DoubleSeqBnConfig(), DoubleSeqBnConfig(output_adapter=False)],
     "two bottleneck adapters of a union sit at the same location"),
])
def test_config_union_rejects_what_the_library_rejects(union, match):
    with pytest.raises(ValueError, match=match):
        ConfigUnion(*union)
