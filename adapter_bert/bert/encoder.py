"""The frozen BERT base as Keras 3 layers (`keras.layers` / `keras.ops`).

Two speed-ups are TensorFlow-only and switch themselves off on other Keras backends: skipping
padding (`TokenIndex`) and the hand-written LayerNorm / GELU gradients (`fast_ops`).

The math follows Hugging Face's `BertModel` (post-LayerNorm, exact-erf GELU) so that a checkpoint
loads to the same outputs. Every sublayer an adapter method needs is a named attribute, and three
kinds of hook let a method change the computation without subclassing the encoder:

* `HookedDense.hooks` / `HookedLayerNorm.hooks`: callables `hook(x, y, training=...) -> y` run on a
  layer's input `x` and output `y` (LoRA adds a low-rank update, (IA)^3 rescales, BitFit shifts).
* `BertSelfAttention.kv_hooks`: callables `hook(key, value, mask_bias, training=...)` that may extend the
  per-head keys and values and their additive mask (prefix tuning).
* `BertLayer.attention_residual` / `BertLayer.output_residual`: a callable
  `residual(sublayer_output, sublayer_input, layer_norm=..., training=...) -> hidden` that replaces the
  "add and LayerNorm" after each sublayer (bottleneck adapters, per-task LayerNorm).
* `BertEmbeddings.hooks`: callables `hook(embeddings, mask, training=...) -> (embeddings, mask)` run on
  the embedding output (prompt tuning).

Hooks are plain Python lists, not Keras-tracked state: the layers that own adapter weights belong to
the `AdapterBertModel`, so the base never holds task weights and stays shareable.
"""

from __future__ import annotations

import keras
from keras import ops

from adapter_bert.bert.config import BertConfig
from adapter_bert.bert.fast_ops import LayerNorm, gelu, tensorflow_backend

# Additive mask value for padded keys. -10000 is what Google's BERT uses; it is representable in
# float16 and bfloat16, and exp(-10000) underflows to exactly 0 in every float type.
MASK_NEGATIVE = -10000.0


class _Hooks(list):
    """A list that Keras does not track (so callables holding layers do not become sublayers)."""


def _untracked(layer: keras.layers.Layer, name: str, value) -> None:
    # Keras 3 wraps list attributes into tracked lists; object.__setattr__ keeps the hook list a
    # plain container the encoder only reads at call time.
    object.__setattr__(layer, name, value)


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
    """A Dense layer whose output methods such as LoRA and (IA)^3 may modify through `hooks`.

    Example:
    >>> import numpy as np
    >>> dense = HookedDense(4)
    >>> y = dense(np.ones((2, 3), "float32"))
    >>> dense.hooks.append(lambda x, y, training=None: 2.0 * y)
    >>> bool(np.allclose(dense(np.ones((2, 3), "float32")), 2 * y))
    True
    """

    def __init__(self, units, **kwargs):
        super().__init__(units, **kwargs)
        _untracked(self, "hooks", _Hooks())

    def call(self, inputs, training=None):
        outputs = super().call(inputs)
        for hook in self.hooks:
            outputs = hook(inputs, outputs, training=training)
        return outputs


class HookedLayerNorm(LayerNorm):
    """A LayerNormalization whose output methods may modify through `hooks` (BitFit's beta offsets)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        _untracked(self, "hooks", _Hooks())

    def call(self, inputs):
        outputs = super().call(inputs)
        for hook in self.hooks:
            outputs = hook(inputs, outputs, training=None)
        return outputs


class BertEmbeddings(keras.layers.Layer):
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
        _untracked(self, "hooks", _Hooks())

    def build(self, input_shape):
        self.word_embeddings.build(input_shape)
        self.position_embeddings.build(input_shape)
        self.token_type_embeddings.build(input_shape)
        self.layer_norm.build(tuple(input_shape) + (self.hidden_size,))
        self.built = True

    def call(self, input_ids, token_type_ids, attention_mask, training=None):
        seq_len = ops.shape(input_ids)[1]
        positions = ops.arange(seq_len, dtype="int32")[None, :]
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings(token_type_ids))
        x = self.dropout(self.layer_norm(x), training=training)
        for hook in self.hooks:
            x, attention_mask = hook(x, attention_mask, training=training)
        return x, attention_mask

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                      max_position_embeddings=self.max_position_embeddings,
                      type_vocab_size=self.type_vocab_size, layer_norm_eps=self.layer_norm_eps,
                      dropout=self.dropout_rate, initializer_range=self.initializer_range)
        return config


class BertSelfAttention(keras.layers.Layer):
    """Multi-head self-attention with its output projection and dropout (no residual, no LayerNorm).

    Sublayers `query`, `key`, `value` and `output` are `HookedDense`.
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
        _untracked(self, "kv_hooks", _Hooks())

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
        for hook in self.kv_hooks:
            key, value, mask_bias = hook(key, value, mask_bias, training=training)
        scores = ops.matmul(query, ops.transpose(key, (0, 1, 3, 2)))
        scores = scores * ops.cast(1.0 / (self.head_size ** 0.5), scores.dtype)
        scores = scores + ops.cast(mask_bias, scores.dtype)
        # Softmax in float32 keeps bf16/fp16 training stable; a no-op cast in float32.
        probs = ops.cast(ops.softmax(ops.cast(scores, "float32"), axis=-1), value.dtype)
        probs = self.attention_dropout(probs, training=training)
        context = ops.transpose(ops.matmul(probs, value), (0, 2, 1, 3))
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


def add_and_norm(sublayer_output, sublayer_input, layer_norm, training=None):
    """BERT's residual connection: LayerNorm(sublayer_output + sublayer_input)."""
    del training
    return layer_norm(sublayer_output + sublayer_input)


class BertLayer(keras.layers.Layer):
    """One transformer block with the hook points of DESIGN.md.

    Hook names (see `HOOK_POINTS`): `attention.query|key|value|output`, `intermediate`, `output`,
    `attention_ln`, `output_ln`. `attention_residual` and `output_residual` default to
    `add_and_norm`; bottleneck adapters replace them. Every hook but attention's `kv_hooks` acts
    per token: with `BertEncoder.skip_padding` it receives `[n_tokens, width]` real-token rows,
    otherwise `[batch, seq, width]`.
    """

    def __init__(self, hidden_size, num_attention_heads, intermediate_size, layer_norm_eps=1e-12,
                 hidden_dropout=0.1, attention_dropout=0.1, initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
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
        _untracked(self, "attention_residual", add_and_norm)
        _untracked(self, "output_residual", add_and_norm)

    def build(self, input_shape):
        self.attention.build(input_shape)
        self.attention_ln.build(input_shape)
        self.intermediate.build(input_shape)
        self.output_dense.build(tuple(input_shape[:-1]) + (self.intermediate_size,))
        self.output_ln.build(input_shape)
        self.built = True

    def sublayer(self, hook_name: str) -> keras.layers.Layer:
        """The sublayer behind a DESIGN.md hook name, e.g. `"attention.value"` or `"output_ln"`."""
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

    def call(self, hidden, mask_bias, training=None, tokens: TokenIndex | None = None):
        attention_output = self.attention(hidden, mask_bias, training=training, tokens=tokens)
        hidden = self.attention_residual(attention_output, hidden, layer_norm=self.attention_ln,
                                         training=training)
        intermediate = gelu(self.intermediate(hidden, training=training))
        ffn_output = self.output_dropout(self.output_dense(intermediate, training=training),
                                         training=training)
        return self.output_residual(ffn_output, hidden, layer_norm=self.output_ln,
                                    training=training)

    def get_config(self):
        config = super().get_config()
        config.update(hidden_size=self.hidden_size, num_attention_heads=self.num_attention_heads,
                      intermediate_size=self.intermediate_size, layer_norm_eps=self.layer_norm_eps,
                      hidden_dropout=self.hidden_dropout_rate,
                      attention_dropout=self.attention_dropout_rate,
                      initializer_range=self.initializer_range)
        return config


HOOK_POINTS = ("attention.query", "attention.key", "attention.value", "attention.output",
               "intermediate", "output", "attention_ln", "output_ln")


class BertPooler(keras.layers.Layer):
    """tanh(Dense(first token)), BERT's pooled output."""

    def __init__(self, hidden_size, initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.initializer_range = initializer_range
        self.dense = HookedDense(hidden_size, kernel_initializer=_initializer(initializer_range),
                                 dtype=self.dtype_policy, name="dense")

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
    (default zeros). Returns `{"sequence_output": [b, s, h], "pooled_output": [b, h]}`.

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
                      initializer_range=cfg.initializer_range, dtype=self.dtype_policy,
                      name=f"layer_{i}")
            for i in range(cfg.num_hidden_layers)]
        self.pooler = BertPooler(cfg.hidden_size, initializer_range=cfg.initializer_range,
                                 dtype=self.dtype_policy, name="pooler")
        # Dense layers on real tokens only (see TokenIndex): about 1.9x faster training at fixed
        # 128-token padding on MRPC (bench/train_throughput.py). A plain attribute, not config: it
        # changes speed, not the function. Set it to False where shapes must be static (TPU, XLA).
        self.skip_padding = skip_padding
        # Built eagerly so a checkpoint can be loaded before the first call.
        self.build(None)

    @classmethod
    def from_bert_config(cls, config: BertConfig, **kwargs) -> "BertEncoder":
        return cls(**config.to_dict(), **kwargs)

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
        hidden, mask = self.embeddings(input_ids, token_type_ids, mask, training=training)
        mask_bias = padding_mask_bias(mask, hidden.dtype)
        tokens = TokenIndex(mask) if self.skip_padding and tensorflow_backend() else None
        if tokens is not None:
            hidden = tokens.gather(hidden)
        for layer in self.layers:
            hidden = layer(hidden, mask_bias, training=training, tokens=tokens)
        if tokens is not None:
            hidden = tokens.scatter(hidden)
        return {"sequence_output": hidden, "pooled_output": self.pooler(hidden, training=training)}

    def get_config(self):
        config = super().get_config()
        config.update(self.bert_config.to_dict())
        return config
