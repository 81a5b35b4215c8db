"""Adapter configurations: the `AdapterConfig` base, `ConfigUnion`, and the config-string grammar.

Identifiers, field names and the grammar follow the adapters library (seed `002`): a config is a
string `name[key=value, ...]` (unions joined with `|`), a config object, a dict with an
`"architecture"` key, or the path of a JSON file holding such a dict.

Values inside `[...]` are Python literals read with `ast.literal_eval`, so a config string can never
run code: `seq_bn[reduction_factor=dict(default=1)]` is a ValueError, not a call.

Example:
>>> from adapter_bert.configuration import AdapterConfig
>>> config = AdapterConfig.load("seq_bn[reduction_factor=2, leave_out=[11]]")
>>> type(config).__name__, config.reduction_factor, config.leave_out
('SeqBnConfig', 2, [11])
>>> AdapterConfig.load("prefix_tuning|par_bn").architecture
'union'
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import json
import os
import re
from typing import Any, ClassVar


class AdapterConfig:
    """Base of every method's configuration.

    Subclasses are dataclasses. Once built, their fields are read-only (change them with
    `replace`), as in the adapters library; attributes that are not fields may still be added.
    A config can be indexed like a mapping: `config["reduction_factor"]`.
    """

    architecture: ClassVar[str | None] = None

    def __post_init__(self):
        object.__setattr__(self, "_frozen", True)
        self.validate()

    def validate(self) -> None:
        """Checks field values; subclasses raise ValueError with a one-line message."""

    def __setattr__(self, name, value):
        if getattr(self, "_frozen", False) and name in self._field_names():
            raise dataclasses.FrozenInstanceError(
                f"cannot assign to field {name!r}: adapter configs are immutable, use replace()")
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        if name in self._field_names():
            raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")
        object.__delattr__(self, name)

    @classmethod
    def _field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()

    def __getitem__(self, key):
        return getattr(self, key)

    def __contains__(self, key):
        return hasattr(self, key)

    def get(self, key, default=None):
        return getattr(self, key, default)

    def replace(self, **changes) -> "AdapterConfig":
        """A copy with some fields changed (unknown names are a TypeError)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        values = {"architecture": self.architecture}
        values.update({f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)})
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "AdapterConfig":
        """Rebuilds a config written by `to_dict` (the config class is found from the dict)."""
        from adapter_bert.methods.registry import config_class_for

        values = dict(values)
        if values.get("architecture") == "union":
            return ConfigUnion.from_dict(values)
        target = cls if cls not in (AdapterConfig,) else config_class_for(values)
        values.pop("architecture", None)
        values.pop("config_class", None)
        return target(**values)

    @staticmethod
    def load(config: "str | dict | AdapterConfig | os.PathLike", **kwargs) -> "AdapterConfig":
        """Turns any accepted form of config into a config object; `kwargs` override fields.

        Args:
            config: a config string (`"double_seq_bn[reduction_factor=24]"`), an `AdapterConfig`,
                a dict with `"architecture"` (and `"config_class"`), or a path to a JSON file.
            **kwargs: fields to replace on the loaded config.
        """
        if isinstance(config, AdapterConfig):
            loaded = config
        elif isinstance(config, dict):
            loaded = AdapterConfig.from_dict(config)
        elif isinstance(config, (str, os.PathLike)):
            text = os.fspath(config)
            if text.endswith(".json") or os.path.isfile(text):
                loaded = _load_json_config(text)
            else:
                loaded = parse_config_string(text)
        else:
            raise TypeError(f"cannot make an adapter config from {type(config).__name__}")
        # None means "not given" (as in the adapters library, for command-line flags); the copy
        # keeps callers from changing the shared defaults of the registry.
        return loaded.replace(**{k: v for k, v in kwargs.items() if v is not None})

    def config_dict(self) -> dict[str, Any]:
        """`to_dict` plus the class name, so a saved config reloads as the same class."""
        return dict(self.to_dict(), config_class=type(self).__name__)


def _load_json_config(path: str) -> AdapterConfig:
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"adapter config file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"adapter config file {path} is not valid JSON: {e}") from None
    if isinstance(values, dict) and "config" in values and "architecture" not in values:
        values = values["config"]  # an adapter_config.json written by save_adapter
    if not isinstance(values, dict) or "architecture" not in values:
        raise ValueError(f"adapter config file {path} has no 'architecture' key")
    return AdapterConfig.from_dict(values)


class ConfigUnion(AdapterConfig):
    """Several method configs used together by one adapter, e.g. prefix tuning plus a parallel adapter.

    Two configs conflict (ValueError) when they are the same non-bottleneck method, or bottleneck
    adapters at the same location (`mh_adapter` / `output_adapter`) in a shared layer. A union
    inside a union is a TypeError.

    Example:
    >>> from adapter_bert.methods.prefix import PrefixTuningConfig
    >>> from adapter_bert.methods.bottleneck import ParBnConfig
    >>> union = ConfigUnion(PrefixTuningConfig(bottleneck_size=800), ParBnConfig())
    >>> [c.architecture for c in union]
    ['prefix_tuning', 'bottleneck']
    """

    architecture: ClassVar[str] = "union"

    def __init__(self, *configs: AdapterConfig):
        for config in configs:
            if isinstance(config, ConfigUnion):
                raise TypeError("a ConfigUnion cannot contain another ConfigUnion")
            if not isinstance(config, AdapterConfig):
                raise TypeError(f"ConfigUnion takes AdapterConfig objects, got {type(config).__name__}")
        if not configs:
            raise ValueError("a ConfigUnion needs at least one config")
        object.__setattr__(self, "configs", tuple(configs))
        self.validate_configs(self.configs)
        object.__setattr__(self, "_frozen", True)

    @staticmethod
    def validate_configs(configs, num_layers: int | None = None) -> None:
        """Raises ValueError when two configs would act on the same place.

        Without `num_layers`, bottleneck adapters count as disjoint when their `leave_out` lists
        together cover layers 0..max(leave_out); `AdapterBertModel.add_adapter` checks again with
        the real number of layers.
        """
        for i, a in enumerate(configs):
            for b in configs[i + 1:]:
                if a.architecture != b.architecture:
                    continue
                if a.architecture != "bottleneck":
                    raise ValueError(f"a union cannot hold two {a.architecture} configs")
                same_place = (a.mh_adapter and b.mh_adapter) or (a.output_adapter and b.output_adapter)
                if not same_place:
                    continue
                left_out = set(a.leave_out) | set(b.leave_out)
                layers = range(num_layers) if num_layers is not None else range(max(left_out, default=-1) + 1)
                shared = [n for n in layers if n not in a.leave_out and n not in b.leave_out]
                if shared or (num_layers is None and not left_out):
                    raise ValueError("two bottleneck adapters of a union sit at the same location "
                                     f"in layer {shared[0] if shared else 0}")

    def __iter__(self):
        return iter(self.configs)

    def __len__(self):
        return len(self.configs)

    def __getitem__(self, key):
        if isinstance(key, int):
            return self.configs[key]
        return super().__getitem__(key)

    def __eq__(self, other):
        return isinstance(other, ConfigUnion) and self.configs == other.configs

    def __repr__(self):
        return f"ConfigUnion({', '.join(map(repr, self.configs))})"

    def replace(self, **changes) -> "ConfigUnion":
        """Replaces the given fields in every member config that has them."""
        unknown = set(changes) - set().union(*(c._field_names() for c in self.configs))
        if unknown:
            raise TypeError(f"no config in the union has field(s) {sorted(unknown)}")
        return ConfigUnion(*(c.replace(**{k: v for k, v in changes.items() if k in c._field_names()})
                             for c in self.configs))

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": "union", "configs": [c.config_dict() for c in self.configs]}

    def config_dict(self) -> dict[str, Any]:
        return self.to_dict()

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ConfigUnion":
        return cls(*(AdapterConfig.from_dict(c) for c in values["configs"]))


# --- the config-string grammar -------------------------------------------------------------------

_SINGLE = re.compile(r"^\s*([A-Za-z_][\w+]*)\s*(?:\[(.*)\])?\s*$", re.DOTALL)
_KEY = re.compile(r"^\s*([A-Za-z_]\w*)\s*=(.*)$", re.DOTALL)
_OPEN, _CLOSE = "([{", ")]}"


def _split_top_level(text: str, separator: str) -> list[str]:
    """Splits on `separator` outside brackets and quotes; unbalanced brackets are a ValueError."""
    parts, depth, quote, start = [], 0, None, 0
    for i, char in enumerate(text):
        if quote:
            if char == quote and text[i - 1] != "\\":
                quote = None
        elif char in "'\"":
            quote = char
        elif char in _OPEN:
            depth += 1
        elif char in _CLOSE:
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced {char!r} in config string {text!r}")
        elif char == separator and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth or quote:
        raise ValueError(f"unbalanced brackets or quotes in config string {text!r}")
    parts.append(text[start:])
    return parts


def _parse_single(text: str) -> AdapterConfig:
    from adapter_bert.methods.registry import ADAPTER_CONFIG_MAP, NOT_YET_IMPLEMENTED

    match = _SINGLE.match(text)
    if not match:
        raise ValueError(f"cannot parse adapter config {text.strip()!r}; expected name[key=value, ...]")
    identifier, body = match.group(1), match.group(2)
    if identifier in NOT_YET_IMPLEMENTED:
        raise ValueError(f"adapter method {identifier!r} is not implemented in adapter_bert yet")
    if identifier not in ADAPTER_CONFIG_MAP:
        raise ValueError(f"unknown adapter config {identifier!r}; known: "
                         + ", ".join(sorted(ADAPTER_CONFIG_MAP)))
    kwargs = {}
    if body is not None and body.strip():
        for item in _split_top_level(body, ","):
            key_value = _KEY.match(item)
            if not key_value:
                raise ValueError(f"expected key=value in {identifier}[...], got {item.strip()!r}")
            key, raw = key_value.group(1), key_value.group(2).strip()
            try:
                kwargs[key] = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                raise ValueError(f"value of {key!r} in {identifier}[...] is not a Python literal: "
                                 f"{raw!r}") from None
    return ADAPTER_CONFIG_MAP[identifier].replace(**kwargs)


def parse_config_string(text: str) -> AdapterConfig:
    """Parses `name[key=value, ...]` and unions `a|b|c` into config objects."""
    if not text.strip():
        raise ValueError("empty adapter config string")
    configs = [_parse_single(part) for part in _split_top_level(text, "|")]
    if len(configs) == 1:
        return configs[0]
    flat = []
    for config in configs:
        if isinstance(config, ConfigUnion):
            raise TypeError(f"{config!r} is already a union and cannot be joined with '|'")
        flat.append(config)
    return ConfigUnion(*flat)
