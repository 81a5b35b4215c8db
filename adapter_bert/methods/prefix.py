"""Prefix tuning (Li & Liang 2021): trained key/value vectors prepended in every attention layer.

The prefixes are reparameterised as in the paper and the adapters library: a table of
`prefix_length` embeddings goes through `Dense(bottleneck_size) -> tanh -> Dense(n_layers * 2 *
hidden)`, whose output is split per layer into keys and values. With `flat=True` the prefixes are
trained directly. `eject` evaluates the reparameterisation once and keeps only its result, a flat
prefix with the same outputs (552,960 values for bert-base instead of 9.9M parameters).

`PrefixTuningPool` owns the weights; `PrefixAttention` is its view for one layer, the hook that
`BertSelfAttention` calls with the per-head keys, values and additive mask.

Example:
>>> from adapter_bert import AdapterBertModel
>>> from adapter_bert.testing import tiny_bert_config, random_inputs
>>> model = AdapterBertModel.from_config(tiny_bert_config())
>>> model.add_adapter("prefix", config="prefix_tuning[prefix_length=5, bottleneck_size=16]")
>>> model.set_active_adapters("prefix")
>>> before = model.bert(random_inputs())["pooled_output"]
>>> model.eject_prefix_tuning("prefix")   # flat prefixes only
>>> import numpy as np
>>> bool(np.allclose(model.bert(random_inputs())["pooled_output"], before, atol=1e-5))
True
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import keras
import numpy as np
from keras import ops

from adapter_bert.bert.encoder import MASK_NEGATIVE
from adapter_bert.bert.hooks import Composer, example_means
from adapter_bert.configuration import AdapterConfig
from adapter_bert.methods.base import ACTIVATIONS, AdapterMethod, check_activation, check_leave_out
from adapter_bert.methods.lora import make_gate
from adapter_bert.methods.registry import register_method


@dataclasses.dataclass(eq=True)
class PrefixTuningConfig(AdapterConfig):
    """Prefix tuning; field names and defaults follow the adapters library.

    Args:
        encoder_prefix / cross_prefix: where prefixes go in encoder-decoder models; BERT has only
            self-attention, so `encoder_prefix` must stay True and `cross_prefix` is unused.
        leave_out: layer indices without prefixes.
        flat: train the prefixes directly instead of through the bottleneck MLP.
        prefix_length: number of prefix positions.
        bottleneck_size: width of the reparameterising MLP.
        non_linearity: activation of the MLP.
        dropout: dropout on the prefixes during training, with its own mask for each example.
        use_gating: UniPELT's gate on the prefixes: per example, the mean over its real tokens of
            `sigmoid(Dense(x))` of the attention input scales the prefix keys and values.
        shared_gating: one gate for keys and values (else one each).
        shift_positions: number the input's tokens after the prefix (position ids start at
            `prefix_length`), as Hugging Face's BERT does for cached keys and so PEFT's prefix
            tuning does; the adapters library's does not.
    """

    encoder_prefix: bool = True
    cross_prefix: bool = True
    leave_out: list = dataclasses.field(default_factory=list)
    flat: bool = False
    prefix_length: int = 30
    bottleneck_size: int = 512
    non_linearity: str = "tanh"
    dropout: float = 0.0
    use_gating: bool = False
    shared_gating: bool = True
    shift_positions: bool = False

    architecture = "prefix_tuning"
    own_fields = {"shift_positions": False}
    variant_fields = ("flat",)
    library_only = {"init_weights_seed": None}

    def validate(self):
        check_leave_out(self.leave_out)
        check_activation(self.non_linearity)
        for name in ("prefix_length", "bottleneck_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")


class PrefixTuningPool(keras.layers.Layer):
    """The prefix parameters of one adapter for all its layers.

    Args:
        prefix_length: number of prefix positions.
        num_layers: number of layers that receive a prefix.
        num_heads / head_size: attention geometry of the base.
        flat: parameters are the prefixes themselves; otherwise an embedding table and an MLP.
        bottleneck_size / non_linearity: the MLP (ignored when flat).
        dropout: dropout on the prefixes during training.
    """

    def __init__(self, prefix_length: int, num_layers: int, num_heads: int, head_size: int,
                 flat: bool = False, bottleneck_size: int = 512, non_linearity: str = "tanh",
                 dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.prefix_length, self.num_layers = prefix_length, num_layers
        self.num_heads, self.head_size = num_heads, head_size
        self.hidden_size = num_heads * head_size
        self.flat, self.bottleneck_size = flat, bottleneck_size
        self.non_linearity, self.dropout_rate = non_linearity, dropout
        self.activation = ACTIVATIONS[non_linearity.lower()]
        self.dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy, name="dropout")
        out_dim = num_layers * 2 * self.hidden_size
        if not flat:
            # PyTorch defaults, as the adapters library leaves them: N(0, 1) embeddings, uniform Linear.
            self.wte = keras.layers.Embedding(prefix_length, self.hidden_size,
                                              embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0),
                                              dtype=self.dtype_policy, name="wte")
            self.control_trans_0 = self._linear(bottleneck_size, self.hidden_size, "control_trans_0")
            self.control_trans_2 = self._linear(out_dim, bottleneck_size, "control_trans_2")
        self.build(None)

    def _linear(self, units, fan_in, name):
        bound = 1.0 / fan_in ** 0.5
        init = keras.initializers.RandomUniform(-bound, bound)
        return keras.layers.Dense(units, kernel_initializer=init, bias_initializer=init,
                                  dtype=self.dtype_policy, name=name)

    def build(self, input_shape):
        out_dim = self.num_layers * 2 * self.hidden_size
        if self.flat:
            self.control_trans = self.add_weight(
                shape=(self.prefix_length, out_dim),
                initializer=keras.initializers.RandomNormal(stddev=1.0), name="control_trans")
        else:
            self.wte.build((None,))
            self.control_trans_0.build((None, self.hidden_size))
            self.control_trans_2.build((None, self.bottleneck_size))
        self.built = True

    def layer_prefix(self, slot: int, batch_size, training=None):
        """Keys and values of one prefixed layer, each `[batch, heads, prefix_length, head_size]`.

        Args:
            slot: the layer's index among the prefixed layers.
            batch_size: the batch size (an int or a scalar tensor).
            training: dropout is applied when true.
        """
        width = 2 * self.hidden_size
        if self.flat:
            values = self.control_trans[:, slot * width:(slot + 1) * width]
        else:
            hidden = self.activation(self.control_trans_0(self.wte.embeddings))
            dense = self.control_trans_2
            # Only this layer's columns of the last projection: the same numbers as the whole
            # output sliced, without computing every layer's prefix in every layer.
            kernel = dense.kernel[:, slot * width:(slot + 1) * width]
            bias = dense.bias[slot * width:(slot + 1) * width]
            values = ops.matmul(hidden, ops.cast(kernel, hidden.dtype)) + ops.cast(bias, hidden.dtype)
        if self.dropout_rate > 0 and training is not None and training is not False:
            # Expanded to the batch before dropout, as in the adapters library: each example draws
            # its own mask rather than the whole batch sharing one. Inference keeps the cheaper
            # path below (broadcast last), which is also bit-identical to a dropout-free prefix.
            values = ops.broadcast_to(values[None], (batch_size,) + tuple(values.shape))
            values = self.dropout(values, training=training)
            values = ops.reshape(values,
                                 (-1, self.prefix_length, 2, self.num_heads, self.head_size))
            values = ops.transpose(values, (2, 0, 3, 1, 4))  # [2, batch, heads, prefix, head_size]
            return values[0], values[1]
        values = ops.reshape(values, (self.prefix_length, 2, self.num_heads, self.head_size))
        values = ops.transpose(values, (1, 2, 0, 3))  # [2, heads, prefix, head_size]
        shape = (batch_size,) + tuple(values.shape[1:])
        return ops.broadcast_to(values[0][None], shape), ops.broadcast_to(values[1][None], shape)

    def all_prefixes(self) -> np.ndarray:
        """The prefixes of every layer, `[prefix_length, num_layers * 2 * hidden]`, as computed at inference."""
        if self.flat:
            return self.control_trans.numpy()
        hidden = self.activation(self.control_trans_0(self.wte.embeddings))
        return ops.convert_to_numpy(self.control_trans_2(hidden))

    def get_config(self):
        config = super().get_config()
        config.update(prefix_length=self.prefix_length, num_layers=self.num_layers,
                      num_heads=self.num_heads, head_size=self.head_size, flat=self.flat,
                      bottleneck_size=self.bottleneck_size, non_linearity=self.non_linearity,
                      dropout=self.dropout_rate)
        return config


class PrefixState(NamedTuple):
    """Per-head keys and values `[batch, heads, seq, head_size]`, the additive mask, and how
    many prefix positions have been prepended (a static count: the sequence length is not)."""

    key: Any
    value: Any
    mask_bias: Any
    hidden: Any = None  # the attention input, per token: what UniPELT's prefix gate reads
    last: Any = None
    prefix: int = 0


class PrefixComposer(Composer):
    """How prefixes combine at an `attention` point (the adapters library's rules).

    Each adapter prepends its prefix, so `Stack(a, b)` attends over `[b's, a's, the input's]`
    keys. In `Parallel` and `BatchSplit`, rows whose prefixes are shorter are padded at the front
    with masked positions, so each row attends exactly as under its own adapter (the library pads
    with unmasked values). The library has no `Average` or `Split` of prefixes, nor has this.
    """

    kinds = ("attention",)
    supported_blocks = ("stack", "parallel", "batch_split", "multi_task")
    per_token = False
    row_aligned = ("key", "value", "mask_bias")

    def start(self, point_state):
        return PrefixState(*point_state)

    def single(self, name, hook, state):
        gate = None
        if hook.gate is not None:  # UniPELT: per example, over its real tokens
            examples = example_means(ops.sigmoid(hook.gate(state.hidden)), self.context)
            gate = examples[self.rows.first:self.rows.first + ops.shape(state.key)[0]]
        key, value, mask_bias = hook(state.key, state.value, state.mask_bias,
                                     training=self.training, gate=gate)
        return state._replace(key=key, value=value, mask_bias=mask_bias, last=name,
                              prefix=state.prefix + hook.pool.prefix_length)

    def finish(self, state):
        return state.key, state.value, state.mask_bias, state.prefix

    def compose(self, setup, point_state):
        return super().compose(setup, point_state)[:3]

    def concat_states(self, states, state):
        longest = max(s.prefix for s in states)
        padded = [self._pad(s, longest) for s in states]
        return super().concat_states(padded, state)._replace(prefix=longest)

    def concat_outputs(self, outputs):
        longest = max(o[3] for o in outputs)
        padded = [self._pad(PrefixState(*o[:3], prefix=o[3]), longest) for o in outputs]
        parts = [(p.key, p.value, p.mask_bias) for p in padded]
        return tuple(ops.concatenate(list(group), axis=0) for group in zip(*parts)) + (longest,)

    @staticmethod
    def _pad(state, longest):
        missing = longest - state.prefix
        if missing == 0:
            return state
        def front(t, fill, axis):
            shape = list(ops.shape(t))
            shape[axis] = missing
            return ops.concatenate([ops.full(tuple(shape), fill, t.dtype), t], axis=axis)

        # Keys and values are [batch, heads, positions, size]; the mask is [batch, 1, 1, positions].
        return state._replace(key=front(state.key, 0.0, 2), value=front(state.value, 0.0, 2),
                              mask_bias=front(state.mask_bias, MASK_NEGATIVE, 3), prefix=longest)


class PrefixAttention:
    """The hook of one attention layer: prepends its prefix to keys and values.

    It holds no weights of its own (they live in the pool), so it is a plain callable rather than
    a Keras layer, registered at the layer's `attention` hook point.
    """

    composer = PrefixComposer

    def __init__(self, pool: PrefixTuningPool, slot: int, gate=None):
        self.pool, self.slot, self.gate = pool, slot, gate

    def __call__(self, key, value, mask_bias, training=None, gate=None):
        prefix_key, prefix_value = self.pool.layer_prefix(self.slot, ops.shape(key)[0],
                                                          training=training)
        if gate is not None:  # [batch, 1 or 2]: the keys' gate first, the values' last
            prefix_key = prefix_key * ops.cast(gate[:, :1, None, None], prefix_key.dtype)
            prefix_value = prefix_value * ops.cast(gate[:, -1:, None, None], prefix_value.dtype)
        key = ops.concatenate([ops.cast(prefix_key, key.dtype), key], axis=2)
        value = ops.concatenate([ops.cast(prefix_value, value.dtype), value], axis=2)
        # Prefix positions are always attended: additive bias 0.
        mask_bias = ops.concatenate(
            [ops.zeros((ops.shape(mask_bias)[0], 1, 1, self.pool.prefix_length), mask_bias.dtype),
             mask_bias], axis=-1)
        return key, value, mask_bias


class PositionState(NamedTuple):
    positions: Any
    last: Any = None


class PositionShiftComposer(Composer):
    """Prefixes that number the input's tokens after themselves: in a `Stack`, their lengths add
    up, as Hugging Face's BERT counts all cached positions."""

    kinds = ("positions",)
    supported_blocks = ("stack",)
    per_token = False
    row_aligned = ("positions",)

    def start(self, point_state):
        return PositionState(point_state[0])

    def single(self, name, hook, state):
        return state._replace(positions=state.positions + hook.offset, last=name)

    def finish(self, state):
        return (state.positions,)


class PositionShift:
    """The hook of `shift_positions`: adds the prefix length to the input's position ids."""

    composer = PositionShiftComposer

    def __init__(self, offset: int):
        self.offset = offset


class PrefixTuningMethod(AdapterMethod):
    """Prefix tuning for one adapter: a pool and one `PrefixAttention` hook per prefixed layer."""

    def __init__(self, config: PrefixTuningConfig, bert_config, **kwargs):
        super().__init__(config, bert_config, **kwargs)
        if not config.encoder_prefix:
            raise ValueError("BERT has only encoder self-attention; encoder_prefix must be True")
        layers = self.layer_indices()
        self.pool = PrefixTuningPool(
            config.prefix_length, len(layers), bert_config.num_attention_heads, bert_config.head_size,
            flat=config.flat, bottleneck_size=config.bottleneck_size,
            non_linearity=config.non_linearity, dropout=config.dropout, dtype=self.dtype_policy,
            name="pool")
        # UniPELT's gates, one per prefixed layer (two outputs without shared_gating).
        self.gates = [make_gate(bert_config.hidden_size, 1 if config.shared_gating else 2,
                                dtype=self.dtype_policy, name=f"gate_{i}")
                      for i in layers] if config.use_gating else [None] * len(layers)
        self.prefixes = [(i, PrefixAttention(self.pool, slot, gate))
                         for slot, (i, gate) in enumerate(zip(layers, self.gates))]
        self.built = True

    def placements(self):
        shift = [("embeddings.positions", PositionShift(self.config.prefix_length))] \
            if self.config.shift_positions else []
        return shift + [(f"layer_{i}.attention.attention", hook) for i, hook in self.prefixes]

    def ejected(self) -> "PrefixTuningMethod":
        """A flat method with this one's prefixes evaluated once (identical outputs)."""
        flat = PrefixTuningMethod(self.config.replace(flat=True), self.bert_config,
                                  dtype=self.dtype_policy, name=self.name)
        flat.pool.control_trans.assign(self.pool.all_prefixes())
        return flat


register_method(PrefixTuningConfig, PrefixTuningMethod,
                identifiers={"prefix_tuning": PrefixTuningConfig(),
                             "prefix_tuning_flat": PrefixTuningConfig(flat=True)},
                presets={"prefix": "prefix_tuning"})
