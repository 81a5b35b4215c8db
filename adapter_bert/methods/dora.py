"""DoRA (Liu et al. 2024): LoRA's update split into a trained magnitude and a direction.

Each adapted Dense keeps a trained magnitude `m` per output unit, initialised to the norms of the
pretrained kernel's output columns, and computes, as the adapters library does,

    y = m / ||W0 + B A|| * (W0 x + b + s B A x)

with `s = alpha / r` and the column norm of the *unscaled* update (`||W0 + BA||` per output
unit). At initialisation `B = 0`, so `m / ||W0|| = 1` and the base is unchanged. The config is
LoRA's with `use_dora=True` (identifier `dora`).

`merge` folds the whole function into the kernel and bias exactly: `W' = (W0 + s B A) * m / n`
and `b' = b * m / n`, so merged and unmerged outputs agree to float rounding; `reset` restores
the kept pretrained kernel and bias. (The adapters library's merge leaves the bias and the
scale `s` out, which changes the outputs unless `alpha == r` and the bias is zero, and its reset
does not restore the kernel.)

Example:
>>> import numpy as np
>>> from adapter_bert import AdapterBertModel
>>> from adapter_bert.testing import random_inputs, tiny_bert_config
>>> model = AdapterBertModel.from_config(tiny_bert_config())
>>> base = model.bert(random_inputs())["sequence_output"]
>>> model.add_adapter("d", config="dora", set_active=True)
>>> bool(np.allclose(model.bert(random_inputs())["sequence_output"], base, atol=1e-6))
True
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras import ops

from adapter_bert.methods.lora import DenseHookMethod, LoRAComposer, LoRAConfig, LoRADense
from adapter_bert.methods.registry import register_method


@dataclasses.dataclass(eq=True)
class DoRAConfig(LoRAConfig):
    """`dora`: LoRA on the query and value projections with a trained magnitude."""

    use_dora: bool = True


class _Kernel:
    """The frozen base Dense a DoRA update reads its kernel from (kept out of Keras' tracking,
    so the base kernel is never part of the adapter's weights)."""

    def __init__(self, dense):
        self.dense = dense


class DoRADense(LoRADense):
    """LoRA's update of one Dense layer plus DoRA's magnitude `m` (`[output_dim]`).

    The base Dense is bound with `bind` (its kernel enters the column norm) before the hook runs.
    """

    composer = LoRAComposer

    def build(self, input_shape):
        super().build(input_shape)
        self.magnitude = self.add_weight(shape=(self.output_dim,), initializer="ones", name="m")
        self._base = None

    def bind(self, dense) -> None:
        self._base = _Kernel(dense)

    def init_magnitude(self, dense) -> None:
        """`m` starts at the pretrained kernel's column norms (one per output unit)."""
        self.magnitude.assign(np.linalg.norm(dense.kernel.numpy().astype(np.float64), axis=0)
                              .astype("float32"))

    def _rescale(self, dtype):
        if self._base is None:
            raise ValueError(f"DoRA update {self.name} is not bound to its base Dense layer")
        kernel = self._base.dense.kernel
        direction = kernel + ops.matmul(self.lora_A, self.lora_B)  # unscaled, as the library
        norm = ops.sqrt(ops.sum(ops.square(direction), axis=0))
        return ops.cast(self.magnitude / norm, dtype)

    def combine(self, y, update):
        """`m / ||W0 + BA|| * (y + update)`: the layer output `y` includes its bias."""
        return (y + update) * self._rescale(y.dtype)

    def merge_into(self, dense) -> None:
        kernel, bias = dense.kernel.numpy().copy(), dense.bias.numpy().copy()
        self._backup = (kernel, bias)
        a = np.asarray(self.lora_A.numpy(), np.float64)
        b = np.asarray(self.lora_B.numpy(), np.float64)
        factor = (np.asarray(self.magnitude.numpy(), np.float64)
                  / np.linalg.norm(kernel.astype(np.float64) + a @ b, axis=0))
        dense.kernel.assign(((kernel.astype(np.float64) + self.scaling * (a @ b)) * factor[None, :])
                            .astype(kernel.dtype))
        dense.bias.assign((bias.astype(np.float64) * factor).astype(bias.dtype))

    def reset(self, dense) -> None:
        dense.kernel.assign(self._backup[0])
        dense.bias.assign(self._backup[1])
        self._backup = None

    def call(self, x, y, training=None):
        return self.combine(y, self.update(x, training=training))


class DoRAMethod(DenseHookMethod):
    """All `DoRADense` updates of one adapter."""

    def make_hook(self, input_dim: int, output_dim: int, name: str,
                  location: tuple = (None, None)) -> keras.layers.Layer:
        cfg = self.config
        return DoRADense(input_dim, output_dim, r=cfg.r, alpha=cfg.alpha, dropout=cfg.dropout,
                         init_weights=cfg.init_weights, use_gating=cfg.use_gating,
                         dtype=self.dtype_policy, name=name)

    def init_from_base(self, encoder, checkpoint_dir=None) -> None:
        for hook, dense in self._targets(encoder):
            hook.init_magnitude(dense)

    def bind(self, encoder) -> None:
        for hook, dense in self._targets(encoder):
            hook.bind(dense)


register_method(DoRAConfig, DoRAMethod, identifiers={"dora": DoRAConfig()},
                selects=lambda values: bool(values.get("use_dora"))
                and values.get("composition_mode", "add") != "scale")
