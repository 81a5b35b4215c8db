"""Config objects and the config-string grammar, with the adapters library's own test cases."""

import dataclasses
import json

import pytest

from adapter_bert import (AdapterConfig, ConfigUnion, DoubleSeqBnConfig, IA3Config, LoRAConfig,
                          MAMConfig, ParBnConfig, PrefixTuningConfig, SeqBnConfig)
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
    ("compacter", ValueError),
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
               "scaled_parallel": "scaled_par_bn"}
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
