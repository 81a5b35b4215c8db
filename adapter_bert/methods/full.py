"""Full fine-tuning: the baseline every parameter-efficient method is compared against.

It adds no weights; `base_parts` (every part of the base) tells `AdapterBertModel.train_adapter`
to make every base weight trainable, and `save_adapter` then writes the whole encoder. Unlike the adapters, it changes the
shared base, so other adapters trained on the original base no longer see the weights they were
trained with.

Example:
>>> from adapter_bert import AdapterBertModel
>>> from adapter_bert.testing import tiny_bert_config
>>> model = AdapterBertModel.from_config(tiny_bert_config())
>>> model.add_adapter("full", config="full")
>>> model.train_adapter("full")
>>> len(model.trainable_weights) == len(model.bert.weights)
True
"""

from __future__ import annotations

import dataclasses

from adapter_bert.bert.checkpoint import base_part_names
from adapter_bert.configuration import AdapterConfig
from adapter_bert.methods.base import AdapterMethod
from adapter_bert.methods.registry import register_method


@dataclasses.dataclass(eq=True)
class FullFinetuningConfig(AdapterConfig):
    """Full fine-tuning: every base weight is trained."""

    architecture = "full"


class FullFinetuningMethod(AdapterMethod):
    """No new weights; the base's own weights are trained."""

    def __init__(self, config: FullFinetuningConfig, bert_config, **kwargs):
        super().__init__(config, bert_config, **kwargs)
        self.built = True

    def placements(self):
        return []

    def base_parts(self) -> list[str]:
        return base_part_names(self.bert_config.num_hidden_layers)


register_method(FullFinetuningConfig, FullFinetuningMethod, identifiers={"full": FullFinetuningConfig()},
                presets={"full": "full"})
