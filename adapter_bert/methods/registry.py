"""The table of methods: config identifiers -> default configs, and configs -> method layers.

Identifiers are the adapters library's (seed `002`), plus the baselines `bitfit` and `full`.
Adding a method means one module in this package and one line in each table below.

Example:
>>> from adapter_bert.methods.registry import ADAPTER_CONFIG_MAP
>>> ADAPTER_CONFIG_MAP["scaled_par_bn"].scaling
'learned'
"""

from __future__ import annotations

from adapter_bert.configuration import AdapterConfig, ConfigUnion
from adapter_bert.methods.bitfit import BitFitConfig, BitFitMethod
from adapter_bert.methods.bottleneck import (BnConfig, BottleneckMethod, DoubleSeqBnConfig,
                                             ParBnConfig, SeqBnConfig)
from adapter_bert.methods.full import FullFinetuningConfig, FullFinetuningMethod
from adapter_bert.methods.ia3 import IA3Config, IA3Method
from adapter_bert.methods.lora import LoRAConfig, LoRAMethod
from adapter_bert.methods.mam import MAMConfig
from adapter_bert.methods.prefix import PrefixTuningConfig, PrefixTuningMethod

ADAPTER_CONFIG_MAP: dict[str, AdapterConfig] = {
    "seq_bn": SeqBnConfig(),
    "double_seq_bn": DoubleSeqBnConfig(),
    "par_bn": ParBnConfig(),
    "scaled_par_bn": ParBnConfig(scaling="learned"),
    "prefix_tuning": PrefixTuningConfig(),
    "prefix_tuning_flat": PrefixTuningConfig(flat=True),
    "lora": LoRAConfig(),
    "ia3": IA3Config(),
    "mam": MAMConfig(),
    "bitfit": BitFitConfig(),
    "full": FullFinetuningConfig(),
    # The adapters library's older names, still accepted there (seed 002 uses "parallel").
    "pfeiffer": SeqBnConfig(),
    "houlsby": DoubleSeqBnConfig(),
    "parallel": ParBnConfig(),
    "scaled_parallel": ParBnConfig(scaling="learned"),
}

# Identifiers of the adapters library's table that this package does not implement yet; they get
# their own error so users know the name is right and the method is missing.
NOT_YET_IMPLEMENTED = ("seq_bn_inv", "double_seq_bn_inv", "compacter", "compacter++", "unipelt",
                       "prompt_tuning")

CONFIG_CLASSES = {cls.__name__: cls for cls in (
    BnConfig, SeqBnConfig, DoubleSeqBnConfig, ParBnConfig, PrefixTuningConfig, LoRAConfig,
    IA3Config, BitFitConfig, FullFinetuningConfig)}
_DEFAULT_CLASS = {"bottleneck": BnConfig, "prefix_tuning": PrefixTuningConfig, "lora": LoRAConfig,
                  "bitfit": BitFitConfig, "full": FullFinetuningConfig}
UNION_CLASSES = {cls.__name__: cls for cls in (ConfigUnion, MAMConfig)}


def config_class_for(values: dict) -> type:
    """The config class a `to_dict()` dict came from (`config_class`, else its architecture)."""
    name = values.get("config_class")
    if name is not None:
        if name not in CONFIG_CLASSES:
            raise ValueError(f"unknown adapter config class {name!r}")
        return CONFIG_CLASSES[name]
    # The adapters library reads a dict without "architecture" as a bottleneck config.
    architecture = values.get("architecture") or "bottleneck"
    if architecture not in _DEFAULT_CLASS:
        raise ValueError(f"unknown adapter architecture {architecture!r}; known: "
                         + ", ".join(sorted(_DEFAULT_CLASS)))
    if architecture == "lora" and values.get("composition_mode") == "scale":
        return IA3Config
    return _DEFAULT_CLASS[architecture]


def union_class_for(values: dict) -> type:
    """The union class a union's `config_dict()` came from; a plain `ConfigUnion` without a name.

    Example:
    >>> union_class_for({"architecture": "union", "configs": [], "config_class": "MAMConfig"})
    <class 'adapter_bert.methods.mam.MAMConfig'>
    """
    name = values.get("config_class") or "ConfigUnion"
    if name not in UNION_CLASSES:
        raise ValueError(f"unknown adapter config union class {name!r}; known: "
                         + ", ".join(sorted(UNION_CLASSES)))
    return UNION_CLASSES[name]


def method_class_for(config: AdapterConfig) -> type:
    """The `AdapterMethod` subclass that builds the weights of a (non-union) config."""
    if isinstance(config, ConfigUnion):
        raise TypeError("a ConfigUnion has one method per member config")
    if config.architecture == "bottleneck":
        return BottleneckMethod
    if config.architecture == "lora":
        return IA3Method if config.composition_mode == "scale" else LoRAMethod
    if config.architecture == "prefix_tuning":
        return PrefixTuningMethod
    if config.architecture == "bitfit":
        return BitFitMethod
    if config.architecture == "full":
        return FullFinetuningMethod
    raise ValueError(f"no method implements architecture {config.architecture!r}")


def config_identifier(config: AdapterConfig) -> str:
    """The table identifier a config is a variant of (`"double_seq_bn"`, `"mam"`, `"a|b"` for unions).

    Example:
    >>> config_identifier(ParBnConfig(scaling="learned")), config_identifier(LoRAConfig(r=4))
    ('scaled_par_bn', 'lora')
    """
    for identifier, default in ADAPTER_CONFIG_MAP.items():
        # A union equal to MAM's members is MAM, whatever class it was loaded as (the adapters
        # library saves unions without their class).
        if config == default and (type(config) is type(default) or isinstance(config, ConfigUnion)):
            return identifier
    if isinstance(config, MAMConfig):
        return "mam"
    if isinstance(config, ConfigUnion):
        return "|".join(config_identifier(c) for c in config)
    if isinstance(config, PrefixTuningConfig) and config.flat:
        return "prefix_tuning_flat"
    for identifier, default in ADAPTER_CONFIG_MAP.items():
        if type(config) is type(default):
            return identifier
    return config.architecture
