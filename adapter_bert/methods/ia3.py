"""(IA)^3 (Liu et al. 2022): trained vectors that rescale the keys, values and FFN activations.

`IA3Scale` hooks a `HookedDense`: `y = l * (W x + b)`, with `l` initialised to ones, so the model is
unchanged at initialisation. Like the adapters library, (IA)^3 is LoRA's configuration with
`composition_mode="scale"`: defaults adapt keys and values (`attn_matrices=["k", "v"]`) and the FFN
intermediate Dense (`intermediate_lora=True`). `merge` multiplies the kernel's output columns and
the bias by `l`; `reset` restores the kept pretrained values exactly.

Example:
>>> from adapter_bert import AdapterBertModel
>>> from adapter_bert.testing import tiny_bert_config
>>> model = AdapterBertModel.from_config(tiny_bert_config())
>>> model.add_adapter("ia3", config="ia3")
>>> model.adapter_summary(as_dict=True)[0]["params"]   # 2 x (32 + 32 + 64)
256
"""

from __future__ import annotations

import dataclasses

import keras
from keras import ops

from adapter_bert.methods.lora import DenseHookMethod, LoRAConfig


@dataclasses.dataclass(eq=True)
class IA3Config(LoRAConfig):
    """(IA)^3: LoRA's config with composition by scaling; defaults as in the adapters library."""

    selfattn_lora: bool = True
    intermediate_lora: bool = True
    output_lora: bool = False
    r: int = 1
    alpha: int = 1
    dropout: float = 0.0
    attn_matrices: list = dataclasses.field(default_factory=lambda: ["k", "v"])
    composition_mode: str = "scale"
    init_weights: str = "ia3"


class IA3Scale(keras.layers.Layer):
    """A learned per-channel scale of one Dense layer's output: `hook(x, y) = l * y`."""

    def __init__(self, output_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.output_dim = output_dim
        self._backup = None
        self.build(None)

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(self.output_dim,), initializer="ones", name="scale")
        self.built = True

    def call(self, x, y, training=None):
        return y * ops.cast(self.scale, y.dtype)

    def merge_into(self, dense) -> None:
        scale = self.scale.numpy()
        self._backup = (dense.kernel.numpy().copy(), dense.bias.numpy().copy())
        dense.kernel.assign(self._backup[0] * scale[None, :])
        dense.bias.assign(self._backup[1] * scale)

    def reset(self, dense) -> None:
        dense.kernel.assign(self._backup[0])
        dense.bias.assign(self._backup[1])
        self._backup = None

    def get_config(self):
        config = super().get_config()
        config.update(output_dim=self.output_dim)
        return config


class IA3Method(DenseHookMethod):
    """All `IA3Scale`s of one adapter."""

    def make_hook(self, input_dim: int, output_dim: int, name: str) -> keras.layers.Layer:
        return IA3Scale(output_dim, dtype=self.dtype_policy, name=name)

