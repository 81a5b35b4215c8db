"""The frozen BERT base as Keras 3 layers (`keras.layers` / `keras.ops`).

Two speed-ups are TensorFlow-only and switch themselves off on other Keras backends: skipping
padding (`TokenIndex`) and the hand-written LayerNorm / GELU gradients (`fast_ops`).

The math follows Hugging Face's `BertModel` (post-LayerNorm, exact-erf GELU) so that a checkpoint
loads to the same outputs. Every sublayer an adapter method needs is a named attribute with a
`HookPoint` (see `adapter_bert.bert.hooks`, the hook API): methods register hooks there by
adapter name through the layers' `add_hook` / `remove_hook`, and the encoder's active setup
(`BertEncoder.set_active_setup`) decides which of them run. Hooks are not Keras-tracked state: the
layers that own adapter weights belong to the `AdapterBertModel`, so the base never holds task
weights and stays shareable.
"""

from __future__ import annotations

import keras
from keras import ops

from adapter_bert.bert.config import BertConfig
from adapter_bert.bert.fast_ops import (LayerNorm, attend, gelu, plain_attention,
                                        tensorflow_backend)
from adapter_bert.bert.hooks import EncoderHooks, ForwardContext, HookPoint

# Additive mask value for padded keys. -10000 is what Google's BERT uses; it is representable in
# float16 and bfloat16, and exp(-10000) underflows to exactly 0 in every float type.
MASK_NEGATIVE = -10000.0


def _initializer(config_range: float):
    return keras.initializers.TruncatedNormal(stddev=config_range)


def padding_mask_bias(attention_mask, dtype):
    """[batch, seq] 1/0 mask -> [batch, 1, 1, seq] additive bias (0 for tokens, -1e4 for padding)."""
    mask = ops.cast(attention_mask, dtype)
    return (1.0 - mask)[:, None, None, :] * MASK_NEGATIVE


class TokenIndex:
    """Where the real tokens of a padded `[batch, seq]` batch are, to skip padding in dense layers.

    Every sublayer of a BERT layer but attention acts on each token alone, so it can run on the
    `[n_tokens, hidden]` rows of real tokens instead of all `batch * seq` padded rows: on MRPC's
    dynamically padded batches that is about a third fewer rows for every matmul. Attention gets
    its queries, keys and values scattered back to `[batch, seq, hidden]` (zeros at padding, which
    the mask bias hides) and its output gathered again. Outputs at real tokens are those of the
    padded computation (up to float rounding); at padding positions they are zeros.

    Example:
    >>> import numpy as np
    >>> index = TokenIndex(np.array([[1, 1, 0], [1, 0, 0]]))
    >>> x = np.arange(12, dtype="float32").reshape(2, 3, 2)
    >>> index.gather(x).numpy().tolist()
    [[0.0, 1.0], [2.0, 3.0], [6.0, 7.0]]
    >>> index.scatter(index.gather(x)).numpy()[:, :, 0].tolist()
    [[0.0, 2.0, 0.0], [6.0, 0.0, 0.0]]
    """

    def __init__(self, attention_mask):
        import tensorflow as tf

        is_token = tf.reshape(tf.cast(tf.convert_to_tensor(attention_mask) > 0, tf.int32), [-1])
        self._shape = tf.shape(attention_mask)
        # Both directions are row gathers with hand-written gradients (each the other's gather):
        # TensorFlow's ScatterNd, the autodiff partner of gather_nd, ran about 4x slower per byte
        # on CPU (bench/profile_step.py).
        self._rows = tf.cast(tf.where(is_token > 0)[:, 0], tf.int32)  # [n_tokens] positions
        self._slots = tf.cumsum(is_token) * is_token  # [batch * seq]: 1 + token's row, 0 at padding
        #: [batch] real tokens per example, and [n_tokens] each token's position in its example
        #: (what composition blocks that cut the batch or the sequence need).
        self.lengths = tf.reduce_sum(tf.reshape(is_token, self._shape), axis=1)
        self.positions = self._rows % self._shape[1]
        self.examples = self._rows // self._shape[1]  # [n_tokens] each token's example

    def _take_rows(self, flat):
        import tensorflow as tf

        return tf.gather(flat, self._rows)

    def _place_rows(self, rows):
        import tensorflow as tf

        zero_row = tf.zeros(tf.stack([1, tf.shape(rows)[-1]]), rows.dtype)
        return tf.gather(tf.concat([zero_row, rows], 0), self._slots)

    def gather(self, x):
        """`[batch, seq, width]` -> `[n_tokens, width]`."""
        import tensorflow as tf

        @tf.custom_gradient
        def take(flat):
            return self._take_rows(flat), self._place_rows

        return take(tf.reshape(x, tf.stack([-1, tf.shape(x)[-1]])))

    def scatter(self, x):
        """`[n_tokens, width]` -> `[batch, seq, width]`, zeros at padding."""
        import tensorflow as tf

        @tf.custom_gradient
        def place(rows):
            return self._place_rows(rows), self._take_rows

        x = tf.convert_to_tensor(x)
        return tf.reshape(place(x), tf.concat([self._shape, tf.shape(x)[-1:]], 0))


class HookedDense(keras.layers.Dense):
    """A Dense layer with a `dense` hook point on its output (LoRA, (IA)^3, BitFit).

    It also records which adapter, if any, is merged into its kernel (`merge_kernel` /
    `unmerge_kernel`), so that two merges never stack into one kept copy of the kernel.

    Example:
    >>> import numpy as np
    >>> dense = HookedDense(4)
    >>> y = dense(np.ones((2, 3), "float32"))
    >>> dense.hook_point.kind, dense.merged_adapter
    ('dense', None)
    """

    def __init__(self, units, **kwargs):
        super().__init__(units, **kwargs)
        self.hook_point = HookPoint(self.name, "dense")
        self._merged_adapter = None

    def call(self, inputs, training=None):
        outputs = super().call(inputs)
        return self.hook_point.run(inputs, outputs, training=training)[1]

    @property
    def merged_adapter(self) -> str | None:
        """The adapter whose update is merged into the kernel, or None."""
        return self._merged_adapter

    def merge_kernel(self, adapter: str) -> None:
        """Records that `adapter` merges into this kernel; a second merge is a ValueError."""
        if self._merged_adapter is not None:
            raise ValueError(f"{self.hook_point.path} already holds merged adapter "
                             f"{self._merged_adapter!r}; reset it first")
        self._merged_adapter = adapter

    def unmerge_kernel(self, adapter: str) -> None:
        """Records that `adapter`'s merge was undone; a ValueError if it was not merged here."""
        if self._merged_adapter != adapter:
            raise ValueError(f"adapter {adapter!r} is not merged into {self.hook_point.path}")
        self._merged_adapter = None


class HookedLayerNorm(LayerNorm):
    """A LayerNormalization with a `norm` hook point on its output (BitFit's beta offsets)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hook_point = HookPoint(self.name, "norm")

    def call(self, inputs):
        outputs = super().call(inputs)
        return self.hook_point.run(inputs, outputs)[1]


class _HookOwner:
    """The hook API of a layer: its points by local name (`attention.value`, `output_ln`, ...).

    `add_hook(point, adapter, hook)` registers, `remove_hook(point, adapter)` unregisters and
    `hooks(point)` lists the adapters with a hook at a point; each fails loudly on a name it does
    not know (see `adapter_bert.bert.hooks`).
    """

    def hook_points(self) -> dict[str, HookPoint]:
        raise NotImplementedError

    def hook_point(self, name: str) -> HookPoint:
        points = self.hook_points()
        if name not in points:
            raise KeyError(f"unknown hook point {name!r} of {self.name}; known: "
                           + ", ".join(points))
        return points[name]

    def add_hook(self, point: str, adapter: str, hook) -> None:
        self.hook_point(point).add(adapter, hook)

    def remove_hook(self, point: str, adapter: str) -> None:
        self.hook_point(point).remove(adapter)

    def hooks(self, point: str) -> tuple[str, ...]:
        return self.hook_point(point).adapters()

    def _name_points(self, prefix: str, layer: int | None) -> None:
        for name, point in self.hook_points().items():
            point.path, point.layer = f"{prefix}{name}", layer


class BertEmbeddings(_HookOwner, keras.layers.Layer):
    """Word + position + token-type embeddings, LayerNorm, dropout."""

    def __init__(self, vocab_size, hidden_size, max_position_embeddings, type_vocab_size,
                 layer_norm_eps=1e-12, dropout=0.1, initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.layer_norm_eps = layer_norm_eps
        self.dropout_rate = dropout
        self.initializer_range = initializer_range
        init = _initializer(initializer_range)
        self.word_embeddings = keras.layers.Embedding(
            vocab_size, hidden_size, embeddings_initializer=init, dtype=self.dtype_policy,
            name="word_embeddings")
        self.position_embeddings = keras.layers.Embedding(
            max_position_embeddings, hidden_size, embeddings_initializer=init,
            dtype=self.dtype_policy, name="position_embeddings")
        self.token_type_embeddings = keras.layers.Embedding(
            type_vocab_size, hidden_size, embeddings_initializer=init, dtype=self.dtype_policy,
            name="token_type_embeddings")
        self.layer_norm = HookedLayerNorm(
            epsilon=layer_norm_eps, dtype=self.dtype_policy, name="layer_norm")
        self.dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy, name="dropout")
        self.output_point = HookPoint("output", "embeddings")
        # The word embeddings, before positions and token types (prompts that take positions).
        self.words_point = HookPoint("words", "embeddings")
        # The position ids of the input's tokens (a prefix may number them after itself).
        self.positions_point = HookPoint("positions", "positions")
        self._name_points(f"{self.name}.", None)

    def hook_points(self) -> dict[str, HookPoint]:
        return {"layer_norm": self.layer_norm.hook_point, "output": self.output_point,
                "positions": self.positions_point, "words": self.words_point}

    def build(self, input_shape):
        self.word_embeddings.build(input_shape)
        self.position_embeddings.build(input_shape)
        self.token_type_embeddings.build(input_shape)
        self.layer_norm.build(tuple(input_shape) + (self.hidden_size,))
        self.built = True

    def call(self, input_ids, token_type_ids, training=None):
        seq_len = ops.shape(input_ids)[1]
        positions = ops.arange(seq_len, dtype="int32")[None, :]
        if self.positions_point.is_active():
            positions = self.positions_point.run(positions, training=training)[0]
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings(token_type_ids))
        return self.dropout(self.layer_norm(x), training=training)

    def with_input_prompts(self, input_ids, token_type_ids, mask, training=None):
        """The embedding output with the active prompts of the `words` point inserted before the
        input: `(hidden, mask, positions of the input's own tokens)`. Prompts take the first
        position ids and token type 0, as if they were the first tokens."""
        seq_len = ops.shape(input_ids)[1]
        words, mask, own = self.words_point.run(self.word_embeddings(input_ids), mask,
                                                ops.arange(seq_len), training=training)
        total = ops.shape(words)[1]
        added = total - seq_len
        token_type_ids = ops.concatenate(
            [ops.zeros((ops.shape(input_ids)[0], added), token_type_ids.dtype), token_type_ids], axis=1)
        positions = ops.arange(total, dtype="int32")[None, :]
        if self.positions_point.is_active():
            positions = self.positions_point.run(positions, training=training)[0]
        x = words + self.position_embeddings(positions) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.layer_norm(x), training=training), mask, own

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                      max_position_embeddings=self.max_position_embeddings,
                      type_vocab_size=self.type_vocab_size, layer_norm_eps=self.layer_norm_eps,
                      dropout=self.dropout_rate, initializer_range=self.initializer_range)
        return config


class BertSelfAttention(_HookOwner, keras.layers.Layer):
    """Multi-head self-attention with its output projection and dropout (no residual, no LayerNorm).

    Sublayers `query`, `key`, `value` and `output` are `HookedDense`; the `attention` hook point
    sees the per-head keys, values and additive mask before the scores (prefix tuning).
    """

    def __init__(self, hidden_size, num_attention_heads, attention_dropout=0.1, hidden_dropout=0.1,
                 initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.head_size = hidden_size // num_attention_heads
        self.attention_dropout_rate = attention_dropout
        self.hidden_dropout_rate = hidden_dropout
        self.initializer_range = initializer_range

        def dense(name):
            return HookedDense(hidden_size, kernel_initializer=_initializer(initializer_range),
                               dtype=self.dtype_policy, name=name)

        self.query, self.key, self.value = dense("query"), dense("key"), dense("value")
        self.output_dense = dense("output")
        self.attention_dropout = keras.layers.Dropout(
            attention_dropout, dtype=self.dtype_policy, name="attention_dropout")
        self.output_dropout = keras.layers.Dropout(
            hidden_dropout, dtype=self.dtype_policy, name="output_dropout")
        self.kv_point = HookPoint(f"{self.name}.attention", "attention")
        # Recompute the attention probabilities in the backward pass instead of keeping them
        # (`BertEncoder.recompute_attention`); read when a training step is traced.
        self.recompute_probabilities = False

    def hook_points(self) -> dict[str, HookPoint]:
        return {"query": self.query.hook_point, "key": self.key.hook_point,
                "value": self.value.hook_point, "output": self.output_dense.hook_point,
                "attention": self.kv_point}

    def build(self, input_shape):
        for layer in (self.query, self.key, self.value, self.output_dense):
            layer.build(input_shape)
        self.built = True

    def _split_heads(self, x, batch):
        x = ops.reshape(x, (batch, -1, self.num_attention_heads, self.head_size))
        return ops.transpose(x, (0, 2, 1, 3))  # [batch, heads, seq, head_size]

    def call(self, hidden, mask_bias, training=None, tokens: TokenIndex | None = None):
        query = self.query(hidden, training=training)
        key = self.key(hidden, training=training)
        value = self.value(hidden, training=training)
        if tokens is not None:  # hidden holds only real tokens; attention needs [batch, seq, ...]
            query, key, value = tokens.scatter(query), tokens.scatter(key), tokens.scatter(value)
        batch = ops.shape(query)[0]
        query = self._split_heads(query, batch)
        key = self._split_heads(key, batch)
        value = self._split_heads(value, batch)
        if self.kv_point.is_active():
            key, value, mask_bias = self.kv_point.run(key, value, mask_bias, hidden,
                                                      training=training)[:3]
        if training:  # the same function, with a backward pass that keeps less (fast_ops.attend)
            # Keras' Dropout has a seed generator only for a non-zero rate.
            context = attend(query, key, value, mask_bias, self.attention_dropout_rate,
                             seed=getattr(self.attention_dropout, "seed_generator", None),
                             recompute=self.recompute_probabilities)
        else:
            context = plain_attention(query, key, value, mask_bias)
        context = ops.transpose(context, (0, 2, 1, 3))
        context = ops.reshape(context, (batch, -1, self.hidden_size))
        if tokens is not None:
            context = tokens.gather(context)
        return self.output_dropout(self.output_dense(context, training=training), training=training)

    def get_config(self):
        config = super().get_config()
        config.update(hidden_size=self.hidden_size, num_attention_heads=self.num_attention_heads,
                      attention_dropout=self.attention_dropout_rate,
                      hidden_dropout=self.hidden_dropout_rate,
                      initializer_range=self.initializer_range)
        return config


class BertLayer(_HookOwner, keras.layers.Layer):
    """One transformer block and its hook points.

    Hook points (`hook_points()`, see `adapter_bert.bert.hooks`): the Dense layers
    `attention.query|key|value|output`, `intermediate`, `output`; the LayerNorms `attention_ln`,
    `output_ln`; `attention.attention` (keys and values); and `attention_residual`,
    `output_residual`, the "add and LayerNorm" after each sublayer that bottleneck adapters
    replace (the adapters library's `mh_adapter` / `output_adapter` locations). Every point but
    `attention.attention` acts per token: with `BertEncoder.skip_padding` its tensors hold
    `[n_tokens, width]` real-token rows, otherwise `[batch, seq, width]`.

    Args:
        layer_index: the layer's position in the encoder, which its hook points carry for
            `skip_layers` (AdapterDrop).
    """

    def __init__(self, hidden_size, num_attention_heads, intermediate_size, layer_norm_eps=1e-12,
                 hidden_dropout=0.1, attention_dropout=0.1, initializer_range=0.02,
                 layer_index=None, **kwargs):
        super().__init__(**kwargs)
        self.layer_index = layer_index
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.layer_norm_eps = layer_norm_eps
        self.hidden_dropout_rate = hidden_dropout
        self.attention_dropout_rate = attention_dropout
        self.initializer_range = initializer_range
        init = _initializer(initializer_range)
        self.attention = BertSelfAttention(
            hidden_size, num_attention_heads, attention_dropout=attention_dropout,
            hidden_dropout=hidden_dropout, initializer_range=initializer_range,
            dtype=self.dtype_policy, name="attention")
        self.attention_ln = HookedLayerNorm(
            epsilon=layer_norm_eps, dtype=self.dtype_policy, name="attention_ln")
        # Linear Dense + separate GELU, so LoRA / (IA)^3 act before the non-linearity.
        self.intermediate = HookedDense(intermediate_size, kernel_initializer=init,
                                        dtype=self.dtype_policy, name="intermediate")
        self.output_dense = HookedDense(hidden_size, kernel_initializer=init,
                                        dtype=self.dtype_policy, name="output")
        self.output_dropout = keras.layers.Dropout(
            hidden_dropout, dtype=self.dtype_policy, name="output_dropout")
        self.output_ln = HookedLayerNorm(
            epsilon=layer_norm_eps, dtype=self.dtype_policy, name="output_ln")
        self.attention_residual = HookPoint("attention_residual", "residual")
        self.output_residual = HookPoint("output_residual", "residual")
        self.output_states = HookPoint("output_states", "hidden")
        self._name_points(f"{self.name}.", layer_index)

    def hook_points(self) -> dict[str, HookPoint]:
        points = {f"attention.{k}": v for k, v in self.attention.hook_points().items()}
        points.update({"intermediate": self.intermediate.hook_point,
                       "output": self.output_dense.hook_point,
                       "attention_ln": self.attention_ln.hook_point,
                       "output_ln": self.output_ln.hook_point,
                       "attention_residual": self.attention_residual,
                       "output_residual": self.output_residual,
                       "output_states": self.output_states})
        return points

    def build(self, input_shape):
        self.attention.build(input_shape)
        self.attention_ln.build(input_shape)
        self.intermediate.build(input_shape)
        self.output_dense.build(tuple(input_shape[:-1]) + (self.intermediate_size,))
        self.output_ln.build(input_shape)
        self.built = True

    def sublayer(self, hook_name: str) -> keras.layers.Layer:
        """The Dense or LayerNorm behind a hook point name, e.g. `"attention.value"`."""
        try:
            return {
                "attention.query": self.attention.query, "attention.key": self.attention.key,
                "attention.value": self.attention.value,
                "attention.output": self.attention.output_dense,
                "intermediate": self.intermediate, "output": self.output_dense,
                "attention_ln": self.attention_ln, "output_ln": self.output_ln,
            }[hook_name]
        except KeyError:
            raise KeyError(f"unknown hook point {hook_name!r}; known: {HOOK_POINTS}") from None

    @staticmethod
    def _add_and_norm(point: HookPoint, sublayer_output, sublayer_input, layer_norm, training):
        """BERT's residual, LayerNorm(sublayer_output + sublayer_input), unless adapters replace it."""
        if not point.is_active():
            return layer_norm(sublayer_output + sublayer_input)
        return point.run(sublayer_output, sublayer_input, layer_norm, training=training)[0]

    def call(self, hidden, mask_bias, training=None, tokens: TokenIndex | None = None):
        attention_output = self.attention(hidden, mask_bias, training=training, tokens=tokens)
        hidden = self._add_and_norm(self.attention_residual, attention_output, hidden,
                                    self.attention_ln, training)
        intermediate = gelu(self.intermediate(hidden, training=training))
        ffn_output = self.output_dropout(self.output_dense(intermediate, training=training),
                                         training=training)
        hidden = self._add_and_norm(self.output_residual, ffn_output, hidden, self.output_ln,
                                    training)
        if self.output_states.is_active():  # e.g. ReFT's interventions on the layer's output
            hidden = self.output_states.run(hidden, training=training)[0]
        return hidden

    def get_config(self):
        config = super().get_config()
        config.update(hidden_size=self.hidden_size, num_attention_heads=self.num_attention_heads,
                      intermediate_size=self.intermediate_size, layer_norm_eps=self.layer_norm_eps,
                      hidden_dropout=self.hidden_dropout_rate,
                      attention_dropout=self.attention_dropout_rate,
                      initializer_range=self.initializer_range, layer_index=self.layer_index)
        return config


HOOK_POINTS = ("attention.query", "attention.key", "attention.value", "attention.output",
               "intermediate", "output", "attention_ln", "output_ln")


class BertPooler(_HookOwner, keras.layers.Layer):
    """tanh(Dense(first token)), BERT's pooled output."""

    def __init__(self, hidden_size, initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.initializer_range = initializer_range
        self.dense = HookedDense(hidden_size, kernel_initializer=_initializer(initializer_range),
                                 dtype=self.dtype_policy, name="dense")
        self._name_points(f"{self.name}.", None)

    def hook_points(self) -> dict[str, HookPoint]:
        return {"dense": self.dense.hook_point}

    def build(self, input_shape):
        self.dense.build((input_shape[0], input_shape[-1]))
        self.built = True

    def call(self, sequence_output, training=None):
        return ops.tanh(self.dense(sequence_output[:, 0], training=training))

    def get_config(self):
        config = super().get_config()
        config.update(hidden_size=self.hidden_size, initializer_range=self.initializer_range)
        return config


def _as_int32(x):
    return x if getattr(x, "dtype", None) == "int32" else ops.cast(x, "int32")


class BertEncoder(keras.layers.Layer):
    """A whole BERT: embeddings, `num_hidden_layers` `BertLayer`s and the pooler.

    Call it on a dict of int `[batch, seq]` tensors: `input_ids`, and optionally `attention_mask`
    (alias `padding_mask`; 1 for tokens, 0 for padding; default all ones) and `token_type_ids`
    (default zeros). Returns `{"sequence_output": [b, s, h], "pooled_output": [b, h]}`; under an
    active setup with a `Parallel` block of `n` branches, a list of `n` such dicts, one per branch
    (the batch is replicated once, at the first layer where an adapter of the setup acts).

    The active setup (`set_active_setup`) is shared by every hook point of the encoder; see
    `adapter_bert.bert.hooks` for the hook API.

    Example:
    >>> import numpy as np
    >>> from adapter_bert.bert.config import BertConfig
    >>> cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
    ...                  num_attention_heads=2, intermediate_size=32)
    >>> encoder = BertEncoder.from_bert_config(cfg)
    >>> out = encoder({"input_ids": np.array([[2, 7, 3, 0]]), "attention_mask": np.array([[1, 1, 1, 0]])})
    >>> tuple(out["sequence_output"].shape), tuple(out["pooled_output"].shape)
    ((1, 4, 16), (1, 16))
    """

    def __init__(self, vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                 num_attention_heads=12, intermediate_size=3072, hidden_act="gelu",
                 hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                 max_position_embeddings=512, type_vocab_size=2, initializer_range=0.02,
                 layer_norm_eps=1e-12, pad_token_id=0, skip_padding=True, **kwargs):
        super().__init__(**kwargs)
        self.bert_config = BertConfig(
            vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
            hidden_act=hidden_act, hidden_dropout_prob=hidden_dropout_prob,
            attention_probs_dropout_prob=attention_probs_dropout_prob,
            max_position_embeddings=max_position_embeddings, type_vocab_size=type_vocab_size,
            initializer_range=initializer_range, layer_norm_eps=layer_norm_eps,
            pad_token_id=pad_token_id)
        cfg = self.bert_config
        self.embeddings = BertEmbeddings(
            cfg.vocab_size, cfg.hidden_size, cfg.max_position_embeddings, cfg.type_vocab_size,
            layer_norm_eps=cfg.layer_norm_eps, dropout=cfg.hidden_dropout_prob,
            initializer_range=cfg.initializer_range, dtype=self.dtype_policy, name="embeddings")
        self.layers = [
            BertLayer(cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size,
                      layer_norm_eps=cfg.layer_norm_eps, hidden_dropout=cfg.hidden_dropout_prob,
                      attention_dropout=cfg.attention_probs_dropout_prob,
                      initializer_range=cfg.initializer_range, layer_index=i,
                      dtype=self.dtype_policy, name=f"layer_{i}")
            for i in range(cfg.num_hidden_layers)]
        self.pooler = BertPooler(cfg.hidden_size, initializer_range=cfg.initializer_range,
                                 dtype=self.dtype_policy, name="pooler")
        self._hooks = EncoderHooks()
        for point in self.hook_points().values():
            point.owner = self._hooks
        # Dense layers on real tokens only (see TokenIndex): about 1.9x faster training at fixed
        # 128-token padding on MRPC (bench/train_throughput.py). A plain attribute, not config: it
        # changes speed, not the function. Set it to False where shapes must be static (TPU, XLA).
        self.skip_padding = skip_padding
        # Built eagerly so a checkpoint can be loaded before the first call.
        self.build(None)

    @property
    def recompute_attention(self) -> bool:
        """Whether training recomputes each layer's attention probabilities in the backward pass.

        Off by default. On, a training step keeps no `[batch, heads, seq, seq]` float tensor
        for its backward pass (only a one-byte dropout mask per layer), for one more batched
        matmul and softmax per layer: less memory at long padded lengths, a slower step. The
        function and its gradients are the same to float rounding. A plain attribute, not
        config, read when a training step is traced.
        """
        return self.layers[0].attention.recompute_probabilities if self.layers else False

    @recompute_attention.setter
    def recompute_attention(self, value: bool) -> None:
        for layer in self.layers:
            layer.attention.recompute_probabilities = bool(value)

    @classmethod
    def from_bert_config(cls, config: BertConfig, **kwargs) -> "BertEncoder":
        return cls(**config.to_dict(), **kwargs)

    # --- the hook API ----------------------------------------------------------------------------

    def hook_points(self) -> dict[str, HookPoint]:
        """Every hook point of the encoder by path (`layer_0.attention.query`, `pooler.dense`, ...)."""
        points = {point.path: point for point in self.embeddings.hook_points().values()}
        for layer in self.layers:
            points.update({point.path: point for point in layer.hook_points().values()})
        points.update({point.path: point for point in self.pooler.hook_points().values()})
        return points

    def hook_point(self, path: str) -> HookPoint:
        """The hook point at `path`; unknown paths are a KeyError listing the kinds of path."""
        points = self.hook_points()
        if path not in points:
            raise KeyError(f"unknown hook point {path!r}; points are embeddings.layer_norm|output, "
                           f"layer_<i>.<{'|'.join(self.layers[0].hook_points())}>, pooler.dense")
        return points[path]

    @property
    def active_setup(self):
        """The adapter name or composition block whose hooks run (None: the plain base)."""
        return self._hooks.setup

    @property
    def skip_layers(self) -> frozenset:
        """Layers whose hooks stay off under the active setup (AdapterDrop)."""
        return self._hooks.skip_layers

    def set_active_setup(self, setup, skip_layers=()) -> None:
        """Makes `setup` (an adapter name, a composition block or None) decide which hooks run.

        `skip_layers` are layer indices whose hooks stay off (AdapterDrop). The setup is read at
        call time, so a function traced under one setup keeps it: retrace after a change.
        """
        for layer in skip_layers or ():
            if isinstance(layer, bool) or not isinstance(layer, int) or not (
                    0 <= layer < len(self.layers)):
                raise ValueError(f"skip_layers must hold layer indices 0..{len(self.layers) - 1}, "
                                 f"got {layer!r}")
        self._hooks.set(setup, skip_layers)

    def _task_ids(self, inputs):
        """The `[batch]` member indices a `MultiTask` setup routes rows by, checked."""
        count = self._hooks.task_count
        if "task_ids" not in inputs:
            raise ValueError(f"the active setup {self.active_setup} needs `task_ids` in the "
                             f"inputs: per row, the index (0..{count - 1}) of its member")
        task_ids = _as_int32(inputs["task_ids"])
        if tensorflow_backend():
            import tensorflow as tf

            message = (f"task_ids must be member indices 0..{count - 1} of the active setup "
                       f"{self.active_setup}")
            tf.debugging.assert_non_negative(task_ids, message=message)
            tf.debugging.assert_less(task_ids, count, message=message)
        return task_ids

    def _check_setup_fits(self, input_ids) -> None:
        """A `BatchSplit` needs its rows and a `Split` of segment lengths its positions."""
        checks = ((self._hooks.required_rows, 0, "rows (its BatchSplit sizes)"),
                  (self._hooks.required_positions, 1, "positions (its Split segment lengths)"))
        for needed, axis, what in checks:
            if needed is None:
                continue
            message = f"the active setup {self.active_setup} needs batches of {needed} {what}"
            actual = input_ids.shape[axis]
            if actual is not None:
                if actual != needed:
                    raise ValueError(f"{message}; this one has {actual}")
            elif tensorflow_backend():
                import tensorflow as tf

                tf.debugging.assert_equal(tf.shape(input_ids)[axis], needed, message=message)

    def _first_adapted_layer(self) -> int | None:
        """The first layer with a hook of the active setup (-1: the embeddings), else None."""
        layers = [len(self.layers) if point.layer is None and point.path.startswith("pooler")
                  else -1 if point.layer is None else point.layer
                  for point in self.hook_points().values() if point.is_active()]
        return min(layers) if layers else None

    def build(self, input_shape=None):
        shape = (None, None)
        hidden_shape = (None, None, self.bert_config.hidden_size)
        self.embeddings.build(shape)
        for layer in self.layers:
            layer.build(hidden_shape)
        self.pooler.build(hidden_shape)
        self.built = True

    def call(self, inputs, training=None):
        if not isinstance(inputs, dict) or "input_ids" not in inputs:
            raise ValueError("BertEncoder expects a dict with at least 'input_ids'; got "
                             f"{type(inputs).__name__}")
        input_ids = _as_int32(inputs["input_ids"])
        mask = inputs.get("attention_mask", inputs.get("padding_mask"))
        mask = ops.ones_like(input_ids) if mask is None else _as_int32(mask)
        token_type_ids = inputs.get("token_type_ids")
        token_type_ids = (ops.zeros_like(input_ids) if token_type_ids is None
                          else _as_int32(token_type_ids))
        seq_len = input_ids.shape[1]
        max_len = self.bert_config.max_position_embeddings
        if seq_len is not None and seq_len > max_len:
            raise ValueError(f"sequence length {seq_len} is above the model's "
                             f"max_position_embeddings ({max_len})")
        self._check_setup_fits(input_ids)
        replicas = self._hooks.parallel_width
        replicate_at = self._first_adapted_layer() if replicas > 1 else None
        use_tokens = self.skip_padding and tensorflow_backend()
        context = ForwardContext()
        order = None
        if self._hooks.task_count is not None:
            # MultiTask: sort the rows by task once, so each task's rows are consecutive and every
            # hook point runs each member on its own rows only; the outputs are put back below.
            task_ids = self._task_ids(inputs)
            order = ops.argsort(task_ids)
            input_ids, token_type_ids, mask = (ops.take(t, order, axis=0)
                                               for t in (input_ids, token_type_ids, mask))
            context.task_sizes = ops.bincount(task_ids, minlength=self._hooks.task_count)
        with self._hooks.calling(context):
            if replicate_at == -1:
                input_ids, token_type_ids, mask = (
                    ops.concatenate([t] * replicas, axis=0) for t in (input_ids, token_type_ids, mask))
                context.replicas = replicas
            positions = None
            if self.embeddings.words_point.is_active():  # prompts among the word embeddings
                hidden, mask, positions = self.embeddings.with_input_prompts(
                    input_ids, token_type_ids, mask, training=training)
            else:
                hidden = self.embeddings(input_ids, token_type_ids, training=training)
            if self.embeddings.output_point.is_active():  # e.g. prompt tuning lengthens the input
                hidden, mask, positions = self.embeddings.output_point.run(
                    hidden, mask, ops.arange(ops.shape(input_ids)[1]) if positions is None
                    else positions, training=training)
            mask_bias = padding_mask_bias(mask, hidden.dtype)
            context.mask = mask
            tokens = context.tokens = TokenIndex(mask) if use_tokens else None
            if tokens is not None:
                hidden = tokens.gather(hidden)
            for index, layer in enumerate(self.layers):
                if index == replicate_at:
                    # A Parallel block: one copy of the batch per branch from here on, copy after
                    # copy along axis 0 (also in token layout, where rows are tokens).
                    hidden = ops.concatenate([hidden] * replicas, axis=0)
                    mask = ops.concatenate([mask] * replicas, axis=0)
                    mask_bias = ops.concatenate([mask_bias] * replicas, axis=0)
                    context.mask = mask
                    tokens = context.tokens = TokenIndex(mask) if use_tokens else None
                    context.replicas = replicas
                hidden = layer(hidden, mask_bias, training=training, tokens=tokens)
            if tokens is not None:
                hidden = tokens.scatter(hidden)
            if positions is not None:  # only the input's own positions leave the encoder
                hidden = ops.take(hidden, positions, axis=1)
            if replicate_at == len(self.layers):
                hidden = ops.concatenate([hidden] * replicas, axis=0)
                context.replicas = replicas
            pooled = self.pooler(hidden, training=training)
        if order is not None:
            inverse = ops.argsort(order)
            hidden, pooled = ops.take(hidden, inverse, axis=0), ops.take(pooled, inverse, axis=0)
        if replicas == 1:
            return {"sequence_output": hidden, "pooled_output": pooled}
        if replicate_at is None:  # no adapter of the setup acts anywhere: the branches agree
            return [{"sequence_output": hidden, "pooled_output": pooled}] * replicas
        return [{"sequence_output": h, "pooled_output": p}
                for h, p in zip(ops.split(hidden, replicas, axis=0),
                                ops.split(pooled, replicas, axis=0))]

    def get_config(self):
        config = super().get_config()
        config.update(self.bert_config.to_dict())
        return config
