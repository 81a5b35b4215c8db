"""VeRA (Kopiczko et al. 2024): one pair of frozen random matrices shared by every adapted layer,
and per layer only trained scales.

As in the adapters library: per adapter, frozen `A` (`r x in`) and `B` (`out x r`), drawn once with
Kaiming-uniform bounds; per adapted Dense, a trained `vera_D` (`r x r`, starting at
`vera_d * I`) and `vera_B` (`out x out`, starting at `vera_b * I`, so zero by default and the
base is unchanged). The update is `s * vera_B B vera_D A x` with `s = alpha / r`. The library
stores the paper's scaling vectors as full matrices started on the diagonal, and so does this
module, so that weights and counts agree (14,169,600 on bert-base, the frozen pair included).

The config is LoRA's with `vera_d` / `vera_b` set (identifier `vera`); every adapted layer must
have the same shape (the pair is shared). `merge` adds the update to the kernels exactly.

Example:
>>> from adapter_bert.model import AdapterModule
>>> from adapter_bert import AdapterConfig, BertConfig
>>> AdapterModule("v", AdapterConfig.load("vera"), BertConfig()).num_params()
14169600
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras import ops

from adapter_bert.methods.lora import DenseHookMethod, LoRAComposer, LoRAConfig
from adapter_bert.methods.registry import register_method


@dataclasses.dataclass(eq=True)
class VeraConfig(LoRAConfig):
    """`vera`: LoRA's targets (query and value) with VeRA's shared pair and trained scales."""

    vera_d: float | None = 0.1
    vera_b: float | None = 0.0
    init_weights: str = "vera"


class _Shared:
    """The adapter's frozen pair, as its hooks see it (kept out of the hooks' own weights)."""

    def __init__(self, a, b):
        self.a, self.b = a, b


class VeRADense(keras.layers.Layer):
    """VeRA's trained scales of one Dense layer; the frozen pair is the method's.

    Args:
        input_dim / output_dim: the Dense layer's sizes.
        r: the rank of the shared pair; alpha: the update is scaled by alpha / r.
        vera_d / vera_b: the starting diagonals of `vera_D` and `vera_B`.
        dropout: dropout on the layer input.
    """

    composer = LoRAComposer
    chains_updates = True
    gate = None

    def __init__(self, input_dim: int, output_dim: int, r: int = 8, alpha: float = 8,
                 vera_d: float = 0.1, vera_b: float = 0.0, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.input_dim, self.output_dim, self.r, self.alpha = input_dim, output_dim, r, alpha
        self.vera_d, self.vera_b, self.dropout_rate = vera_d, vera_b, dropout
        self.scaling = alpha / r
        self.dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy, name="dropout")
        self._shared = None
        self._backup = None
        self.build(None)

    def build(self, input_shape):
        # Keras layout ([in, out] kernels): the transposes of the library's matrices.
        self.vera_D = self.add_weight(shape=(self.r, self.r), name="vera_D",
                                      initializer=keras.initializers.Identity(self.vera_d))
        self.vera_B = self.add_weight(shape=(self.output_dim, self.output_dim), name="vera_B",
                                      initializer=keras.initializers.Identity(self.vera_b)
                                      if self.vera_b else "zeros")
        self.built = True

    def bind(self, shared: _Shared) -> None:
        self._shared = shared

    def update(self, source, first: bool = True, training=None, gate=None):
        source = self.dropout(source, training=training)
        dtype = source.dtype
        out = ops.matmul(source, ops.cast(self._shared.a, dtype))
        out = ops.matmul(ops.matmul(out, ops.cast(self.vera_D, dtype)), ops.cast(self._shared.b, dtype))
        out = ops.matmul(out, ops.cast(self.vera_B, dtype))
        return out * ops.cast(self.scaling if gate is None else gate, dtype)

    @staticmethod
    def combine(y, update):
        return y + update

    def delta(self) -> np.ndarray:
        """The update as an `[in, out]` kernel: `s * A vera_D B vera_B`."""
        f64 = lambda v: np.asarray(ops.convert_to_numpy(v), np.float64)  # noqa: E731
        return self.scaling * (f64(self._shared.a) @ f64(self.vera_D) @ f64(self._shared.b)
                               @ f64(self.vera_B))

    def merge_into(self, dense) -> None:
        self._backup = dense.kernel.numpy().copy()
        dense.kernel.assign((self._backup.astype(np.float64) + self.delta()).astype(self._backup.dtype))

    def reset(self, dense) -> None:
        dense.kernel.assign(self._backup)
        self._backup = None

    def call(self, x, y, training=None):
        return self.combine(y, self.update(x, training=training))

    def get_config(self):
        config = super().get_config()
        config.update(input_dim=self.input_dim, output_dim=self.output_dim, r=self.r,
                      alpha=self.alpha, vera_d=self.vera_d, vera_b=self.vera_b,
                      dropout=self.dropout_rate)
        return config


class VeRAMethod(DenseHookMethod):
    """VeRA for one adapter: the frozen shared pair and one `VeRADense` per adapted Dense."""

    def __init__(self, config: LoRAConfig, bert_config, **kwargs):
        if config.use_gating:
            raise ValueError("use_gating is not supported for VeRA adapters")
        super().__init__(config, bert_config, **kwargs)
        shapes = {(h.input_dim, h.output_dim) for h in self.updates}
        if len(shapes) > 1:
            raise ValueError(f"VeRA shares one pair of matrices across the adapted layers, which "
                             f"must then have one shape; these have {sorted(shapes)}")
        (input_dim, output_dim), r = shapes.pop(), config.r
        # The library's Kaiming-uniform bounds, sqrt(6 / fan_in), with torch's fan-in of its
        # [r, in] and [out, r] layouts.
        self.shared_A = self.add_weight(
            shape=(input_dim, r), trainable=False, name="shared_A",
            initializer=keras.initializers.RandomUniform(-(6 / input_dim) ** 0.5, (6 / input_dim) ** 0.5))
        self.shared_B = self.add_weight(
            shape=(r, output_dim), trainable=False, name="shared_B",
            initializer=keras.initializers.RandomUniform(-(6 / r) ** 0.5, (6 / r) ** 0.5))
        shared = _Shared(self.shared_A, self.shared_B)
        for hook in self.updates:
            hook.bind(shared)

    def make_hook(self, input_dim: int, output_dim: int, name: str,
                  location: tuple = (None, None)) -> keras.layers.Layer:
        cfg = self.config
        return VeRADense(input_dim, output_dim, r=cfg.r, alpha=cfg.alpha,
                         vera_d=0.0 if cfg.vera_d is None else cfg.vera_d,
                         vera_b=0.0 if cfg.vera_b is None else cfg.vera_b, dropout=cfg.dropout,
                         dtype=self.dtype_policy, name=name)


register_method(VeraConfig, VeRAMethod, identifiers={"vera": VeraConfig()},
                selects=lambda values: (values.get("vera_d") is not None
                                        or values.get("vera_b") is not None)
                and not values.get("use_dora") and values.get("composition_mode", "add") != "scale")
