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
import re

import keras
from keras import ops

from adapter_bert.bert.hooks import OutputComposer
from adapter_bert.configuration import AdapterConfig
from adapter_bert.methods.base import AdapterMethod
from adapter_bert.methods.registry import register_method

_DENSE_POINTS = ("attention.query", "attention.key", "attention.value", "attention.output",
                 "intermediate", "output")


_NORM_POINTS = ("attention_ln", "output_ln")
_OUTSIDE = ("pooler", "embeddings_ln")


@dataclasses.dataclass(eq=True)
class BitFitConfig(AdapterConfig):
    """BitFit: trained offsets of all bias terms (Dense biases and LayerNorm betas).

    Args:
        targets: only these biases (None: all): a bias of every layer (`"attention.query"`,
            `"output_ln"`, ...), of one layer (`"layer_1.intermediate"`), `"pooler"` or
            `"embeddings_ln"`. PEFT's LoRA `bias="lora_only"` is LoRA with the biases of its own
            targets.
    """

    targets: list | None = None

    architecture = "bitfit"
    own_fields = {"targets": None}

    def validate(self):
        if self.targets is None:
            return
        points = _DENSE_POINTS + _NORM_POINTS
        bad = [t for t in self.targets if t not in points + _OUTSIDE
               and not re.match(r"^layer_\d+\.(" + "|".join(map(re.escape, points)) + r")$", str(t))]
        if bad or not isinstance(self.targets, (list, tuple)):
            raise ValueError(f"bitfit targets: unknown {bad or self.targets!r}; known: "
                             f"{', '.join(points + _OUTSIDE)}, or one layer's as 'layer_<i>.<bias>'")

    def covers(self, layer: int | None, point: str) -> bool:
        if self.targets is None:
            return True
        return point in self.targets if layer is None else (
            point in self.targets or f"layer_{layer}.{point}" in self.targets)


class BitFitComposer(OutputComposer):
    """Bias offsets combine like any output hook, and run first at a point: they belong to the
    base layer's own bias, which (IA)^3 then rescales like the rest of the layer's output."""

    priority = 0


class BiasOffset(keras.layers.Layer):
    """A trained offset added to a frozen layer's output: `hook(x, y) = y + offset`."""

    composer = BitFitComposer

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


class BitFitMethod(AdapterMethod):
    """The bias offsets of one BitFit adapter, one `BiasOffset` per bias vector of the base."""

    def __init__(self, config: BitFitConfig, bert_config, **kwargs):
        super().__init__(config, bert_config, **kwargs)
        sizes = {"intermediate": bert_config.intermediate_size}
        self.locations, self.offsets = [], []
        for i in range(bert_config.num_hidden_layers):
            for point in _DENSE_POINTS + _NORM_POINTS:
                if not config.covers(i, point):
                    continue
                self.locations.append((i, point))
                self.offsets.append(BiasOffset(sizes.get(point, bert_config.hidden_size),
                                               dtype=self.dtype_policy,
                                               name=f"layer_{i}_{point.replace('.', '_')}"))
        for point in _OUTSIDE:
            if not config.covers(None, point):
                continue
            self.locations.append((None, point))
            self.offsets.append(BiasOffset(bert_config.hidden_size, dtype=self.dtype_policy,
                                           name=point))
        self.built = True

    def placements(self):
        paths = {"pooler": "pooler.dense", "embeddings_ln": "embeddings.layer_norm"}
        return [(paths[point] if layer is None else f"layer_{layer}.{point}", offset)
                for (layer, point), offset in zip(self.locations, self.offsets)]


register_method(BitFitConfig, BitFitMethod, identifiers={"bitfit": BitFitConfig()},
                presets={"bitfit": "bitfit"})
