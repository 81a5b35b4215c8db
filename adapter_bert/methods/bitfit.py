"""BitFit (Ben Zaken et al. 2022): train only the bias terms of the pretrained model.

Training a bias `b` is the same as training an offset `d` (initialised to zero) added to the frozen
`b`: same function, same gradients. This module trains those offsets, so BitFit is an adapter like
any other: the shared base stays bit-identical, each task's biases are a small separate file, and
switching tasks forgets nothing. The offsets cover every Dense bias of the encoder layers (query,
key, value, attention output, intermediate, output) and the pooler, and the beta of every
LayerNorm (embeddings, attention, output). Differences from training `b` in place: AdamW's weight
decay pulls the offset, not the bias, towards zero; and a bottleneck adapter with
`task_layer_norm=True` active at the same time replaces the LayerNorm, so its beta offset is unused.

Example:
>>> from adapter_bert import AdapterBertModel
>>> from adapter_bert.testing import tiny_bert_config
>>> model = AdapterBertModel.from_config(tiny_bert_config())
>>> model.add_adapter("bitfit", config="bitfit")
>>> model.adapter_summary(as_dict=True)[0]["params"]   # 2 x (4*32 + 64 + 32 + 2*32) + 32 + 32
640
"""

from __future__ import annotations

import dataclasses

import keras
from keras import ops

from adapter_bert.configuration import AdapterConfig
from adapter_bert.methods.base import AdapterMethod, install_hook, remove_hook

_DENSE_POINTS = ("attention.query", "attention.key", "attention.value", "attention.output",
                 "intermediate", "output")


@dataclasses.dataclass(eq=True)
class BitFitConfig(AdapterConfig):
    """BitFit: trained offsets of all bias terms (Dense biases and LayerNorm betas)."""

    architecture = "bitfit"


class BiasOffset(keras.layers.Layer):
    """A trained offset added to a frozen layer's output: `hook(x, y) = y + offset`."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.build(None)

    def build(self, input_shape):
        self.offset = self.add_weight(shape=(self.units,), initializer="zeros", name="offset")
        self.built = True

    def call(self, x, y, training=None):
        return y + ops.cast(self.offset, y.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units)
        return config


_NORM_POINTS = ("attention_ln", "output_ln")


class BitFitMethod(AdapterMethod):
    """The bias offsets of one BitFit adapter, one `BiasOffset` per bias vector of the base."""

    def __init__(self, config: BitFitConfig, bert_config, **kwargs):
        super().__init__(config, bert_config, **kwargs)
        sizes = {"intermediate": bert_config.intermediate_size}
        self.placements, self.offsets = [], []
        for i in range(bert_config.num_hidden_layers):
            for point in _DENSE_POINTS + _NORM_POINTS:
                self.placements.append((i, point))
                self.offsets.append(BiasOffset(sizes.get(point, bert_config.hidden_size),
                                               dtype=self.dtype_policy,
                                               name=f"layer_{i}_{point.replace('.', '_')}"))
        for point in ("pooler", "embeddings_ln"):
            self.placements.append((None, point))
            self.offsets.append(BiasOffset(bert_config.hidden_size, dtype=self.dtype_policy,
                                           name=point))
        self.built = True

    @staticmethod
    def _target(encoder, layer, point):
        if point == "pooler":
            return encoder.pooler.dense
        if point == "embeddings_ln":
            return encoder.embeddings.layer_norm
        return encoder.layers[layer].sublayer(point)

    def attach(self, encoder) -> None:
        for (layer, point), offset in zip(self.placements, self.offsets):
            install_hook(self._target(encoder, layer, point).hooks, offset)

    def detach(self, encoder) -> None:
        for (layer, point), offset in zip(self.placements, self.offsets):
            remove_hook(self._target(encoder, layer, point).hooks, offset)
