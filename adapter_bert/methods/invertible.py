"""Invertible adapters (Pfeiffer et al. 2020, MAD-X): an invertible map on the embedding output,
undone before a masked-language-model head's decoder.

A language adapter of MAD-X is a bottleneck adapter plus an invertible coupling block `A` on the
token embeddings: the encoder runs on `A(embeddings)`, and the MLM head applies `A^-1` to its
transformed hidden states before the tied decoder, so the input and output embeddings, which
share one frozen matrix, are adapted alike. Any bottleneck config takes `inv_adapter="nice"`
(default of `seq_bn_inv` and `double_seq_bn_inv`) or `"glow"`, and
`inv_adapter_reduction_factor` (the coupling subnetworks' width, `hidden // factor`).

NICE (Dinh et al. 2015) splits the features in two halves, `x1 = x[:h//2]`, `x2 = x[h//2:]`:
`y1 = x1 + F(x2)`, `y2 = x2 + G(y1)`; the inverse subtracts in the other order. GLOW's affine
coupling (Kingma & Dhariwal 2018) scales and shifts instead: `y1 = e(s2) * x1 + t2` with
`(s2, t2) = S2(x2)`, then `y2 = e(s1) * x2 + t1` with `(s1, t1) = S1(y1)`, where
`e(s) = exp(clamp * 0.636 * atan(s / clamp))`, clamp 5. Each subnetwork is
`Linear(in, in // factor) -> the adapter's non_linearity -> Linear(in // factor, out)`, weights
normal (std 0.02), biases zero, as the adapters library initialises them.

As in the adapters library, only the *first* adapter of the active setup acts here (for
`Stack(lang, task)`, the language adapter), and the MLM head inverts that same adapter.
The library's GLOW block does not run on `[batch, seq, hidden]` inputs (its forward slices the
sequence axis and never calls one of its subnetworks); here both directions follow the affine
coupling above, with the library's weight names and shapes.

Example:
>>> import numpy as np
>>> from adapter_bert import AdapterBertModel
>>> from adapter_bert.testing import random_inputs, tiny_bert_config
>>> model = AdapterBertModel.from_config(tiny_bert_config())
>>> model.add_adapter("en", config="seq_bn_inv", set_active=True)
>>> block = model.adapter_modules["en"].methods[0].invertible
>>> x = np.random.default_rng(0).normal(size=(2, 5, 32)).astype("float32")
>>> bool(np.allclose(block.inverse(block(x)), x, atol=1e-5))
True
"""

from __future__ import annotations

import dataclasses

import keras
from keras import ops

from adapter_bert.bert.hooks import Composer, first_adapter
from adapter_bert.methods.base import ACTIVATIONS
from adapter_bert.methods.bottleneck import DoubleSeqBnConfig, SeqBnConfig, register_invertible
from adapter_bert.methods.registry import register_method

#: GLOW's soft clamp of the log-scale (the adapters library's and FrEIA's default).
GLOW_CLAMP = 5.0


class InvertibleComposer(Composer):
    """At the embedding output, the first adapter of any setup applies its invertible block to
    the whole batch; the other adapters' blocks do not run. It runs before prompt tuning inserts
    its prompts (the library's order)."""

    kinds = ("embeddings",)
    supported_blocks = ("stack", "parallel", "batch_split", "average", "split", "fuse",
                        "multi_task")
    priority = 5

    def compose(self, setup, point_state: tuple) -> tuple:
        hook = self.hooks.get(first_adapter(setup))
        if hook is None:
            return point_state
        hidden, *rest = point_state
        return (hook(hidden, training=self.training), *rest)


def _subnet_init():
    return keras.initializers.RandomNormal(stddev=0.02)


class CouplingSubnet(keras.layers.Layer):
    """`Linear(in, in // factor) -> activation -> Linear(in // factor, out)`; the two Dense layers
    are named `0` and `2` after the library's `nn.Sequential` positions."""

    def __init__(self, in_features: int, out_features: int, reduction_factor: float,
                 non_linearity: str, **kwargs):
        super().__init__(**kwargs)
        self.in_features, self.out_features = in_features, out_features
        self.reduction_factor, self.non_linearity = reduction_factor, non_linearity
        self.width = max(1, int(in_features // reduction_factor))
        self.activation = ACTIVATIONS[non_linearity.lower()]
        self.first = keras.layers.Dense(self.width, kernel_initializer=_subnet_init(),
                                        dtype=self.dtype_policy, name="0")
        self.second = keras.layers.Dense(out_features, kernel_initializer=_subnet_init(),
                                         dtype=self.dtype_policy, name="2")
        self.first.build((None, in_features))
        self.second.build((None, self.width))
        self.built = True

    def call(self, x):
        return self.second(self.activation(self.first(x)))

    def get_config(self):
        config = super().get_config()
        config.update(in_features=self.in_features, out_features=self.out_features,
                      reduction_factor=self.reduction_factor, non_linearity=self.non_linearity)
        return config


class NICECouplingBlock(keras.layers.Layer):
    """Additive coupling: `y1 = x1 + F(x2)`, `y2 = x2 + G(y1)`, exactly invertible.

    Args:
        hidden_size: width of the embeddings.
        reduction_factor: the subnetworks' width is `half // reduction_factor`.
        non_linearity: the subnetworks' activation (the adapter's).
    """

    composer = InvertibleComposer

    def __init__(self, hidden_size: int, reduction_factor: float = 2, non_linearity: str = "relu",
                 **kwargs):
        super().__init__(**kwargs)
        self.hidden_size, self.reduction_factor = hidden_size, reduction_factor
        self.non_linearity = non_linearity
        self.split = hidden_size // 2
        rest = hidden_size - self.split
        self.F = CouplingSubnet(rest, self.split, reduction_factor, non_linearity,
                                dtype=self.dtype_policy, name="F")
        self.G = CouplingSubnet(self.split, rest, reduction_factor, non_linearity,
                                dtype=self.dtype_policy, name="G")
        self.built = True

    def call(self, x, training=None):
        x1, x2 = x[..., :self.split], x[..., self.split:]
        y1 = x1 + self.F(x2)
        return ops.concatenate([y1, x2 + self.G(y1)], axis=-1)

    def inverse(self, y):
        """`x` with `self(x) == y`."""
        y1, y2 = y[..., :self.split], y[..., self.split:]
        x2 = y2 - self.G(y1)
        return ops.concatenate([y1 - self.F(x2), x2], axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(hidden_size=self.hidden_size, reduction_factor=self.reduction_factor,
                      non_linearity=self.non_linearity)
        return config


class GLOWCouplingBlock(NICECouplingBlock):
    """Affine coupling: `y1 = e(s2) * x1 + t2` with `(s2, t2) = s2(x2)`, then
    `y2 = e(s1) * x2 + t1` with `(s1, t1) = s1(y1)`; `e` soft-clamps the log-scale to ±`clamp`."""

    def __init__(self, hidden_size: int, reduction_factor: float = 2, non_linearity: str = "relu",
                 clamp: float = GLOW_CLAMP, **kwargs):
        keras.layers.Layer.__init__(self, **kwargs)
        self.hidden_size, self.reduction_factor = hidden_size, reduction_factor
        self.non_linearity, self.clamp = non_linearity, clamp
        self.split = hidden_size // 2
        rest = hidden_size - self.split
        self.s1 = CouplingSubnet(self.split, 2 * rest, reduction_factor, non_linearity,
                                 dtype=self.dtype_policy, name="s1")
        self.s2 = CouplingSubnet(rest, 2 * self.split, reduction_factor, non_linearity,
                                 dtype=self.dtype_policy, name="s2")
        self.built = True

    def _e(self, s):
        return ops.exp(self.clamp * 0.636 * ops.arctan(s / self.clamp))

    def call(self, x, training=None):
        x1, x2 = x[..., :self.split], x[..., self.split:]
        r2 = self.s2(x2)
        y1 = self._e(r2[..., :self.split]) * x1 + r2[..., self.split:]
        r1 = self.s1(y1)
        rest = self.hidden_size - self.split
        y2 = self._e(r1[..., :rest]) * x2 + r1[..., rest:]
        return ops.concatenate([y1, y2], axis=-1)

    def inverse(self, y):
        y1, y2 = y[..., :self.split], y[..., self.split:]
        rest = self.hidden_size - self.split
        r1 = self.s1(y1)
        x2 = (y2 - r1[..., rest:]) / self._e(r1[..., :rest])
        r2 = self.s2(x2)
        x1 = (y1 - r2[..., self.split:]) / self._e(r2[..., :self.split])
        return ops.concatenate([x1, x2], axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(clamp=self.clamp)
        return config


@dataclasses.dataclass(eq=True)
class SeqBnInvConfig(SeqBnConfig):
    """`seq_bn_inv`: a Pfeiffer adapter with a NICE invertible adapter (MAD-X's language adapter)."""

    inv_adapter: str | None = "nice"
    inv_adapter_reduction_factor: float | None = 2


@dataclasses.dataclass(eq=True)
class DoubleSeqBnInvConfig(DoubleSeqBnConfig):
    """`double_seq_bn_inv`: a Houlsby adapter with a NICE invertible adapter."""

    inv_adapter: str | None = "nice"
    inv_adapter_reduction_factor: float | None = 2


register_invertible("nice", NICECouplingBlock)
register_invertible("glow", GLOWCouplingBlock)

# Bottleneck adapters with an invertible block: `BottleneckMethod` builds them, as any BnConfig.
register_method(SeqBnInvConfig, config_classes=(DoubleSeqBnInvConfig,), bare_dicts=False,
                identifiers={"seq_bn_inv": SeqBnInvConfig(),
                             "double_seq_bn_inv": DoubleSeqBnInvConfig(),
                             # The adapters library's older names, still accepted there.
                             "pfeiffer+inv": SeqBnInvConfig(),
                             "houlsby+inv": DoubleSeqBnInvConfig()})
