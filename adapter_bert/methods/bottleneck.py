"""Bottleneck adapters: Houlsby (`double_seq_bn`), Pfeiffer (`seq_bn`) and parallel (`par_bn`).

An adapter projects a sublayer's output down to `hidden_size // reduction_factor`, applies a
non-linearity, projects back up and adds a residual (Houlsby et al. 2019, section 2.1). It replaces
the "add and LayerNorm" after a sublayer, i.e. it sits after the output projection and dropout and
before the residual add (the hook points `layer_<i>.attention_residual` / `output_residual`). The placement options
(`original_ln_before`, `residual_before_ln`, ...) have the meaning of the adapters library's
`BnConfig`, so a config trained there describes the same computation here. Each adapter is a hook
at a `residual` point of the encoder; `BottleneckComposer` says how several of them combine under
a composition block.

`task_layer_norm=True` gives the adapter its own copies of the LayerNorms it passes through,
initialised from the pretrained ones: Houlsby et al. train "new layer normalization parameters per
task" while the base's stay frozen and shared.

Example:
>>> from adapter_bert import AdapterBertModel
>>> from adapter_bert.testing import tiny_bert_config, random_inputs
>>> import numpy as np
>>> model = AdapterBertModel.from_config(tiny_bert_config())
>>> base = model.bert(random_inputs())["sequence_output"]
>>> model.add_adapter("a", config="double_seq_bn[reduction_factor=4, init_weights='mam_adapter']")
>>> model.set_active_adapters("a")
>>> bool(np.array_equal(model.bert(random_inputs())["sequence_output"], base))  # up starts at zero
True
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Union

import keras
from keras import ops

from adapter_bert.bert.fast_ops import LayerNorm
from adapter_bert.bert.hooks import Composer
from adapter_bert.configuration import AdapterConfig
from adapter_bert.methods.base import (ACTIVATIONS, AdapterMethod, check_activation,
                                       check_leave_out)
from adapter_bert.methods.registry import register_method

INIT_WEIGHTS = ("bert", "houlsby", "mam_adapter")


@dataclasses.dataclass(eq=True)
class BnConfig(AdapterConfig):
    """A bottleneck adapter; field names and meanings follow the adapters library.

    Args:
        mh_adapter: adapter after the multi-head attention sublayer.
        output_adapter: adapter after the feed-forward sublayer.
        reduction_factor: hidden_size / bottleneck size; a number, or a dict of layer index
            (as a string) to number with a `"default"` entry.
        non_linearity: relu, gelu (exact erf), gelu_new, swish / silu, tanh, sigmoid, leakyrelu.
        original_ln_before: add the sublayer residual and apply the layer's LayerNorm before the
            adapter (Pfeiffer).
        original_ln_after: add the sublayer residual and apply the layer's LayerNorm after it.
        ln_before / ln_after: a new LayerNorm at the adapter's input / output.
        init_weights: "bert" (normal, std 0.02), "houlsby" (truncated normal, std 1e-2) or
            "mam_adapter" (up-projection zero: the adapter starts as an exact identity).
        is_parallel: feed the adapter the sublayer's input and add it to the sublayer's output.
        scaling: a float multiplying the adapter output, "learned" (a trained scalar) or
            "channel" (a trained vector).
        residual_before_ln: take the adapter's residual before the LayerNorm (True), after it
            (False) or after the residual add ("post_add").
        adapter_residual_before_ln: add the residual before `ln_after`.
        leave_out: layer indices without adapters.
        dropout: dropout on the adapter output.
        task_layer_norm: own, trained copies of the layer's LayerNorms (Houlsby et al.).
        use_gating: UniPELT's gate: the output scaled by the mean over the example's real tokens
            of `sigmoid(Dense(1)(input))`.
        phm_layer: Compacter's parameterized hypercomplex projections instead of Dense ones
            (`use_phm` is accepted as its other name); the `phm_*` options and
            `factorized_phm_W`, `shared_W_phm`, `shared_phm_rule`, `factorized_phm_rule`,
            `learn_phm`, `hypercomplex_nonlinearity` are described in
            `adapter_bert.methods.compacter`.
    """

    mh_adapter: bool = False
    output_adapter: bool = True
    reduction_factor: Union[float, dict] = 16
    non_linearity: str = "relu"
    original_ln_before: bool = False
    original_ln_after: bool = True
    ln_before: bool = False
    ln_after: bool = False
    init_weights: str = "bert"
    is_parallel: bool = False
    scaling: Union[float, str] = 1.0
    use_gating: bool = False
    residual_before_ln: Union[bool, str] = True
    adapter_residual_before_ln: bool = False
    leave_out: list = dataclasses.field(default_factory=list)
    dropout: float = 0.0
    task_layer_norm: bool = False
    phm_layer: bool = False
    phm_dim: int = 4
    factorized_phm_W: bool = True
    shared_W_phm: bool = False
    shared_phm_rule: bool = True
    factorized_phm_rule: bool = False
    phm_c_init: str = "normal"
    phm_init_range: float = 0.0001
    learn_phm: bool = True
    hypercomplex_nonlinearity: str = "glorot-uniform"
    phm_rank: int = 1
    phm_bias: bool = True
    inv_adapter: str | None = None
    inv_adapter_reduction_factor: float | None = None

    architecture = "bottleneck"
    own_fields = {"task_layer_norm": False}
    location_flags = ("mh_adapter", "output_adapter")
    combines_at_other_locations = True
    union_label = "bottleneck adapters"
    variant_fields = ("scaling",)
    # The library's cross-attention and stochastic-depth variants and its init seed:
    # adapter_bert has none of them.
    library_only = {"init_weights_seed": None, "cross_adapter": False, "stochastic_depth": 0.0}
    aliases = {"use_phm": "phm_layer"}

    def validate(self):
        check_activation(self.non_linearity)
        check_leave_out(self.leave_out)
        if self.init_weights not in INIT_WEIGHTS:
            raise ValueError(f"init_weights {self.init_weights!r} is not one of {INIT_WEIGHTS}")
        factors = (self.reduction_factor.values() if isinstance(self.reduction_factor, dict)
                   else [self.reduction_factor])
        for factor in factors:
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 0:
                raise ValueError(f"reduction_factor must be positive, got {self.reduction_factor!r}")
        if not (isinstance(self.scaling, (int, float)) or self.scaling in ("learned", "channel")):
            raise ValueError(f"scaling must be a number, 'learned' or 'channel', got {self.scaling!r}")
        if self.residual_before_ln not in (True, False, "post_add"):
            raise ValueError(f"residual_before_ln must be True, False or 'post_add', got "
                             f"{self.residual_before_ln!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not (self.mh_adapter or self.output_adapter):
            raise ValueError("a bottleneck adapter needs mh_adapter or output_adapter")
        if self.phm_layer:
            _PROJECTIONS["phm"].validate(self)
        if self.inv_adapter is not None:
            if self.inv_adapter not in _INVERTIBLES:
                raise ValueError(f"inv_adapter must be one of {sorted(_INVERTIBLES)} or None, got "
                                 f"{self.inv_adapter!r}")
            factor = self.inv_adapter_reduction_factor
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 0:
                raise ValueError(f"inv_adapter_reduction_factor must be positive with an "
                                 f"inv_adapter, got {factor!r}")

    @classmethod
    def _without_library_only(cls, values: dict) -> dict:
        values = dict(values)
        legacy = values.pop("invertible_adapter", None)
        if isinstance(legacy, dict):  # the library's older spelling of the two inv_ fields
            values.setdefault("inv_adapter", legacy.get("block_type"))
            values.setdefault("inv_adapter_reduction_factor", legacy.get("reduction_factor"))
        elif legacy is not None:
            raise ValueError(f"invertible_adapter must be a dict with block_type and "
                             f"reduction_factor, got {legacy!r}")
        return super()._without_library_only(values)

    def bottleneck_size(self, layer: int, hidden_size: int) -> int:
        factor = self.reduction_factor
        if isinstance(factor, dict):
            if str(layer) in factor:
                factor = factor[str(layer)]
            elif "default" in factor:
                factor = factor["default"]
            else:
                raise ValueError(f"reduction_factor has no entry for layer {layer} and no 'default'")
        size = int(hidden_size // factor)
        if size < 1:
            raise ValueError(f"reduction_factor {factor} leaves no bottleneck on a "
                             f"{hidden_size}-wide model (at most {hidden_size})")
        return size


@dataclasses.dataclass(eq=True)
class SeqBnConfig(BnConfig):
    """`seq_bn`: Pfeiffer et al. (2020), one adapter after the feed-forward sublayer."""

    original_ln_before: bool = True
    original_ln_after: bool = True
    residual_before_ln: Union[bool, str] = True
    adapter_residual_before_ln: bool = False
    ln_before: bool = False
    ln_after: bool = False
    mh_adapter: bool = False
    output_adapter: bool = True
    non_linearity: str = "relu"
    reduction_factor: Union[float, dict] = 16


@dataclasses.dataclass(eq=True)
class DoubleSeqBnConfig(BnConfig):
    """`double_seq_bn`: Houlsby et al. (2019), adapters after attention and after the feed-forward."""

    original_ln_before: bool = False
    original_ln_after: bool = True
    residual_before_ln: Union[bool, str] = True
    adapter_residual_before_ln: bool = False
    ln_before: bool = False
    ln_after: bool = False
    mh_adapter: bool = True
    output_adapter: bool = True
    non_linearity: str = "swish"
    reduction_factor: Union[float, dict] = 16


@dataclasses.dataclass(eq=True)
class ParBnConfig(BnConfig):
    """`par_bn`: He et al. (2021), an adapter in parallel to the feed-forward sublayer."""

    original_ln_before: bool = False
    original_ln_after: bool = True
    ln_before: bool = False
    ln_after: bool = False
    mh_adapter: bool = False
    output_adapter: bool = True
    non_linearity: str = "relu"
    reduction_factor: Union[float, dict] = 2
    init_weights: str = "mam_adapter"
    is_parallel: bool = True
    scaling: Union[float, str] = 4.0


def _kernel_initializers(init_weights: str, fan_in: int):
    if init_weights == "bert":
        normal = keras.initializers.RandomNormal(stddev=0.02)
        return normal, normal
    if init_weights == "houlsby":
        # Houlsby et al.: "zero-mean Gaussian with standard deviation 1e-2, truncated to two std".
        trunc = keras.initializers.TruncatedNormal(stddev=1e-2)
        return trunc, trunc
    # mam_adapter: PyTorch's default Linear init for the down-projection, zeros for the up one.
    bound = 1.0 / fan_in ** 0.5
    return keras.initializers.RandomUniform(-bound, bound), keras.initializers.Zeros()


class BottleneckState(NamedTuple):
    """What bottleneck adapters pass along inside one residual hook point.

    `hidden` is the adapter input or output, `residual` the adapter's own residual, `x` the
    sublayer input (the transformer residual), `h` the sublayer output the point started from,
    `up` the last adapter's scaled up-projection (what AdapterFusion attends over).
    """

    hidden: Any
    residual: Any
    x: Any
    h: Any
    up: Any = None
    last: Any = None


class BottleneckComposer(Composer):
    """How bottleneck adapters combine at a `residual` point (the adapters library's rules).

    Each adapter acts in three steps: `pre_forward` (its LayerNorm placement and residual),
    the bottleneck itself, and `post_forward` (the transformer residual and LayerNorm), which
    only the last adapter of a run applies. So `Stack(a, b)` is a's pre_forward and bottleneck,
    then b's pre_forward and bottleneck on a's output, then b's post_forward; for Pfeiffer
    adapters (`original_ln_before`) each stacked adapter adds the sublayer input and applies the
    LayerNorm again, as in the library. `Average` averages the adapters' outputs (after their
    own residual) before the last member's post_forward.
    """

    kinds = ("residual",)
    supported_blocks = ("stack", "parallel", "batch_split", "average", "split", "fuse",
                        "multi_task")
    row_aligned = ("hidden", "residual", "x", "h", "up")
    averaged = ("hidden",)

    def compose_fuse(self, block, state, rows):
        """AdapterFusion: the last member's input handling (with the fusion query), each member's
        bottleneck on that input, the fusion layer over their up-projections, and the last
        member's output handling, as in the adapters library."""
        fusion = self.hooks.get(block.name)
        if fusion is None:
            raise ValueError(f"{block}: no AdapterFusion layer {block.name!r} at {self.point.path}")
        last = block.last()
        adapter = self.hooks[last]
        hidden, residual, query = adapter.pre_forward(
            state.hidden, state.x, self.layer_norm,
            query_before_ln=fusion.fusion_config.query_before_ln)
        state = state._replace(hidden=hidden, residual=residual)
        ups = []
        for child in block.children:
            if isinstance(child, str):
                ups.append(self.single(child, self.hooks[child], state).up)
            else:
                ups.append(self._walk(child, state, rows).up)
        fused = fusion(query, ops.stack(ups, axis=-2), residual, training=self.training)
        return state._replace(hidden=fused, up=None, last=last)

    def start(self, point_state):
        h, x, self.layer_norm = point_state
        return BottleneckState(hidden=h, residual=x, x=x, h=h)

    def pre(self, name, adapter, state):
        hidden, residual = adapter.pre_forward(state.hidden, state.x, self.layer_norm)
        return state._replace(hidden=hidden, residual=residual)

    def single(self, name, adapter, state):
        hidden, up = adapter.adapter_forward(state.hidden, state.residual, training=self.training,
                                             example_mean=self.rows.example_mean)
        return state._replace(hidden=hidden, up=up, last=name)

    def average(self, states, weights, state):
        averaged = super().average(states, weights, state)
        return averaged._replace(last=self.averaged_last(states, weights))

    def finish(self, state):
        last = state.last
        if last is None:  # no adapter ran on these rows
            return (self.layer_norm(state.hidden + state.x),)
        if isinstance(last, str):
            return (self.hooks[last].post_forward(state.hidden, state.h, state.x, self.layer_norm),)
        # An Average: the last member's post_forward, as in the library; where members bring
        # their own LayerNorms (task_layer_norm), the weighted mean of those LayerNorms, so that
        # weights [1, 0] give the first member exactly.
        members = list(last[1])
        final = _final_adapter(last)
        if final is None:
            return (self.layer_norm(state.hidden + state.x),)
        adapter = self.hooks[final]
        names = [n for n, _ in members]
        if not all(isinstance(n, str) for n in names) or all(
                self.hooks[n].task_layer_norm is None for n in names):
            return (adapter.post_forward(state.hidden, state.h, state.x, self.layer_norm),)
        total = sum(w for _, w in members) or 1.0
        norms = [(self.hooks[n]._norm(self.layer_norm), w / total) for n, w in members]

        def blended(z):
            return sum(norm(z) * ops.cast(w, z.dtype) for norm, w in norms)

        return (adapter.post_forward(state.hidden, state.h, state.x, self.layer_norm, norm=blended),)

    def fill(self, field, state):
        return ops.zeros_like(state.hidden)


# Projections other than Dense that a method module provides for bottleneck adapters, by name
# (`adapter_bert.methods.compacter` registers "phm"), so that this module imports none of them.
_PROJECTIONS: dict = {}


def register_projection(name: str, provider) -> None:
    """Lets a method module provide bottleneck projections: `provider.layer(...)`,
    `provider.shared(...)` and `provider.validate(config)`."""
    _PROJECTIONS[name] = provider


#: `inv_adapter` name -> layer class `(hidden_size, reduction_factor, non_linearity, **kwargs)`
#: with `inverse`, filled by `adapter_bert.methods.invertible`.
_INVERTIBLES: dict = {}


def register_invertible(name: str, layer_class) -> None:
    """Lets a method module provide an invertible adapter for `inv_adapter=name`."""
    _INVERTIBLES[name] = layer_class


def _final_adapter(last):
    """The adapter applied last in a walk's `last` (which nests for blocks inside an Average)."""
    while last is not None and not isinstance(last, str):
        kind, groups = last
        last = groups[-1][0] if kind == "average" else groups[-1][-1]
    return last


class BottleneckAdapter(keras.layers.Layer):
    """One bottleneck adapter at one location: the replacement for a sublayer's add-and-LayerNorm.

    It acts in the adapters library's three steps, which `BottleneckComposer` strings together
    when several adapters are active: `pre_forward` (LayerNorm placement, the adapter's
    residual), `adapter_forward` (down, non-linearity, up, scaling, dropout, residual) and
    `post_forward` (the transformer's residual and LayerNorm). Called alone,
    `adapter(sublayer_output, sublayer_input, layer_norm)` runs all three.

    Args:
        hidden_size: width of the residual stream.
        bottleneck_size: width of the down-projection.
        config: the `BnConfig` that decides placement, init and scaling.
        layer_norm_eps: epsilon of the task LayerNorm copies (the base's own epsilon).
        shared: the adapter's shared PHM weights (Compacter), owned by its method.
    """

    composer = BottleneckComposer

    def __init__(self, hidden_size: int, bottleneck_size: int, config: BnConfig,
                 layer_norm_eps: float = 1e-12, shared=None, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.bottleneck_size = bottleneck_size
        self.adapter_config = config
        self.layer_norm_eps = layer_norm_eps
        self.activation = ACTIVATIONS[config.non_linearity.lower()]
        down_init, up_init = _kernel_initializers(config.init_weights, hidden_size)
        self.adapter_norm_before = (LayerNorm(
            epsilon=1e-5, dtype=self.dtype_policy, name="adapter_norm_before")
            if config.ln_before else None)
        if config.phm_layer:  # Compacter: see adapter_bert.methods.compacter
            phm = _PROJECTIONS["phm"]
            self.down = phm.layer(hidden_size, bottleneck_size, "down", config, shared,
                                  dtype=self.dtype_policy, name="down")
            self.up = phm.layer(bottleneck_size, hidden_size, "up", config, shared,
                                dtype=self.dtype_policy, name="up")
        else:
            self.down = keras.layers.Dense(bottleneck_size, kernel_initializer=down_init,
                                           dtype=self.dtype_policy, name="down")
            self.up = keras.layers.Dense(hidden_size, kernel_initializer=up_init,
                                         dtype=self.dtype_policy, name="up")
        self.adapter_norm_after = (LayerNorm(
            epsilon=1e-5, dtype=self.dtype_policy, name="adapter_norm_after")
            if config.ln_after else None)
        self.task_layer_norm = (LayerNorm(
            epsilon=layer_norm_eps, dtype=self.dtype_policy, name="task_layer_norm")
            if config.task_layer_norm else None)
        self.dropout = keras.layers.Dropout(config.dropout, dtype=self.dtype_policy, name="dropout")
        # UniPELT's gate, initialised as the library does for init_weights "bert".
        self.gate = (keras.layers.Dense(1, kernel_initializer=keras.initializers.RandomNormal(stddev=0.02),
                                        dtype=self.dtype_policy, name="gate")
                     if config.use_gating else None)
        self.build((None, None, hidden_size))

    def build(self, input_shape):
        for norm in (self.adapter_norm_before, self.adapter_norm_after, self.task_layer_norm):
            if norm is not None:
                norm.build(input_shape)
        self.down.build(input_shape)
        self.up.build(tuple(input_shape[:-1]) + (self.bottleneck_size,))
        if self.gate is not None:
            self.gate.build(input_shape)
        scaling = self.adapter_config.scaling
        if scaling == "learned":
            self.scale = self.add_weight(shape=(1,), initializer="ones", name="scaling")
        elif scaling == "channel":
            self.scale = self.add_weight(shape=(self.hidden_size,), initializer="ones", name="scaling")
        else:
            self.scale = None
        self.built = True

    def init_task_layer_norm(self, base_norm: keras.layers.LayerNormalization) -> None:
        """Copies the pretrained LayerNorm into this adapter's own trained copy."""
        if self.task_layer_norm is not None:
            self.task_layer_norm.gamma.assign(base_norm.gamma)
            self.task_layer_norm.beta.assign(base_norm.beta)

    def _norm(self, layer_norm):
        return self.task_layer_norm if self.task_layer_norm is not None else layer_norm

    def pre_forward(self, hidden, sublayer_input, layer_norm, query_before_ln: bool | None = None):
        """`(adapter input, adapter residual)` from the current hidden state.

        With `query_before_ln` (True or False: AdapterFusion's option), also the fusion query:
        the hidden state before the LayerNorm placement, or the adapter input.
        """
        cfg = self.adapter_config
        if cfg.is_parallel:
            out = (sublayer_input, sublayer_input)
            return out if query_before_ln is None else out + (sublayer_input,)
        before = hidden
        residual = hidden if cfg.residual_before_ln is True else None
        if cfg.original_ln_before:
            hidden = hidden + sublayer_input
            if cfg.residual_before_ln == "post_add":
                residual = hidden
            hidden = self._norm(layer_norm)(hidden)
        if cfg.residual_before_ln is False or residual is None:
            residual = hidden
        if query_before_ln is None:
            return hidden, residual
        return hidden, residual, before if query_before_ln else hidden

    def adapter_forward(self, x, residual, training=None, example_mean=None):
        """`(output, up)`: the bottleneck on `x` with the adapter's residual (none when parallel).

        With `use_gating`, `example_mean` averages the gate over each example's real tokens
        (default: over axis 1 of `[batch, seq, width]` inputs).
        """
        cfg = self.adapter_config
        gate_input = x
        if self.adapter_norm_before is not None:
            x = self.adapter_norm_before(x)
        up = self.up(self.activation(self.down(x)))
        up = up * (ops.cast(self.scale, up.dtype) if self.scale is not None else cfg.scaling)
        out = self.dropout(up, training=training)
        if self.gate is not None:
            gate = ops.sigmoid(self.gate(gate_input))
            gate = (example_mean or (lambda v: ops.mean(v, axis=1, keepdims=True)))(gate)
            out = out * ops.cast(gate, out.dtype)
        if cfg.is_parallel:
            if self.adapter_norm_after is not None:
                out = self.adapter_norm_after(out)
            return out, up
        if cfg.adapter_residual_before_ln:
            out = out + residual
        if self.adapter_norm_after is not None:
            out = self.adapter_norm_after(out)
        if not cfg.adapter_residual_before_ln:
            out = out + residual
        return out, up

    def post_forward(self, hidden, sublayer_output, sublayer_input, layer_norm, norm=None):
        """The transformer residual (and the sublayer output, for a parallel adapter).

        `norm` replaces the LayerNorm this adapter would apply (an `Average`'s blend).
        """
        cfg = self.adapter_config
        if cfg.is_parallel:
            hidden = hidden + sublayer_output
        if not cfg.original_ln_after:
            return hidden
        return (norm or self._norm(layer_norm))(hidden + sublayer_input)

    def call(self, sublayer_output, sublayer_input, layer_norm, training=None):
        hidden, residual = self.pre_forward(sublayer_output, sublayer_input, layer_norm)
        hidden, _ = self.adapter_forward(hidden, residual, training=training)
        return self.post_forward(hidden, sublayer_output, sublayer_input, layer_norm)

    def get_config(self):
        config = super().get_config()
        config.update(hidden_size=self.hidden_size, bottleneck_size=self.bottleneck_size,
                      config=self.adapter_config.config_dict(), layer_norm_eps=self.layer_norm_eps)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["config"] = AdapterConfig.load(config["config"])
        return cls(**config)


# Each config flag's hook point and the base LayerNorm a task copy starts from.
_LOCATIONS = {"mh_adapter": ("attention_residual", "attention_ln"),
              "output_adapter": ("output_residual", "output_ln")}


class BottleneckMethod(AdapterMethod):
    """All `BottleneckAdapter`s of one adapter: per layer, one at each configured location."""

    def __init__(self, config: BnConfig, bert_config, **kwargs):
        super().__init__(config, bert_config, **kwargs)
        self.locations = []  # (layer index, hook point, base LayerNorm)
        self.adapters = []
        # Compacter's rules (and W) shared by all of this adapter's PHM layers: once per model.
        self.shared = (_PROJECTIONS["phm"].shared(config, bert_config.hidden_size,
                                                  dtype=self.dtype_policy, name="shared")
                       if config.phm_layer else None)
        for i in self.layer_indices():
            size = config.bottleneck_size(i, bert_config.hidden_size)
            for flag, (point, norm) in _LOCATIONS.items():
                if getattr(config, flag):
                    self.adapters.append(BottleneckAdapter(
                        bert_config.hidden_size, size, config,
                        layer_norm_eps=bert_config.layer_norm_eps, shared=self.shared,
                        dtype=self.dtype_policy, name=f"layer_{i}_{flag}"))
                    self.locations.append((i, point, norm))
        # MAD-X's invertible adapter on the embedding output: see adapter_bert.methods.invertible
        self.invertible = (_INVERTIBLES[config.inv_adapter](
            bert_config.hidden_size, config.inv_adapter_reduction_factor, config.non_linearity,
            dtype=self.dtype_policy, name="invertible") if config.inv_adapter else None)
        self.built = True

    def init_from_base(self, encoder, checkpoint_dir=None) -> None:
        """Initialises the task LayerNorm copies from the pretrained LayerNorms."""
        for adapter, (i, _, norm) in zip(self.adapters, self.locations):
            adapter.init_task_layer_norm(getattr(encoder.layers[i], norm))

    def placements(self):
        placed = [(f"layer_{i}.{point}", adapter)
                  for adapter, (i, point, _) in zip(self.adapters, self.locations)]
        if self.invertible is not None:
            placed.append(("embeddings.output", self.invertible))
        return placed


# --- the training command's presets -----------------------------------------------------------

#: Houlsby et al.'s width when `--bottleneck_size` is not given.
HOULSBY_DEFAULT_BOTTLENECK = 64


def _reduction_factor(hidden_size: int, bottleneck_size: int) -> float:
    if bottleneck_size <= 0 or bottleneck_size > hidden_size:
        raise ValueError(f"bottleneck_size must be in 1..{hidden_size} (the hidden size), "
                         f"got {bottleneck_size}")
    return hidden_size / bottleneck_size


def houlsby_preset(hidden_size: int, bottleneck_size: int | None = None,
                   non_linearity: str | None = None) -> str:
    """`--method houlsby`, the paper's setup: adapters after attention and feed-forward,
    near-identity init (std 1e-2) and per-task LayerNorm copies; `--bottleneck_size` sets the width.

    Example:
    >>> houlsby_preset(768, bottleneck_size=64, non_linearity="gelu")
    "double_seq_bn[reduction_factor=12.0, non_linearity='gelu', init_weights='houlsby', task_layer_norm=True]"
    """
    size = bottleneck_size or HOULSBY_DEFAULT_BOTTLENECK
    return (f"double_seq_bn[reduction_factor={_reduction_factor(hidden_size, size)}, "
            f"non_linearity={non_linearity or 'gelu'!r}, init_weights='houlsby', "
            "task_layer_norm=True]")


def pfeiffer_preset(hidden_size: int, bottleneck_size: int | None = None,
                    non_linearity: str | None = None) -> str:
    """`--method pfeiffer`: `seq_bn`, resized by `--bottleneck_size` and `--non_linearity` if given.

    Example:
    >>> pfeiffer_preset(768), pfeiffer_preset(768, bottleneck_size=48)
    ('seq_bn', 'seq_bn[reduction_factor=16.0]')
    """
    options = []
    if bottleneck_size:
        options.append(f"reduction_factor={_reduction_factor(hidden_size, bottleneck_size)}")
    if non_linearity:
        options.append(f"non_linearity={non_linearity!r}")
    return "seq_bn" + (f"[{', '.join(options)}]" if options else "")


register_method(
    BnConfig, BottleneckMethod, config_classes=(SeqBnConfig, DoubleSeqBnConfig, ParBnConfig),
    identifiers={"seq_bn": SeqBnConfig(), "double_seq_bn": DoubleSeqBnConfig(),
                 "par_bn": ParBnConfig(), "scaled_par_bn": ParBnConfig(scaling="learned"),
                 # The adapters library's older names, still accepted there.
                 "pfeiffer": SeqBnConfig(), "houlsby": DoubleSeqBnConfig(),
                 "parallel": ParBnConfig(), "scaled_parallel": ParBnConfig(scaling="learned")},
    presets={"houlsby": houlsby_preset, "pfeiffer": pfeiffer_preset, "parallel": "par_bn"})
