"""Delta tuning: a full-rank update of chosen Dense layers, trained beside the frozen base.

`DeltaDense` hooks a Dense layer of the base: `y = (W + D) x + b + d` with `D` (`[in, out]`) and
`d` starting at zero, so the model is unchanged at initialisation. Training `D` and `d` is training
`W` and `b` themselves (same function, same gradients), but the base stays shared: the deltas are
saved alone, another task's adapters still see the pretrained weights, and `merge` folds them into
the kernels for inference while `reset` restores the kept pretrained kernels exactly. It is full
fine-tuning of those layers as an adapter.

Example:
>>> import numpy as np
>>> from adapter_bert import AdapterBertModel
>>> from adapter_bert.testing import random_inputs, tiny_bert_config
>>> model = AdapterBertModel.from_config(tiny_bert_config())
>>> model.add_adapter("d", config="delta[targets=['attention.value', 'output']]", set_active=True)
>>> sorted(model.adapter_modules["d"].named_variables())[:2]
['delta.layer_0_attention_value.delta_bias', 'delta.layer_0_attention_value.delta_kernel']
>>> _ = model.adapter_modules["d"].named_variables()["delta.layer_0_output.delta_kernel"].assign(
...     np.full((64, 32), 0.01, "float32"))
>>> before = model.bert(random_inputs())["sequence_output"]
>>> model.merge_adapter("d")
>>> bool(np.allclose(model.bert(random_inputs())["sequence_output"], before, atol=1e-5))
True
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras import ops

from adapter_bert.configuration import AdapterConfig
from adapter_bert.methods.base import check_leave_out
from adapter_bert.methods.lora import (DENSE_TARGETS, _LAYER_TARGET, DenseHookMethod, LoRAComposer,
                                       check_targets, matches, target_key)
from adapter_bert.methods.registry import register_method


@dataclasses.dataclass(eq=True)
class DeltaConfig(AdapterConfig):
    """Delta tuning.

    Args:
        targets: the Dense layers that get a delta: any of `DENSE_TARGETS` (in every layer not
            left out), one layer's (`"layer_1.output"`) or `"pooler"`. Default: every Dense of
            every layer.
        leave_out: layer indices without deltas.
        bias: whether the biases get deltas too (then the method is full fine-tuning of those
            layers).
    """

    targets: list = dataclasses.field(default_factory=lambda: list(DENSE_TARGETS))
    leave_out: list = dataclasses.field(default_factory=list)
    bias: bool = True

    architecture = "delta"

    def validate(self):
        check_leave_out(self.leave_out)
        check_targets(self.targets, "delta targets")
        if not self.targets or isinstance(self.targets, dict):
            raise ValueError(f"delta targets must name at least one layer, got {self.targets!r}")
        if not isinstance(self.bias, bool):
            raise ValueError(f"bias must be True or False, got {self.bias!r}")

    def dense_targets(self, num_layers: int) -> list[tuple[int | None, str]]:
        """`(layer, target)` of every Dense this config adapts; `(None, "pooler")` last."""
        beyond = sorted({int(m.group(1)) for t in self.targets
                         if (m := _LAYER_TARGET.match(str(t))) and int(m.group(1)) >= num_layers})
        if beyond:
            raise ValueError(f"delta targets name layers {beyond} of a {num_layers}-layer model")
        out = [(i, point) for i in self.layers(num_layers) for point in DENSE_TARGETS
               if matches(self.targets, i, point)]
        return out + ([(None, "pooler")] if "pooler" in self.targets else [])


class DeltaDense(keras.layers.Layer):
    """The full-rank update of one Dense layer: `y + x D + d` (a `dense` hook, `LoRAComposer`).

    Args:
        input_dim / output_dim: the wrapped Dense layer's sizes.
        bias: whether `d` exists.
    """

    composer = LoRAComposer
    chains_updates = True

    def __init__(self, input_dim: int, output_dim: int, bias: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.input_dim, self.output_dim, self.use_bias = input_dim, output_dim, bias
        self._backup = None
        self.build(None)

    def build(self, input_shape):
        self.delta_kernel = self.add_weight(shape=(self.input_dim, self.output_dim),
                                            initializer="zeros", name="delta_kernel")
        self.delta_bias = (self.add_weight(shape=(self.output_dim,), initializer="zeros",
                                           name="delta_bias") if self.use_bias else None)
        self.built = True

    def update(self, source, first: bool = True, training=None, gate=None):
        update = ops.matmul(source, ops.cast(self.delta_kernel, source.dtype))
        if self.delta_bias is not None:
            update = update + ops.cast(self.delta_bias, update.dtype)
        return update

    @staticmethod
    def combine(y, update):
        return y + update

    def call(self, x, y, training=None):
        return self.combine(y, self.update(x, training=training))

    def merge_into(self, dense) -> None:
        self._backup = (dense.kernel.numpy().copy(), dense.bias.numpy().copy())
        kernel, bias = self._backup
        dense.kernel.assign((kernel.astype(np.float64) + self.delta_kernel.numpy()).astype(kernel.dtype))
        if self.delta_bias is not None:
            dense.bias.assign((bias.astype(np.float64) + self.delta_bias.numpy()).astype(bias.dtype))

    def reset(self, dense) -> None:
        kernel, bias = self._backup
        dense.kernel.assign(kernel)
        dense.bias.assign(bias)
        self._backup = None

    def get_config(self):
        config = super().get_config()
        config.update(input_dim=self.input_dim, output_dim=self.output_dim, bias=self.use_bias)
        return config


class DeltaMethod(DenseHookMethod):
    """One `DeltaDense` per adapted Dense; merge / reset as LoRA's."""

    def make_hook(self, input_dim: int, output_dim: int, name: str,
                  location: tuple = (None, None)) -> keras.layers.Layer:
        return DeltaDense(input_dim, output_dim, bias=self.config.bias, dtype=self.dtype_policy,
                          name=name)


register_method(DeltaConfig, DeltaMethod, identifiers={"delta": DeltaConfig()},
                presets={"delta": "delta"})
