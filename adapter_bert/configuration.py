"""Adapter configurations: the `AdapterConfig` base, `ConfigUnion`, and the config-string grammar.

Identifiers, field names and the grammar follow the adapters library: a config is a string
`name[key=value, ...]` (unions joined with `|`), a config object, a dict with an `"architecture"`
key, or the path of a JSON file holding such a dict.

This module knows no method. Each method module registers its identifiers and config classes
(through `adapter_bert.methods.registry.register_method`) into `CONFIG_TABLE`, which the grammar
and `from_dict` read; a config says itself where it acts (`location_flags`), so unions are
validated without knowing which methods exist.

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
    #: Options of the adapters library's version of this config that adapter_bert does not
    #: implement, with the library's default values. Configs saved by the library always hold
    #: them, so they are accepted (and dropped) at their default and refused otherwise.
    library_only: ClassVar[dict[str, Any]] = {}
    #: Boolean fields that each switch the config on at one location of every layer (bottleneck
    #: adapters: `mh_adapter`, `output_adapter`). Empty: the config acts as one whole, so two of
    #: its architecture never share a union once the model is known.
    location_flags: ClassVar[tuple[str, ...]] = ()
    #: Whether two configs of this architecture at complementary locations combine in a union
    #: before the model is known (the adapters library allows it for bottleneck adapters only).
    combines_at_other_locations: ClassVar[bool] = False
    #: What errors about two configs of this architecture in one union call them.
    union_label: ClassVar[str | None] = None
    #: Fields whose values tell apart the identifiers that share this class (prefix tuning's
    #: `flat`: `prefix_tuning` or `prefix_tuning_flat`), for `CONFIG_TABLE.identifier_of`.
    variant_fields: ClassVar[tuple[str, ...]] = ()
    #: Fields adapter_bert has and the adapters library's config lacks (LoRA's PEFT-style
    #: targets), each with the value the library's behaviour amounts to: a config is written in
    #: the library's format only with these at those values.
    own_fields: ClassVar[dict[str, Any]] = {}
    #: Other names a field is known by, e.g. `use_phm` for `phm_layer`.
    aliases: ClassVar[dict[str, str]] = {}

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

    def hook_locations(self) -> tuple[str, ...]:
        """The `location_flags` that are on: where in each layer this config acts."""
        return tuple(flag for flag in self.location_flags if getattr(self, flag))

    def layers(self, num_layers: int) -> list[int]:
        """The layers of a `num_layers`-layer base this config acts on (all but `leave_out`)."""
        leave_out = set(self.get("leave_out") or ())
        beyond = sorted(i for i in leave_out if i >= num_layers)
        if beyond:
            raise ValueError(f"leave_out {beyond} names layers a {num_layers}-layer model does not "
                             f"have (0..{num_layers - 1})")
        return [i for i in range(num_layers) if i not in leave_out]

    def replace(self, **changes) -> "AdapterConfig":
        """A copy with some fields changed.

        Raises:
            ValueError: an adapters library option that adapter_bert does not implement is set
                to something other than the library's default.
            TypeError: a name that is neither a field nor such an option.
        """
        return dataclasses.replace(self, **self._without_library_only(changes))

    @classmethod
    def _without_library_only(cls, values: dict[str, Any]) -> dict[str, Any]:
        """`values` less the library-only options (see `library_only`).

        Raises:
            ValueError: naming every such option that is not at the library's default.
        """
        fields = cls._field_names()
        values = {cls.aliases.get(k, k): v for k, v in values.items()}
        extra = {k: v for k, v in values.items() if k in cls.library_only and k not in fields}
        unsupported = {k: v for k, v in extra.items() if v != cls.library_only[k]}
        if unsupported:
            given = ", ".join(f"{k}={v!r}" for k, v in sorted(unsupported.items()))
            defaults = ", ".join(f"{k}={cls.library_only[k]!r}" for k in sorted(unsupported))
            raise ValueError(f"{cls.__name__} ({cls.architecture}): the adapters library option(s) "
                             f"{given} are not implemented in adapter_bert; remove them or use the "
                             f"library default(s) {defaults}")
        return {k: v for k, v in values.items() if k not in extra}

    def to_dict(self) -> dict[str, Any]:
        values = {"architecture": self.architecture}
        values.update({f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)})
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "AdapterConfig":
        """Rebuilds a config written by `to_dict` (the config class is found from the dict)."""
        values = dict(values)
        if values.get("architecture") == "union":
            return ConfigUnion.from_dict(values)
        target = cls if cls is not AdapterConfig else CONFIG_TABLE.class_for(values)
        values.pop("architecture", None)
        values.pop("config_class", None)
        values = target._without_library_only(values)
        unknown = sorted(set(values) - target._field_names())
        if unknown:
            raise TypeError(f"{target.__name__} has no field(s) {unknown}")
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

    The rules for two configs of one method follow the adapters library (see `validate_configs`).
    A union inside a union is a TypeError. Subclasses (`MAMConfig`) keep their class through
    `replace` and a save / load round trip.

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

        On its own (no `num_layers`) a union is checked as the adapters library's
        `ConfigUnion.validate` does: configs of different architectures always combine; two of one
        architecture combine when either has a `leave_out` (which layers remain is known only with
        the model), or when their class `combines_at_other_locations` and they act at disjoint
        `location_flags` (bottleneck adapters: one only after attention, the other only after the
        feed-forward sublayer).

        With the model's `num_layers` (`AdapterBertModel.add_adapter`), the union is then checked
        as the library does when it builds the adapter: two configs with `location_flags` conflict
        when both act at one location of one layer; two of an architecture without them conflict
        wherever they are (the library builds one prefix pool per adapter).
        """
        pairs = [(a, b) for i, a in enumerate(configs) for b in configs[i + 1:]
                 if a.architecture == b.architecture]
        for a, b in pairs:
            if a.get("leave_out") or b.get("leave_out"):
                continue
            if a.combines_at_other_locations:
                if all(getattr(a, flag) != getattr(b, flag) for flag in a.location_flags):
                    continue
                raise ValueError(f"two {a.union_label or a.architecture} of a union sit at the "
                                 f"same location ({' / '.join(a.location_flags)}) in every layer")
            raise ValueError(f"a union cannot hold two {a.architecture} configs")
        if num_layers is None:
            return
        for a, b in pairs:
            if not a.location_flags:
                raise ValueError(f"a union cannot hold two {a.architecture} configs")
            both = set(a.layers(num_layers)) & set(b.layers(num_layers))
            for layer in sorted(both):
                shared = [key for key in a.hook_locations() if key in b.hook_locations()]
                if shared:
                    raise ValueError(f"two {a.union_label or a.architecture} of a union sit at "
                                     f"the same location in layer {layer} ({shared[0]})")

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
        return f"{type(self).__name__}({', '.join(map(repr, self.configs))})"

    def replace(self, **changes) -> "ConfigUnion":
        """Replaces the given fields in every member that has them; the union keeps its class."""
        def known(config):
            return config._field_names() | set(config.library_only) | set(config.aliases)

        unknown = set(changes) - set().union(*(known(c) for c in self.configs))
        if unknown:
            raise TypeError(f"no config in the union has field(s) {sorted(unknown)}")
        return type(self)(*(c.replace(**{k: v for k, v in changes.items() if k in known(c)})
                            for c in self.configs))

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": "union", "configs": [c.config_dict() for c in self.configs]}

    def config_dict(self) -> dict[str, Any]:
        # The adapters library reads only "architecture" and "configs" of a union, so the class
        # name rides along harmlessly and lets a saved MAMConfig reload as one.
        return dict(self.to_dict(), config_class=type(self).__name__)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ConfigUnion":
        target = CONFIG_TABLE.union_class_for(values) if cls is ConfigUnion else cls
        return target(*(AdapterConfig.from_dict(c) for c in values["configs"]))


# --- the table the method modules fill -----------------------------------------------------------

class ConfigTable:
    """Config identifiers and classes, filled by the method modules' registrations.

    `adapter_bert.methods.registry.register_method` adds to it; the grammar (`AdapterConfig.load`)
    and `AdapterConfig.from_dict` read it. Identifiers map to default configs (`"seq_bn"` ->
    `SeqBnConfig()`); class names map to classes, so a saved `config_class` reloads as itself; and
    per architecture, `selects` predicates pick the class of a dict that names none (the adapters
    library saves configs without their class).

    Example:
    >>> CONFIG_TABLE.default("scaled_par_bn").scaling
    'learned'
    >>> CONFIG_TABLE.class_for({"architecture": "lora", "composition_mode": "scale"}).__name__
    'IA3Config'
    """

    def __init__(self):
        self.identifiers: dict[str, AdapterConfig] = {}
        self.classes: dict[str, type] = {"ConfigUnion": ConfigUnion}
        self._by_architecture: dict[str, list] = {}

    def add(self, identifiers: dict[str, AdapterConfig], classes=(), default_class=None,
            selects=None) -> None:
        """Registers identifiers, config classes and the class a bare dict of its architecture is.

        Raises:
            ValueError: an identifier or class name that another registration holds already.
        """
        for identifier in identifiers:
            if identifier in self.identifiers:
                raise ValueError(f"adapter config identifier {identifier!r} is registered already")
        for cls in classes:
            if self.classes.get(cls.__name__, cls) is not cls:
                raise ValueError(f"another config class named {cls.__name__} is registered already")
        self.identifiers.update(identifiers)
        self.classes.update({cls.__name__: cls for cls in classes})
        if default_class is not None and not issubclass(default_class, ConfigUnion):
            self._by_architecture.setdefault(default_class.architecture, []).append(
                (default_class, selects))

    def default(self, identifier: str) -> AdapterConfig:
        """The default config of an identifier; unknown names list the known ones."""
        if identifier not in self.identifiers:
            raise ValueError(f"unknown adapter config {identifier!r}; known: "
                             + ", ".join(sorted(self.identifiers)))
        return self.identifiers[identifier]

    def class_for(self, values: dict) -> type:
        """The config class a `to_dict()` dict came from (`config_class`, else its architecture)."""
        name = values.get("config_class")
        if name is not None:
            cls = self.classes.get(name)
            if cls is None or issubclass(cls, ConfigUnion):
                raise ValueError(f"unknown adapter config class {name!r}")
            return cls
        # The adapters library reads a dict without "architecture" as a bottleneck config.
        architecture = values.get("architecture") or "bottleneck"
        candidates = self._by_architecture.get(architecture)
        if not candidates:
            raise ValueError(f"unknown adapter architecture {architecture!r}; known: "
                             + ", ".join(sorted(self._by_architecture)))
        for cls, selects in candidates:
            if selects is None or selects(values):
                return cls
        raise ValueError(f"no {architecture} config class takes {values!r}")

    def union_class_for(self, values: dict) -> type:
        """The union class a union's `config_dict()` came from; a plain `ConfigUnion` without a name."""
        name = values.get("config_class") or "ConfigUnion"
        unions = sorted(n for n, c in self.classes.items() if issubclass(c, ConfigUnion))
        if name not in unions:
            raise ValueError(f"unknown adapter config union class {name!r}; known: "
                             + ", ".join(unions))
        return self.classes[name]

    def identifier_of(self, config: AdapterConfig) -> str:
        """The identifier a config is a variant of (`"double_seq_bn"`, `"mam"`, `"a|b"` for unions)."""
        for identifier, default in self.identifiers.items():
            # A union equal to a named union's members is that union, whatever class it was
            # loaded as (the adapters library saves unions without their class).
            if config == default and (type(config) is type(default)
                                      or isinstance(config, ConfigUnion)):
                return identifier
        named = [i for i, d in self.identifiers.items()
                 if isinstance(d, ConfigUnion) and type(d) is type(config)]
        if named:
            return named[0]
        if isinstance(config, ConfigUnion):
            return "|".join(self.identifier_of(c) for c in config)
        same_class = [(i, d) for i, d in self.identifiers.items() if type(d) is type(config)]
        for identifier, default in same_class:
            if all(getattr(config, f) == getattr(default, f) for f in config.variant_fields):
                return identifier
        if same_class:
            return same_class[0][0]
        return config.architecture


#: The one table of config identifiers and classes (see `ConfigTable`).
CONFIG_TABLE = ConfigTable()


# --- the config-string grammar -------------------------------------------------------------------

_SINGLE = re.compile(r"^\s*([A-Za-z_][\w+]*)\s*(?:\[(.*)\])?\s*$", re.DOTALL)
_KEY = re.compile(r"^\s*([A-Za-z_]\w*)\s*=(.*)$", re.DOTALL)
_OPEN, _CLOSE = "([{", ")]}"


def quoted(text: str, limit: int = 200) -> str:
    """`repr(text)`, cut to `limit` characters: errors quote what was typed, not 20 kB of it.

    Example:
    >>> len(quoted("x" * 300)), quoted("x" * 300)[-4:]
    (205, "'...")
    """
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def split_top_level(text: str, separator: str, what: str = "config string") -> list[str]:
    """Splits on `separator` outside brackets and quotes; unbalanced brackets are a ValueError.

    Shared by the config grammar and the setup grammar (`adapter_bert.composition`); `what`
    names the text in errors.

    Example:
    >>> split_top_level("a[x=[1, 2]], b", ",")
    ['a[x=[1, 2]]', ' b']
    """
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
                raise ValueError(f"unbalanced {char!r} in {what} {quoted(text)}")
        elif char == separator and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth or quote:
        raise ValueError(f"unbalanced brackets or quotes in {what} {quoted(text)}")
    parts.append(text[start:])
    return parts


def _parse_single(text: str) -> AdapterConfig:
    match = _SINGLE.match(text)
    if not match:
        raise ValueError(f"cannot parse adapter config {quoted(text.strip())}; expected "
                         "name[key=value, ...]")
    identifier, body = match.group(1), match.group(2)
    default = CONFIG_TABLE.default(identifier)
    kwargs = {}
    if body is not None and body.strip():
        for item in split_top_level(body, ","):
            key_value = _KEY.match(item)
            if not key_value:
                raise ValueError(f"expected key=value in {identifier}[...], got {quoted(item.strip())}")
            key, raw = key_value.group(1), key_value.group(2).strip()
            if key in kwargs:
                raise ValueError(f"{key!r} is given twice in {identifier}[...]")
            try:
                kwargs[key] = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                raise ValueError(f"value of {key!r} in {identifier}[...] is not a Python literal: "
                                 f"{quoted(raw)}") from None
    return default.replace(**kwargs)


def parse_config_string(text: str) -> AdapterConfig:
    """Parses `name[key=value, ...]` and unions `a|b|c` into config objects."""
    if not text.strip():
        raise ValueError("empty adapter config string")
    configs = [_parse_single(part) for part in split_top_level(text, "|")]
    if len(configs) == 1:
        return configs[0]
    flat = []
    for config in configs:
        if isinstance(config, ConfigUnion):
            raise TypeError(f"{config!r} is already a union and cannot be joined with '|'")
        flat.append(config)
    return ConfigUnion(*flat)
