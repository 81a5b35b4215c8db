"""Mix-and-Match adapters (He et al. 2021): prefix tuning (bottleneck 800) plus a parallel adapter.

A `ConfigUnion`, as in the adapters library; both parts are the methods of `prefix.py` and
`bottleneck.py` attached together. It stays a `MAMConfig` (named `mam`) through `replace` and a
save / load round trip.

Example:
>>> [type(c).__name__ for c in MAMConfig()]
['PrefixTuningConfig', 'ParBnConfig']
>>> MAMConfig().prefix_tuning.bottleneck_size
800
"""

from __future__ import annotations

from adapter_bert.configuration import ConfigUnion
from adapter_bert.methods.bottleneck import BnConfig, ParBnConfig
from adapter_bert.methods.prefix import PrefixTuningConfig
from adapter_bert.methods.registry import register_method


class MAMConfig(ConfigUnion):
    """`mam`: `PrefixTuningConfig(bottleneck_size=800)` + `ParBnConfig()` unless given."""

    def __init__(self, prefix_tuning: PrefixTuningConfig | None = None,
                 adapter: BnConfig | None = None):
        prefix_tuning = prefix_tuning or PrefixTuningConfig(bottleneck_size=800)
        adapter = adapter or ParBnConfig()
        if not (isinstance(prefix_tuning, PrefixTuningConfig) and isinstance(adapter, BnConfig)):
            raise TypeError("MAMConfig takes a PrefixTuningConfig and a BnConfig, got "
                            f"{type(prefix_tuning).__name__} and {type(adapter).__name__}")
        super().__init__(prefix_tuning, adapter)

    @property
    def prefix_tuning(self) -> PrefixTuningConfig:
        return self.configs[0]

    @property
    def adapter(self) -> BnConfig:
        return self.configs[1]


register_method(MAMConfig, identifiers={"mam": MAMConfig()})
