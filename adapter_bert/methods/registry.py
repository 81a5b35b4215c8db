"""The table of methods, filled by one `register_method` call at the end of each method module.

A registration names a config class, the `AdapterMethod` class that builds its weights, the
identifiers of the adapters library's table that are defaults of it (`"seq_bn"` -> `SeqBnConfig()`),
and optionally the training command's `--method` presets it provides. Identifiers and config classes
go to `adapter_bert.configuration.CONFIG_TABLE` (which the config grammar reads); the method classes
and presets stay here. `adapter_bert.methods` imports every module of its package, so every method
is registered once anything of the package is imported. Adding a method means one module with
one `register_method` call.

Example:
>>> from adapter_bert.methods.registry import ADAPTER_CONFIG_MAP, method_class_for
>>> ADAPTER_CONFIG_MAP["scaled_par_bn"].scaling
'learned'
>>> method_class_for(ADAPTER_CONFIG_MAP["ia3"]).__name__
'IA3Method'
>>> preset_config("lora", hidden_size=768)
'lora'
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Union

from adapter_bert.configuration import CONFIG_TABLE, AdapterConfig, ConfigUnion

#: Identifier -> default config, for every registered identifier (read-only use).
ADAPTER_CONFIG_MAP = CONFIG_TABLE.identifiers

# A preset is a config string, or a function (hidden_size, bottleneck_size, non_linearity) -> one.
Preset = Union[str, Callable[[int, "int | None", "str | None"], str]]


@dataclasses.dataclass(frozen=True)
class MethodEntry:
    """One registration: configs of `config_class` (for which `selects` holds) build `method_class`."""

    config_class: type
    method_class: type | None
    selects: Callable[[dict], bool] | None = None

    def builds(self, config: AdapterConfig) -> bool:
        # Methods sharing an architecture (LoRA, (IA)^3, DoRA, VeRA are all `lora`, as in the
        # adapters library) are told apart by their predicates, whatever the config's class.
        if self.selects is not None:
            return (config.architecture == self.config_class.architecture
                    and self.selects(config.to_dict()))
        return isinstance(config, self.config_class)


_METHODS: list[MethodEntry] = []
_PRESETS: dict[str, Preset] = {}


def register_method(config_class: type, method_class: type | None = None,
                    identifiers: dict[str, AdapterConfig] | None = None, config_classes=(),
                    presets: dict[str, Preset] | None = None,
                    selects: Callable[[dict], bool] | None = None,
                    bare_dicts: bool = True) -> None:
    """Registers a method: the one call each method module makes.

    Args:
        config_class: the method's config class; a dict of its `architecture` that names no
            class loads as it (when `selects` holds for the dict).
        method_class: the `AdapterMethod` subclass built for such configs (None for a named
            `ConfigUnion` such as MAM, whose members build their own methods).
        identifiers: config-string names and their default configs.
        config_classes: further config classes of the method (subclasses with other defaults),
            so saved configs reload as their class.
        presets: `--method` names of the training command and their configs.
        selects: a predicate on a config's `to_dict()`, for architectures shared by two methods
            (LoRA and (IA)^3 are both `lora`, told apart by `composition_mode`).
        bare_dicts: whether a dict of the architecture that names no class loads as
            `config_class` (False for variants such as Compacter's, whose dicts the base
            class loads).

    Raises:
        ValueError: an identifier, class name or preset that is registered already.
    """
    for name in presets or {}:
        if name in _PRESETS:
            raise ValueError(f"--method preset {name!r} is registered already")
    CONFIG_TABLE.add(identifiers or {}, (config_class, *config_classes),
                     default_class=config_class if bare_dicts else None, selects=selects)
    if method_class is not None:
        _METHODS.append(MethodEntry(config_class, method_class, selects))
    _PRESETS.update(presets or {})


def method_class_for(config: AdapterConfig) -> type:
    """The `AdapterMethod` subclass that builds the weights of a (non-union) config.

    The most specific registration wins: a subclass's entry before its base class's.
    """
    if isinstance(config, ConfigUnion):
        raise TypeError("a ConfigUnion has one method per member config")
    entries = [e for e in _METHODS if e.builds(config)]
    if not entries:
        raise ValueError(f"no method implements {type(config).__name__} "
                         f"(architecture {config.architecture!r})")
    return max(entries, key=lambda e: len(e.config_class.__mro__)).method_class


def config_identifier(config: AdapterConfig) -> str:
    """The table identifier a config is a variant of (`"double_seq_bn"`, `"mam"`, `"a|b"` for unions).

    Example:
    >>> config_identifier(ADAPTER_CONFIG_MAP["houlsby"].replace(reduction_factor=4))
    'double_seq_bn'
    """
    return CONFIG_TABLE.identifier_of(config)


def preset_names() -> tuple[str, ...]:
    """The training command's `--method` presets, in registration order."""
    return tuple(_PRESETS)


def sized_presets() -> tuple[str, ...]:
    """The presets that `--bottleneck_size` and `--non_linearity` resize (the others are fixed
    config strings)."""
    return tuple(name for name, preset in _PRESETS.items() if callable(preset))


def preset_config(method: str, hidden_size: int, bottleneck_size: int | None = None,
                  non_linearity: str | None = None) -> str:
    """The config string of preset `method` for a base of width `hidden_size`."""
    if method not in _PRESETS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(_PRESETS)}")
    preset = _PRESETS[method]
    return preset if isinstance(preset, str) else preset(hidden_size, bottleneck_size, non_linearity)
