"""LoRA (Hu et al. 2021): a trained low-rank update `scaling * B A` beside a frozen Dense layer.

`LoRADense` hooks a `HookedDense` of the base: `y = W x + b + (alpha / r) * B(A(dropout(x)))`. `B`
starts at zero, so the model is unchanged at initialisation. `merge` folds the update into the
Dense kernel for inference at no extra cost; `reset` restores the exact pretrained kernel (a copy is
kept while merged, so reset is bit-exact rather than a subtraction with rounding).

Targets follow the adapters library's `LoRAConfig`: `selfattn_lora` with `attn_matrices` (q, k, v),
`intermediate_lora` (the FFN's first Dense) and `output_lora` (the FFN's second Dense).

Several LoRA / (IA)^3 adapters at one Dense layer combine as in the adapters library
(`LoRAComposer`): `Stack(a, b)` feeds `a`'s update into `b` (`y = Wx + b + s_b B_b A_b (s_a B_a A_a
x)`; for (IA)^3 the vectors multiply), `Average` averages the updates, and the last adapter says
whether the update is added (LoRA) or multiplies the output ((IA)^3).

Example:
>>> from adapter_bert import AdapterBertModel
>>> from adapter_bert.testing import tiny_bert_config
>>> import numpy as np
>>> from adapter_bert.testing import random_inputs
>>> model = AdapterBertModel.from_config(tiny_bert_config())
>>> model.add_adapter("lora1", config="lora[r=4, alpha=8, init_weights='bert']", set_active=True)
>>> before = model.bert(random_inputs())["sequence_output"]
>>> kernel = model.bert.layers[0].attention.query.kernel.numpy().copy()
>>> model.merge_adapter("lora1")   # the update now lives in the kernels: same outputs
>>> bool(np.allclose(model.bert(random_inputs())["sequence_output"], before, atol=1e-5))
True
>>> model.reset_adapter("lora1")   # the pretrained kernels come back exactly
>>> bool(np.array_equal(model.bert.layers[0].attention.query.kernel.numpy(), kernel))
True
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import keras
import numpy as np
from keras import ops

from adapter_bert.bert.hooks import Composer
from adapter_bert.configuration import AdapterConfig
from adapter_bert.methods.base import AdapterMethod, check_leave_out
from adapter_bert.methods.registry import register_method

_ATTN_TARGETS = {"q": "attention.query", "k": "attention.key", "v": "attention.value"}


@dataclasses.dataclass(eq=True)
class LoRAConfig(AdapterConfig):
    """LoRA; field names and defaults follow the adapters library.

    Args:
        selfattn_lora: adapt the attention projections named in `attn_matrices`.
        intermediate_lora: adapt the FFN's first Dense (hidden -> intermediate).
        output_lora: adapt the FFN's second Dense (intermediate -> hidden).
        leave_out: layer indices left unadapted.
        r: rank of the update.
        alpha: the update is scaled by alpha / r.
        dropout: dropout on the LoRA input.
        attn_matrices: any of "q", "k", "v".
        composition_mode: "add" (LoRA) or "scale" ((IA)^3, see `IA3Config`).
        init_weights: "lora" (A uniform like PyTorch's Linear, B zero), "bert" (both normal with
            std 0.02) or "ia3" (ones: (IA)^3's vectors; for LoRA, A and B all ones, as in the
            adapters library).
        use_gating: UniPELT's gate: the update scaled by the mean over the example's real tokens of
            `sigmoid(Dense(1)(x))` instead of `alpha / r`, as in the adapters library.
        use_dora: DoRA's magnitude and direction (`adapter_bert.methods.dora`).
        vera_d / vera_b: VeRA's initial scales (`adapter_bert.methods.vera`); None: not VeRA.
    """

    selfattn_lora: bool = True
    intermediate_lora: bool = False
    output_lora: bool = False
    leave_out: list = dataclasses.field(default_factory=list)
    r: int = 8
    alpha: int = 8
    dropout: float = 0.0
    attn_matrices: list = dataclasses.field(default_factory=lambda: ["q", "v"])
    composition_mode: str = "add"
    init_weights: str = "lora"
    use_gating: bool = False
    use_dora: bool = False
    vera_d: float | None = None
    vera_b: float | None = None

    architecture = "lora"
    location_flags = ("selfattn_lora", "intermediate_lora", "output_lora")
    union_label = "LoRA / (IA)^3 configs"
    # The library's init seed, DoRA, VeRA and reduced-precision variants: adapter_bert has none.
    library_only = {"init_weights_seed": None, "dtype": None}

    def validate(self):
        check_leave_out(self.leave_out)
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"r must be a positive integer, got {self.r!r}")
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise ValueError(f"alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        bad = [m for m in self.attn_matrices if m not in _ATTN_TARGETS]
        if bad or not isinstance(self.attn_matrices, (list, tuple)):
            raise ValueError(f"attn_matrices must be a list of 'q', 'k', 'v', got {self.attn_matrices!r}")
        if self.composition_mode not in ("add", "scale"):
            raise ValueError(f"composition_mode must be 'add' or 'scale', got {self.composition_mode!r}")
        if self.init_weights not in ("lora", "bert", "ia3", "vera"):
            raise ValueError(f"init_weights must be 'lora', 'bert', 'ia3' or 'vera', got "
                             f"{self.init_weights!r}")
        for name in ("vera_d", "vera_b"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{name} must be a number or None, got {value!r}")
        if self.use_dora and (self.vera_d is not None or self.vera_b is not None) \
                and self.composition_mode == "scale":
            raise ValueError("use_dora and VeRA's vera_d / vera_b apply to composition_mode='add'")
        if not (self.selfattn_lora or self.intermediate_lora or self.output_lora):
            raise ValueError("enable at least one of selfattn_lora, intermediate_lora, output_lora")

    def hook_points(self) -> list[str]:
        """The Dense hook points of each adapted layer, in a fixed order."""
        points = [_ATTN_TARGETS[m] for m in ("q", "k", "v") if m in self.attn_matrices] \
            if self.selfattn_lora else []
        if self.intermediate_lora:
            points.append("intermediate")
        if self.output_lora:
            points.append("output")
        return points


def make_gate(input_dim: int, units: int = 1, **kwargs) -> keras.layers.Dense:
    """UniPELT's gate layer as the adapters library starts it: kernel N(0, 0.02), bias as
    PyTorch's Linear default, U(+-1/sqrt(input_dim))."""
    bound = 1.0 / input_dim ** 0.5
    gate = keras.layers.Dense(units, kernel_initializer=keras.initializers.RandomNormal(stddev=0.02),
                              bias_initializer=keras.initializers.RandomUniform(-bound, bound),
                              name=kwargs.pop("name", "gate"), **kwargs)
    gate.build((None, input_dim))
    return gate


class LoRAState(NamedTuple):
    """A Dense layer's input `x`, output `y`, and the update of the adapters run so far."""

    x: Any
    update: Any
    y: Any
    last: Any = None


class LoRAComposer(Composer):
    """How LoRA and (IA)^3 adapters combine at a `dense` point (the adapters library's rules).

    Each adapter maps the running update (or, first, the layer input) to a new one: LoRA to
    `s B A u`, (IA)^3 to `u * alpha * l`. The last adapter applied combines it with the output:
    LoRA adds it, (IA)^3 multiplies. `Average` averages the updates.
    """

    kinds = ("dense",)
    supported_blocks = ("stack", "parallel", "batch_split", "average", "split", "multi_task")
    row_aligned = ("x", "update", "y")
    averaged = ("update",)

    def start(self, point_state):
        x, y = point_state
        return LoRAState(x=x, update=None, y=y)

    def single(self, name, hook, state):
        source = state.x if state.update is None else state.update
        if state.update is not None and hook.chains_updates and hook.input_dim != hook.output_dim:
            raise ValueError(f"Stack chains LoRA updates (as the adapters library does), which "
                             f"needs a square layer; {self.point.path} maps {hook.input_dim} to "
                             f"{hook.output_dim}")
        gate = None
        if getattr(hook, "gate", None) is not None:  # UniPELT: from the layer's own input
            gate = self.rows.example_mean(ops.sigmoid(hook.gate(state.x)))
        return state._replace(update=hook.update(source, first=state.update is None,
                                                 training=self.training, gate=gate), last=name)

    def finish(self, state):
        if state.last is None:
            return state.x, state.y
        return state.x, self.hooks[state.last].combine(state.y, state.update)

    def _cut(self, state, begin, end):
        return super()._cut(self._full(state), begin, end)

    def concat_states(self, states, state):
        return super().concat_states([self._full(s) for s in states], state)

    @staticmethod
    def _full(state):
        # (IA)^3 keeps its update a [units] vector while nothing cuts the batch; cut needs rows.
        if state.update is not None and len(state.update.shape) < len(state.y.shape):
            return state._replace(update=ops.ones_like(state.y) * state.update)
        return state

    def fill(self, field, state):
        return ops.zeros_like(state.y)


class LoRADense(keras.layers.Layer):
    """The low-rank update of one Dense layer: `y + scaling * B(A(dropout(x)))`.

    A hook at a `dense` point (`LoRAComposer`); `layer(x, y)` applies it alone.

    Args:
        input_dim / output_dim: the wrapped Dense layer's sizes.
        r: rank; alpha: the update is scaled by alpha / r.
        dropout: dropout rate on `x`.
        init_weights: "lora", "bert" or "ia3" (see `LoRAConfig`).
    """

    composer = LoRAComposer
    #: A stacked update passes through this one's matrices (which need a square layer).
    chains_updates = True

    def __init__(self, input_dim: int, output_dim: int, r: int = 8, alpha: float = 8,
                 dropout: float = 0.0, init_weights: str = "lora", use_gating: bool = False,
                 **kwargs):
        if init_weights not in ("lora", "bert", "ia3"):
            raise ValueError(f"init_weights must be 'lora', 'bert' or 'ia3', got {init_weights!r}")
        super().__init__(**kwargs)
        self.input_dim, self.output_dim = input_dim, output_dim
        self.r, self.alpha, self.dropout_rate = r, alpha, dropout
        self.init_weights, self.use_gating = init_weights, use_gating
        self.scaling = alpha / r
        self.dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy, name="dropout")
        self.gate = make_gate(input_dim, 1, dtype=self.dtype_policy) if use_gating else None
        self._backup = None
        self.build(None)

    def build(self, input_shape):
        if self.init_weights == "bert":
            a_init = b_init = keras.initializers.RandomNormal(stddev=0.02)
        elif self.init_weights == "ia3":
            a_init = b_init = "ones"  # what the adapters library does for this (IA)^3 name
        else:
            # PyTorch's default Linear init for A (kaiming uniform, a=sqrt(5)): U(+-1/sqrt(fan_in)).
            bound = 1.0 / self.input_dim ** 0.5
            a_init, b_init = keras.initializers.RandomUniform(-bound, bound), "zeros"
        self.lora_A = self.add_weight(shape=(self.input_dim, self.r), initializer=a_init, name="lora_A")
        self.lora_B = self.add_weight(shape=(self.r, self.output_dim), initializer=b_init, name="lora_B")
        self.built = True

    def update(self, source, first: bool = True, training=None, gate=None):
        """`scaling * B A dropout(source)`: the update of the layer input (or of a stacked update);
        a UniPELT `gate` replaces the scaling."""
        source = self.dropout(source, training=training)
        update = ops.matmul(ops.matmul(source, ops.cast(self.lora_A, source.dtype)),
                            ops.cast(self.lora_B, source.dtype))
        return update * ops.cast(self.scaling if gate is None else gate, update.dtype)

    @staticmethod
    def combine(y, update):
        return y + update

    def call(self, x, y, training=None):
        return self.combine(y, self.update(x, training=training))

    def delta(self) -> np.ndarray:
        return self.scaling * (np.asarray(self.lora_A.numpy(), np.float64)
                               @ np.asarray(self.lora_B.numpy(), np.float64))

    def reset(self, dense) -> None:
        dense.kernel.assign(self._backup)
        self._backup = None

    def merge_into(self, dense) -> None:
        if self.gate is not None:
            raise ValueError(f"{self.name}: a gated LoRA update depends on the input; it cannot "
                             "be merged (as in the adapters library)")
        self._backup = dense.kernel.numpy().copy()
        dense.kernel.assign((self._backup.astype(np.float64) + self.delta()).astype(self._backup.dtype))

    def get_config(self):
        config = super().get_config()
        config.update(input_dim=self.input_dim, output_dim=self.output_dim, r=self.r,
                      alpha=self.alpha, dropout=self.dropout_rate, init_weights=self.init_weights,
                      use_gating=self.use_gating)
        return config


class DenseHookMethod(AdapterMethod):
    """A method made of one hook layer per adapted Dense (LoRA's `LoRADense`, (IA)^3's `IA3Scale`)."""

    mergeable = True

    def __init__(self, config: LoRAConfig, bert_config, **kwargs):
        super().__init__(config, bert_config, **kwargs)
        sizes = {"attention.query": (bert_config.hidden_size,) * 2,
                 "attention.key": (bert_config.hidden_size,) * 2,
                 "attention.value": (bert_config.hidden_size,) * 2,
                 "intermediate": (bert_config.hidden_size, bert_config.intermediate_size),
                 "output": (bert_config.intermediate_size, bert_config.hidden_size)}
        self.locations, self.updates = [], []
        for i in self.layer_indices():
            for point in config.hook_points():
                name = f"layer_{i}_{point.replace('.', '_')}"
                self.updates.append(self.make_hook(*sizes[point], name=name))
                self.locations.append((i, point))
        self.built = True

    def make_hook(self, input_dim: int, output_dim: int, name: str) -> keras.layers.Layer:
        cfg = self.config
        return LoRADense(input_dim, output_dim, r=cfg.r, alpha=cfg.alpha, dropout=cfg.dropout,
                         init_weights=cfg.init_weights, use_gating=cfg.use_gating,
                         dtype=self.dtype_policy, name=name)

    def placements(self):
        return [(f"layer_{i}.{point}", hook) for hook, (i, point) in zip(self.updates, self.locations)]

    def _targets(self, encoder):
        for hook, (i, point) in zip(self.updates, self.locations):
            yield hook, encoder.layers[i].sublayer(point)

    def merge(self, encoder, adapter: str) -> None:
        """Folds every update into its Dense kernel and unregisters the hooks (they would count twice)."""
        if self.merged:
            raise ValueError(f"adapter {adapter!r} is merged already")
        targets = list(self._targets(encoder))
        for _, dense in targets:
            # One merged update per Dense: a second one would be baked into the first's backup.
            if dense.merged_adapter is not None:
                dense.merge_kernel(adapter)  # raises, naming the adapter merged there
        self.detach(encoder, adapter)
        for hook, dense in targets:
            hook.merge_into(dense)
            dense.merge_kernel(adapter)
        self.merged = True

    def reset(self, encoder, adapter: str) -> None:
        """Restores the kept kernels exactly and registers the hooks again."""
        if not self.merged:
            raise ValueError(f"adapter {adapter!r} is not merged")
        for hook, dense in self._targets(encoder):
            hook.reset(dense)
            dense.unmerge_kernel(adapter)
        self.merged = False
        self.attach(encoder, adapter)


LoRAMethod = DenseHookMethod

def is_plain_lora(values: dict) -> bool:
    """LoRA proper: added updates, no DoRA magnitude, no VeRA scales."""
    return (values.get("composition_mode", "add") != "scale" and not values.get("use_dora")
            and values.get("vera_d") is None and values.get("vera_b") is None)


register_method(LoRAConfig, LoRAMethod, identifiers={"lora": LoRAConfig()}, presets={"lora": "lora"},
                selects=is_plain_lora)
