"""Partial fine-tuning: the base's own top layers train, the rest stays frozen.

`partial[last_layers=N]` trains the top N encoder layers and the pooler in place and keeps the
rest of the base frozen (the survey's partial fine-tuning); its saved file holds those layers
only, so it loads onto the shared base like any adapter (but, like full fine-tuning, it changes
that base while active). `linear_probe` adds nothing and trains only the head on the frozen
features: the feature-based baseline of the BERT paper.

Example:
>>> from adapter_bert import AdapterBertModel
>>> from adapter_bert.testing import tiny_bert_config
>>> model = AdapterBertModel.from_config(tiny_bert_config())   # 2 layers
>>> model.add_adapter("top", config="partial[last_layers=1]")
>>> model.adapter_modules["top"].base_parts()
['layer_1', 'pooler']
>>> model.train_adapter("top")
>>> sorted({w.path.split("/")[1] for w in model.trainable_weights})
['layer_1', 'pooler']
"""

from __future__ import annotations

import dataclasses

from adapter_bert.configuration import AdapterConfig
from adapter_bert.methods.base import AdapterMethod
from adapter_bert.methods.registry import register_method


@dataclasses.dataclass(eq=True)
class PartialFinetuningConfig(AdapterConfig):
    """Partial fine-tuning.

    Args:
        last_layers: how many of the top encoder layers train (with the pooler).
    """

    last_layers: int = 2

    architecture = "partial"

    def validate(self):
        value = self.last_layers
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"last_layers must be a positive integer, got {value!r}")


class PartialFinetuningMethod(AdapterMethod):
    """No new weights; the base's top `last_layers` layers and pooler are trained."""

    def __init__(self, config: PartialFinetuningConfig, bert_config, **kwargs):
        super().__init__(config, bert_config, **kwargs)
        layers = bert_config.num_hidden_layers
        if config.last_layers > layers:
            raise ValueError(f"partial[last_layers={config.last_layers}] on a {layers}-layer model")
        self.built = True

    def placements(self):
        return []

    def base_parts(self) -> list[str]:
        layers = self.bert_config.num_hidden_layers
        return [f"layer_{i}" for i in range(layers - self.config.last_layers, layers)] + ["pooler"]


register_method(PartialFinetuningConfig, PartialFinetuningMethod,
                identifiers={"partial": PartialFinetuningConfig()},
                presets={"partial": "partial"})
