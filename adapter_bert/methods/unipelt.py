"""UniPELT (Mao et al. 2022): prefix tuning, a Pfeiffer adapter and LoRA in one adapter, each
behind a learned gate.

A `ConfigUnion`, as in the adapters library: `PrefixTuningConfig(prefix_length=10)`,
`SeqBnConfig(reduction_factor=16)` and `LoRAConfig(r=8, alpha=2)`, each with `use_gating=True`
(11,083,376 weights on bert-base, the gates included). Each gate is `sigmoid(Dense(x))` averaged
over an example's tokens: on the attention input for the prefixes (scaling its keys and values),
on the adapter input for the bottleneck (scaling its output), and on each adapted projection's
input for LoRA (replacing `alpha / r`). The library averages over every position, padding
included; here over the real tokens, which is the same on unpadded rows and does not depend on
how much padding a batch carries. It stays a `UniPELTConfig` (named `unipelt`) through
`replace` and a save / load round trip.

Example:
>>> [type(c).__name__ for c in UniPELTConfig()]
['PrefixTuningConfig', 'SeqBnConfig', 'LoRAConfig']
>>> all(c.use_gating for c in UniPELTConfig())
True
"""

from __future__ import annotations

from adapter_bert.configuration import ConfigUnion
from adapter_bert.methods.bottleneck import BnConfig, SeqBnConfig
from adapter_bert.methods.lora import LoRAConfig
from adapter_bert.methods.prefix import PrefixTuningConfig
from adapter_bert.methods.registry import register_method


class UniPELTConfig(ConfigUnion):
    """`unipelt`: gated prefix tuning (length 10), Pfeiffer adapter (factor 16) and LoRA (r 8,
    alpha 2), unless given."""

    def __init__(self, prefix_tuning: PrefixTuningConfig | None = None,
                 adapter: BnConfig | None = None, lora: LoRAConfig | None = None):
        parts = (prefix_tuning or PrefixTuningConfig(prefix_length=10),
                 adapter or SeqBnConfig(reduction_factor=16), lora or LoRAConfig(r=8, alpha=2))
        for part, kind in zip(parts, (PrefixTuningConfig, BnConfig, LoRAConfig)):
            if not isinstance(part, kind):
                raise TypeError(f"UniPELTConfig takes a PrefixTuningConfig, a BnConfig and a "
                                f"LoRAConfig, got {', '.join(type(p).__name__ for p in parts)}")
        super().__init__(*(p.replace(use_gating=True) for p in parts))


register_method(UniPELTConfig, identifiers={"unipelt": UniPELTConfig()})
