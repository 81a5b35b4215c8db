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
import re
from typing import Any, ClassVar, NamedTuple

import keras
import numpy as np
from keras import ops

from adapter_bert.bert.hooks import Composer
from adapter_bert.configuration import AdapterConfig
from adapter_bert.methods.base import AdapterMethod, check_leave_out
from adapter_bert.methods.registry import register_method

_ATTN_TARGETS = {"q": "attention.query", "k": "attention.key", "v": "attention.value"}
#: Every Dense of a layer a LoRA-like hook can adapt, in the order they are placed; "pooler" (the
#: pooler's Dense) is the one outside the layers.
DENSE_TARGETS = ("attention.query", "attention.key", "attention.value", "attention.output",
                 "intermediate", "output")
_LAYER_TARGET = re.compile(r"^layer_(\d+)\.(" + "|".join(re.escape(t) for t in DENSE_TARGETS) + r")$")


def check_targets(values, what: str) -> None:
    """Target names are a Dense of every layer (`"attention.output"`), of one layer
    (`"layer_1.attention.output"`) or `"pooler"`; anything else is a one-line error."""
    if not isinstance(values, (list, tuple, dict)):
        raise ValueError(f"{what} must be a list of targets, got {values!r}")
    for value in values:
        if value not in DENSE_TARGETS and value != "pooler" and not _LAYER_TARGET.match(str(value)):
            raise ValueError(f"{what}: unknown target {value!r}; known: {', '.join(DENSE_TARGETS)}, "
                             "pooler, or one layer's as 'layer_<i>.<target>'")


def target_key(layer: int | None, point: str) -> str:
    """The name of one adapted Dense: `"layer_3.attention.query"`, or `"pooler"`."""
    return point if layer is None else f"layer_{layer}.{point}"


def matches(targets, layer: int | None, point: str) -> bool:
    """Whether `targets` (see `check_targets`) name the Dense `point` of `layer`."""
    return target_key(layer, point) in targets or (layer is not None and point in targets)


def pattern_value(pattern: dict, layer: int | None, point: str, default):
    """A per-target value: one layer's entry first, then the target's, else `default`."""
    return pattern.get(target_key(layer, point), pattern.get(point, default))


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
        target_modules: the Dense layers to adapt by name, replacing the location flags and
            `attn_matrices` when given: any of `DENSE_TARGETS` (in every layer not left out),
            one layer's (`"layer_1.output"`) or `"pooler"`. PEFT's LoRA reaches all of these.
        rank_pattern / alpha_pattern: per-target `r` / `alpha` overriding the defaults, keyed
            like `target_modules` (one layer's entry wins over the target's), as PEFT's.
        use_rslora: scale the update by `alpha / sqrt(r)` (rank-stabilised LoRA) instead of
            `alpha / r`.
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
    target_modules: list | None = None
    rank_pattern: dict = dataclasses.field(default_factory=dict)
    alpha_pattern: dict = dataclasses.field(default_factory=dict)
    use_rslora: bool = False

    architecture = "lora"
    own_fields: ClassVar[dict[str, Any]] = {"target_modules": None, "rank_pattern": {},
                                             "alpha_pattern": {}, "use_rslora": False}
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
        if not (self.selfattn_lora or self.intermediate_lora or self.output_lora) \
                and self.target_modules is None:
            raise ValueError("enable at least one of selfattn_lora, intermediate_lora, output_lora")
        if self.target_modules is not None:
            check_targets(self.target_modules, "target_modules")
            if not self.target_modules:
                raise ValueError("target_modules names no layer; give at least one target")
        for name, kind in (("rank_pattern", int), ("alpha_pattern", (int, float))):
            pattern = getattr(self, name)
            check_targets(pattern, name)
            bad = {k: v for k, v in pattern.items()
                   if isinstance(v, bool) or not isinstance(v, kind) or v <= 0}
            if bad:
                raise ValueError(f"{name} values must be positive numbers, got {bad}")
        custom = self.rank_pattern or self.alpha_pattern or self.use_rslora
        if custom and not is_plain_lora(self.to_dict()) or custom and self.use_gating:
            raise ValueError("rank_pattern, alpha_pattern and use_rslora apply to plain LoRA")

    def dense_targets(self, num_layers: int) -> list[tuple[int | None, str]]:
        """`(layer, target)` of every Dense this config adapts, layer by layer; `(None,
        "pooler")` last."""
        layers = self.layers(num_layers)
        if self.target_modules is None:
            return [(i, point) for i in layers for point in self.hook_points()]
        beyond = sorted({int(m.group(1)) for t in self.target_modules
                         if (m := _LAYER_TARGET.match(str(t))) and int(m.group(1)) >= num_layers})
        if beyond:
            raise ValueError(f"target_modules name layers {beyond} of a {num_layers}-layer model")
        out = [(i, point) for i in layers for point in DENSE_TARGETS
               if matches(self.target_modules, i, point)]
        return out + ([(None, "pooler")] if "pooler" in self.target_modules else [])

    def rank(self, layer: int | None, point: str) -> int:
        return pattern_value(self.rank_pattern, layer, point, self.r)

    def scaling_alpha(self, layer: int | None, point: str):
        return pattern_value(self.alpha_pattern, layer, point, self.alpha)

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
                 use_rslora: bool = False, **kwargs):
        if init_weights not in ("lora", "bert", "ia3"):
            raise ValueError(f"init_weights must be 'lora', 'bert' or 'ia3', got {init_weights!r}")
        super().__init__(**kwargs)
        self.input_dim, self.output_dim = input_dim, output_dim
        self.r, self.alpha, self.dropout_rate = r, alpha, dropout
        self.init_weights, self.use_gating, self.use_rslora = init_weights, use_gating, use_rslora
        self.scaling = alpha / (r ** 0.5 if use_rslora else r)
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
                      use_gating=self.use_gating, use_rslora=self.use_rslora)
        return config


class DenseHookMethod(AdapterMethod):
    """A method made of one hook layer per adapted Dense (LoRA's `LoRADense`, (IA)^3's `IA3Scale`)."""

    mergeable = True

    def __init__(self, config: LoRAConfig, bert_config, **kwargs):
        super().__init__(config, bert_config, **kwargs)
        hidden, intermediate = bert_config.hidden_size, bert_config.intermediate_size
        sizes = dict.fromkeys(("attention.query", "attention.key", "attention.value",
                               "attention.output", "pooler"), (hidden, hidden))
        sizes.update(intermediate=(hidden, intermediate), output=(intermediate, hidden))
        self.locations, self.updates = [], []
        for i, point in config.dense_targets(bert_config.num_hidden_layers):
            name = target_key(i, point).replace(".", "_")
            self.updates.append(self.make_hook(*sizes[point], name=name, location=(i, point)))
            self.locations.append((i, point))
        self.built = True

    def make_hook(self, input_dim: int, output_dim: int, name: str,
                  location: tuple = (None, None)) -> keras.layers.Layer:
        cfg = self.config
        return LoRADense(input_dim, output_dim, r=cfg.rank(*location), alpha=cfg.scaling_alpha(*location),
                         dropout=cfg.dropout, init_weights=cfg.init_weights,
                         use_gating=cfg.use_gating, use_rslora=cfg.use_rslora,
                         dtype=self.dtype_policy, name=name)

    def placements(self):
        return [("pooler.dense" if i is None else f"layer_{i}.{point}", hook)
                for hook, (i, point) in zip(self.updates, self.locations)]

    def _targets(self, encoder):
        for hook, (i, point) in zip(self.updates, self.locations):
            yield hook, encoder.pooler.dense if i is None else encoder.layers[i].sublayer(point)

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
