"""ReFT (Wu et al. 2024): low-rank interventions on the hidden states of a few positions.

As in the adapters library's `ReftConfig`: after every chosen layer, the first
`prefix_positions` and last `suffix_positions` real tokens of each example are replaced by

    out = dropout(h + (act(W h + b) - R h) R)        (`R`: `r x hidden`)

with one unit for the prefix positions and one for the suffix positions (`tied_weights=False`),
or one for both. LoReFT keeps `R`'s rows orthonormal (`orthogonality=True`); NoReFT does not;
DiReFT drops the `- R h` term (`subtract_projection=False`). Identifiers `loreft`, `noreft`,
`direft` (36,888 weights each on bert-base: 12 layers x 2 units x (768 + 1 + 768)).

Differences from the library, each where its behaviour is not what the method describes:
- `R` is kept orthonormal by orthonormalising a free matrix (its QR factor, signs fixed; for
  `r = 1` its row divided by its norm) rather than by torch's Householder parametrisation,
  which also needs a saved 768 x 768 buffer and breaks under weight decay.
- `subtract_projection` is a field, so a saved DiReFT reloads as DiReFT (the library's is a
  class attribute and reloads as NoReFT).
- Positions are always real tokens: a sequence shorter than `prefix_positions` is intervened on
  its tokens only (the library also changes padding positions then).

Example:
>>> from adapter_bert.model import AdapterModule
>>> from adapter_bert import AdapterConfig, BertConfig
>>> AdapterModule("r", AdapterConfig.load("loreft"), BertConfig()).num_params()
36888
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Union

import keras
from keras import ops

from adapter_bert.bert.hooks import Composer
from adapter_bert.configuration import AdapterConfig
from adapter_bert.methods.base import ACTIVATIONS, AdapterMethod, BuiltFromConfig, check_activation
from adapter_bert.methods.registry import register_method


@dataclasses.dataclass(eq=True)
class ReftConfig(AdapterConfig):
    """ReFT; field names and defaults follow the adapters library's `ReftConfig`.

    Args:
        layers: "all" or a list of layer indices to intervene after.
        prefix_positions / suffix_positions: how many first / last real tokens.
        r: rank of the intervention.
        orthogonality: keep `R`'s rows orthonormal (LoReFT).
        tied_weights: one unit for prefix and suffix positions.
        subtract_projection: subtract `R h` (LoReFT, NoReFT) or not (DiReFT).
        dropout: dropout on the intervened hidden states.
        non_linearity: activation of the learned source (None: identity).
    """

    layers: Union[str, list] = "all"
    prefix_positions: int = 3
    suffix_positions: int = 0
    r: int = 1
    orthogonality: bool = True
    tied_weights: bool = False
    subtract_projection: bool = True
    dropout: float = 0.05
    non_linearity: str | None = None

    architecture = "reft"
    own_fields = {"subtract_projection": True}
    library_only = {"init_weights_seed": None, "dtype": None, "output_reft": True}

    def validate(self):
        if self.layers != "all" and not (isinstance(self.layers, (list, tuple)) and all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.layers)):
            raise ValueError(f"layers must be 'all' or a list of layer indices, got {self.layers!r}")
        for name in ("prefix_positions", "suffix_positions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if not (self.prefix_positions or self.suffix_positions):
            raise ValueError("ReFT needs prefix_positions or suffix_positions")
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"r must be a positive integer, got {self.r!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.non_linearity is not None:
            check_activation(self.non_linearity)

    def layers_of(self, num_layers: int) -> list[int]:
        chosen = range(num_layers) if self.layers == "all" else self.layers
        bad = [i for i in chosen if i >= num_layers]
        if bad:
            raise ValueError(f"ReFT layers {bad} are beyond the model's {num_layers} layers")
        return list(chosen)


@dataclasses.dataclass(eq=True)
class LoReftConfig(ReftConfig):
    """`loreft`: three prefix positions, rank 1, orthonormal `R`."""


@dataclasses.dataclass(eq=True)
class NoReftConfig(ReftConfig):
    """`noreft`: as LoReFT with a free `R`."""

    orthogonality: bool = False


@dataclasses.dataclass(eq=True)
class DiReftConfig(ReftConfig):
    """`direft`: a free `R` and no `- R h` term."""

    orthogonality: bool = False
    subtract_projection: bool = False


class ReftState(NamedTuple):
    hidden: Any
    last: Any = None


class ReftComposer(Composer):
    """ReFT interventions in a `Stack` apply one after another; as in the library, no other
    block composes them."""

    kinds = ("hidden",)
    supported_blocks = ("stack",)
    row_aligned = ("hidden",)

    def start(self, point_state):
        return ReftState(*point_state)

    def single(self, name, hook, state):
        return state._replace(hidden=hook.intervene(state.hidden, self.rows, self.training),
                              last=name)

    def finish(self, state):
        return (state.hidden,)


class ReftUnit(keras.layers.Layer):
    """One intervention: `h + (act(W h + b) - R h) R`, then dropout."""

    def __init__(self, hidden_size: int, r: int, orthogonality: bool, subtract_projection: bool,
                 non_linearity: str | None, dropout: float, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size, self.r, self.orthogonality = hidden_size, r, orthogonality
        self.subtract_projection, self.non_linearity = subtract_projection, non_linearity
        bound = 1.0 / hidden_size ** 0.5  # PyTorch's Linear default, as the library leaves it
        uniform = keras.initializers.RandomUniform(-bound, bound)
        self.learned_source = keras.layers.Dense(r, kernel_initializer=uniform,
                                                 bias_initializer=uniform,
                                                 dtype=self.dtype_policy, name="learned_source")
        self.activation = ACTIVATIONS[non_linearity.lower()] if non_linearity else (lambda x: x)
        self.dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy, name="dropout")
        self.build(None)

    def build(self, input_shape):
        self.learned_source.build((None, self.hidden_size))
        bound = 1.0 / self.hidden_size ** 0.5
        self.projection = self.add_weight(shape=(self.r, self.hidden_size), name="projection",
                                          initializer=keras.initializers.RandomUniform(-bound, bound))
        self.built = True

    def rotation(self):
        """`R`, `[r, hidden]`: the projection, with orthonormal rows under `orthogonality`."""
        weight = self.projection
        if not self.orthogonality:
            return weight
        if self.r == 1:
            return weight / ops.sqrt(ops.sum(ops.square(weight)))
        q, upper = ops.qr(ops.transpose(weight))
        signs = ops.sign(ops.diagonal(upper))
        signs = ops.where(signs == 0, ops.ones_like(signs), signs)
        return ops.transpose(q * signs[None, :])

    def call(self, hidden, training=None):
        rotation = ops.cast(self.rotation(), hidden.dtype)
        source = self.activation(self.learned_source(hidden))
        if self.subtract_projection:
            source = source - ops.matmul(hidden, ops.transpose(rotation))
        return self.dropout(hidden + ops.matmul(source, rotation), training=training)

    def get_config(self):
        config = super().get_config()
        config.update(hidden_size=self.hidden_size, r=self.r, orthogonality=self.orthogonality,
                      subtract_projection=self.subtract_projection,
                      non_linearity=self.non_linearity, dropout=self.dropout.rate)
        return config


class ReftIntervention(BuiltFromConfig, keras.layers.Layer):
    """The interventions after one layer: a unit for the prefix and one for the suffix positions."""

    composer = ReftComposer

    def __init__(self, config: ReftConfig, hidden_size: int, **kwargs):
        super().__init__(**kwargs)
        self.config, self.hidden_size = config, hidden_size
        self.prefix_positions, self.suffix_positions = config.prefix_positions, config.suffix_positions
        self.units = [ReftUnit(hidden_size, config.r, config.orthogonality,
                               config.subtract_projection, config.non_linearity, config.dropout,
                               dtype=self.dtype_policy, name=f"units_{i}")
                      for i in range(1 if config.tied_weights else 2)]
        self.built = True

    def intervene(self, hidden, rows, training=None):
        """`hidden` with its examples' first and last real tokens intervened on."""
        position = rows.position_of(hidden)
        length = _example_lengths(rows, hidden)
        prefix = position < self.prefix_positions
        suffix = (position >= length - self.suffix_positions) & (position < length)
        out = hidden
        if self.prefix_positions:
            out = ops.where(prefix, self.units[0](hidden, training=training), out)
        if self.suffix_positions:
            out = ops.where(suffix, self.units[-1](hidden, training=training), out)
        return out


def _example_lengths(rows, like):
    """Each row's example length, broadcastable against the per-token tensor `like`."""
    if rows.token_layout:
        ids = rows.examples
        length = ops.take(rows.lengths, ids, axis=0)
    else:
        length = ops.sum(ops.cast(rows.mask, "int32"), axis=1)[:, None]
    while len(length.shape) < len(like.shape):
        length = length[..., None]
    return length


class ReftMethod(AdapterMethod):
    """ReFT for one adapter: a `ReftIntervention` after each chosen layer."""

    def __init__(self, config: ReftConfig, bert_config, **kwargs):
        super().__init__(config, bert_config, **kwargs)
        self.reft_layers = config.layers_of(bert_config.num_hidden_layers)
        self.interventions = [ReftIntervention(config, bert_config.hidden_size,
                                               dtype=self.dtype_policy, name=f"layer_{i}")
                              for i in self.reft_layers]
        self.built = True

    def layer_indices(self) -> list[int]:
        return list(self.reft_layers)

    def placements(self):
        return [(f"layer_{i}.output_states", hook)
                for i, hook in zip(self.reft_layers, self.interventions)]


register_method(ReftConfig, ReftMethod, config_classes=(LoReftConfig, NoReftConfig, DiReftConfig),
                identifiers={"loreft": LoReftConfig(), "noreft": NoReftConfig(),
                             "direft": DiReftConfig()})
