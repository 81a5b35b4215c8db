"""(IA)^3 (Liu et al. 2022): trained vectors that rescale the keys, values and FFN activations.

`IA3Scale` hooks a `HookedDense`: `y = alpha * l * (W x + b)`. Like the adapters library, (IA)^3 is
LoRA's configuration with `composition_mode="scale"`: defaults adapt keys and values
(`attn_matrices=["k", "v"]`) and the FFN intermediate Dense (`intermediate_lora=True`), with
`r=1` and `alpha=1`. The library's scaling is alpha / r with r fixed at 1, i.e. `alpha`.
`init_weights` sets `l` as the library does: "ia3" (ones, the default, so the model is unchanged at
initialisation), "lora" (zeros) or "bert" (normal, std 0.02). As there, `r` other than 1 and a
dropout are errors rather than silently ignored. `merge` multiplies the kernel's output columns and
the bias by `alpha * l`; `reset` restores the kept pretrained values exactly.

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
import numpy as np
from keras import ops

from adapter_bert.bert.hooks import OutputComposer
from adapter_bert.methods.lora import (DenseHookMethod, LoRAComposer, LoRAConfig, check_targets,
                                       make_gate, matches)
from adapter_bert.methods.registry import register_method


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
    #: Targets (named as `target_modules`) whose vector scales the layer's input rather than its
    #: output: PEFT's (IA)^3 does this for the FFN's second Dense.
    feedforward_modules: list = dataclasses.field(default_factory=list)

    own_fields = dict(LoRAConfig.own_fields, feedforward_modules=[])

    def validate(self):
        super().validate()
        check_targets(self.feedforward_modules, "feedforward_modules")


# The adapters library's `init_weights` names, so a config from there starts from the same vector.
_INITIALIZERS = {"ia3": lambda: "ones", "lora": lambda: "zeros",
                 "bert": lambda: keras.initializers.RandomNormal(stddev=0.02)}


class IA3Scale(keras.layers.Layer):
    """A learned per-channel scale of one Dense layer's output: `alpha * l * y`.

    A hook at a `dense` point, composed with LoRA's rules (`LoRAComposer`).

    Args:
        output_dim: the wrapped Dense layer's output size.
        alpha: a constant factor on the learned vector `l`.
        init_weights: "ia3" (ones), "lora" (zeros) or "bert" (normal, std 0.02).
    """

    composer = LoRAComposer
    chains_updates = False  # a stacked update is scaled elementwise

    def __init__(self, output_dim: int, alpha: float = 1.0, init_weights: str = "ia3",
                 input_dim: int | None = None, use_gating: bool = False, **kwargs):
        if init_weights not in _INITIALIZERS:
            raise ValueError(f"init_weights must be 'lora', 'bert' or 'ia3', got {init_weights!r}")
        super().__init__(**kwargs)
        self.output_dim, self.alpha, self.init_weights = output_dim, alpha, init_weights
        self.input_dim = output_dim if input_dim is None else input_dim
        self.use_gating = use_gating
        self.gate = make_gate(self.input_dim, 1, dtype=self.dtype_policy) if use_gating else None
        self._backup = None
        self.build(None)

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(self.output_dim,),
                                     initializer=_INITIALIZERS[self.init_weights](), name="scale")
        self.built = True

    def update(self, source, first: bool = True, training=None, gate=None):
        """`alpha * l`, or the running update of a `Stack` times it (the vectors multiply); a
        UniPELT `gate` replaces `alpha`."""
        factor = ops.cast(self.alpha, source.dtype) if gate is None else ops.cast(gate, source.dtype)
        vector = ops.cast(self.scale, source.dtype) * factor
        return vector if first else source * vector

    @staticmethod
    def combine(y, update):
        return y * update

    def call(self, x, y, training=None):
        return self.combine(y, self.update(y, training=training))

    def merge_into(self, dense) -> None:
        if self.gate is not None:
            raise ValueError(f"{self.name}: a gated (IA)^3 scale depends on the input; it cannot "
                             "be merged (as in the adapters library)")
        factor = np.asarray(self.scale.numpy(), np.float64) * self.alpha
        self._backup = (dense.kernel.numpy().copy(), dense.bias.numpy().copy())
        kernel, bias = self._backup
        dense.kernel.assign((kernel.astype(np.float64) * factor[None, :]).astype(kernel.dtype))
        dense.bias.assign((bias.astype(np.float64) * factor).astype(bias.dtype))

    def reset(self, dense) -> None:
        dense.kernel.assign(self._backup[0])
        dense.bias.assign(self._backup[1])
        self._backup = None

    def get_config(self):
        config = super().get_config()
        config.update(output_dim=self.output_dim, alpha=self.alpha, init_weights=self.init_weights,
                      input_dim=self.input_dim)
        return config


class InputScaleComposer(OutputComposer):
    """(IA)^3 vectors on a Dense layer's input map its output like any output hook."""


class IA3InputScale(keras.layers.Layer):
    """A learned per-feature scale of one Dense layer's input, `W (l * x) + b` (PEFT's (IA)^3 on
    feed-forward layers), computed as `y + W ((l - 1) * x)` from the frozen layer's output.

    The hook reads the Dense layer's kernel through `bind` (the method binds it when it attaches),
    so the base kernel never becomes one of the adapter's weights.
    """

    composer = InputScaleComposer

    def __init__(self, input_dim: int, init_weights: str = "ia3", **kwargs):
        if init_weights not in _INITIALIZERS:
            raise ValueError(f"init_weights must be 'lora', 'bert' or 'ia3', got {init_weights!r}")
        super().__init__(**kwargs)
        self.input_dim, self.init_weights = input_dim, init_weights
        self._dense = None
        self._backup = None
        self.build(None)

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(self.input_dim,),
                                     initializer=_INITIALIZERS[self.init_weights](), name="scale")
        self.built = True

    def bind(self, dense) -> None:
        self._dense = lambda: dense  # a closure, which Keras does not track as a sublayer

    def call(self, x, y, training=None):
        kernel = ops.cast(self._dense().kernel, x.dtype)
        return y + ops.matmul(x * (ops.cast(self.scale, x.dtype) - 1), kernel)

    def merge_into(self, dense) -> None:
        self._backup = dense.kernel.numpy().copy()
        factor = np.asarray(self.scale.numpy(), np.float64)
        dense.kernel.assign((self._backup.astype(np.float64) * factor[:, None]).astype(self._backup.dtype))

    def reset(self, dense) -> None:
        dense.kernel.assign(self._backup)
        self._backup = None

    def get_config(self):
        config = super().get_config()
        config.update(input_dim=self.input_dim, init_weights=self.init_weights)
        return config


class IA3Method(DenseHookMethod):
    """All `IA3Scale`s of one adapter."""

    def __init__(self, config: LoRAConfig, bert_config, **kwargs):
        # The adapters library refuses these for composition by scaling; ignoring them would train
        # something other than what the config says.
        if config.r != 1:
            raise ValueError(f"(IA)^3 (composition_mode='scale') needs r=1, got r={config.r}")
        if config.dropout > 0:
            raise ValueError(f"(IA)^3 (composition_mode='scale') has no dropout, got "
                             f"dropout={config.dropout}")
        super().__init__(config, bert_config, **kwargs)
        stray = [t for t in config.feedforward_modules
                 if not any(matches([t], *location) for location in self.locations)]
        if stray:
            raise ValueError(f"feedforward_modules {stray} are not among the adapted targets")

    def bind(self, encoder) -> None:
        for hook, dense in self._targets(encoder):
            if isinstance(hook, IA3InputScale):
                hook.bind(dense)

    def make_hook(self, input_dim: int, output_dim: int, name: str,
                  location: tuple = (None, None)) -> keras.layers.Layer:
        if matches(self.config.feedforward_modules, *location):
            if self.config.alpha != 1 or self.config.use_gating:
                raise ValueError("feedforward_modules scale the input by the vector alone: they "
                                 "take no alpha and no gate")
            return IA3InputScale(input_dim, init_weights=self.config.init_weights,
                                 dtype=self.dtype_policy, name=name)
        return IA3Scale(output_dim, alpha=self.config.alpha, init_weights=self.config.init_weights,
                        input_dim=input_dim, use_gating=self.config.use_gating,
                        dtype=self.dtype_policy, name=name)


register_method(IA3Config, IA3Method, identifiers={"ia3": IA3Config()}, presets={"ia3": "ia3"},
                selects=lambda values: values.get("composition_mode") == "scale")
