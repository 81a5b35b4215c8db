"""The linear probe: no adapter weights and none of the base train; only the task's head does.

It is the feature-based baseline of the BERT paper: a classifier on the frozen features.

Example:
>>> from adapter_bert import AdapterBertModel
>>> from adapter_bert.testing import tiny_bert_config
>>> model = AdapterBertModel.from_config(tiny_bert_config())
>>> model.add_adapter("probe", config="linear_probe")
>>> model.add_classification_head("probe", num_labels=2)
>>> model.train_adapter("probe")
>>> [w.path for w in model.trainable_weights]   # the head alone
['head_probe/classifier/kernel', 'head_probe/classifier/bias']
"""

from __future__ import annotations

import dataclasses

from adapter_bert.configuration import AdapterConfig
from adapter_bert.methods.base import AdapterMethod
from adapter_bert.methods.registry import register_method


@dataclasses.dataclass(eq=True)
class LinearProbeConfig(AdapterConfig):
    """The linear probe: no adapter weights; only the task's head trains."""

    architecture = "linear_probe"


class LinearProbeMethod(AdapterMethod):
    """Nothing to add and nothing of the base to train: the head is the model."""

    def __init__(self, config: LinearProbeConfig, bert_config, **kwargs):
        super().__init__(config, bert_config, **kwargs)
        self.built = True

    def placements(self):
        return []


register_method(LinearProbeConfig, LinearProbeMethod,
                identifiers={"linear_probe": LinearProbeConfig()},
                presets={"linear_probe": "linear_probe"})
