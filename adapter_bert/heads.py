"""Prediction heads: classification and regression on top of the encoder, and BERT's masked-LM head.

A head pools the encoder output, either with `cls` (BERT's pooler: tanh(Dense) of the [CLS] token,
as `BertForSequenceClassification`) or `mean` (the mask-weighted mean of the sequence output, as
sentence-embedding checkpoints such as all-MiniLM-L6-v2 were trained), then applies dropout and a
Dense layer (optionally a tanh hidden layer first, `layers=2`, as the adapters library's heads).

Example:
>>> import numpy as np
>>> head = ClassificationHead(num_labels=3, hidden_size=8, pooling="mean")
>>> outputs = {"sequence_output": np.ones((2, 5, 8), "float32"),
...            "pooled_output": np.ones((2, 8), "float32")}
>>> tuple(head(outputs, np.ones((2, 5), "int32")).shape)
(2, 3)
"""

from __future__ import annotations

import keras
from keras import ops

from adapter_bert.bert.fast_ops import LayerNorm, gelu
from adapter_bert.methods.base import named_variables

POOLINGS = ("cls", "cls_token", "mean")


def masked_mean(sequence_output, attention_mask):
    """Mean of the token vectors where `attention_mask` is 1."""
    mask = ops.cast(attention_mask, sequence_output.dtype)[:, :, None]
    total = ops.sum(sequence_output * mask, axis=1)
    return total / ops.maximum(ops.sum(mask, axis=1), ops.cast(1e-9, mask.dtype))


class ClassificationHead(keras.layers.Layer):
    """Pooling, dropout, optional tanh hidden layer, and a Dense to `num_labels` logits.

    Args:
        num_labels: number of classes (1 for regression).
        hidden_size: width of the encoder.
        pooling: "cls" (BERT's pooler: tanh Dense of the [CLS] state), "cls_token" (the [CLS]
            state itself, as the adapters library's heads by default) or "mean".
        layers: 1 (Dense only) or 2 (Dense + tanh, then Dense).
        dropout: dropout before each Dense.
        problem_type: "classification" (softmax cross-entropy) or "regression" (mean squared error).
        id2label: optional label names, saved with the head.
    """

    def __init__(self, num_labels: int = 2, hidden_size: int = 768, pooling: str = "cls",
                 layers: int = 1, dropout: float = 0.1, problem_type: str = "classification",
                 id2label: dict | None = None, initializer_range: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"num_labels must be a positive integer, got {num_labels!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if layers not in (1, 2):
            raise ValueError(f"layers must be 1 or 2, got {layers!r}")
        if problem_type not in ("classification", "regression"):
            raise ValueError(f"problem_type must be 'classification' or 'regression', got {problem_type!r}")
        if problem_type == "regression" and num_labels != 1:
            raise ValueError("a regression head has num_labels=1")
        self.num_labels, self.hidden_size, self.pooling = num_labels, hidden_size, pooling
        self.num_layers, self.dropout_rate, self.problem_type = layers, dropout, problem_type
        self.id2label = {str(k): v for k, v in (id2label or {}).items()} or None
        self.initializer_range = initializer_range
        init = keras.initializers.TruncatedNormal(stddev=initializer_range)
        self.dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy, name="dropout")
        self.hidden = (keras.layers.Dense(hidden_size, activation="tanh", kernel_initializer=init,
                                          dtype=self.dtype_policy, name="hidden")
                       if layers == 2 else None)
        self.classifier = keras.layers.Dense(num_labels, kernel_initializer=init,
                                             dtype=self.dtype_policy, name="classifier")
        self.build(None)

    def build(self, input_shape):
        if self.hidden is not None:
            self.hidden.build((None, self.hidden_size))
        self.classifier.build((None, self.hidden_size))
        self.built = True

    def pool(self, encoder_outputs, attention_mask):
        if self.pooling == "cls":
            return encoder_outputs["pooled_output"]
        if self.pooling == "cls_token":
            return encoder_outputs["sequence_output"][:, 0]
        return masked_mean(encoder_outputs["sequence_output"], attention_mask)

    def call(self, encoder_outputs, attention_mask, training=None):
        x = self.dropout(self.pool(encoder_outputs, attention_mask), training=training)
        if self.hidden is not None:
            x = self.dropout(self.hidden(x), training=training)
        logits = self.classifier(x)
        # Logits in float32 under mixed precision, so losses and softmax stay accurate.
        return ops.cast(logits, "float32")

    def loss(self, labels, logits):
        """Mean loss of a batch: cross-entropy on class ids, or squared error on scores."""
        if self.problem_type == "regression":
            return ops.mean(ops.square(ops.squeeze(logits, -1) - ops.cast(labels, logits.dtype)))
        return ops.mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))

    def get_config(self):
        config = super().get_config()
        config.update(num_labels=self.num_labels, hidden_size=self.hidden_size, pooling=self.pooling,
                      layers=self.num_layers, dropout=self.dropout_rate,
                      problem_type=self.problem_type, id2label=self.id2label,
                      initializer_range=self.initializer_range)
        return config


class RegressionHead(ClassificationHead):
    """A one-output head trained with mean squared error (STS-B)."""

    def __init__(self, hidden_size: int = 768, pooling: str = "cls", layers: int = 1,
                 dropout: float = 0.1, **kwargs):
        kwargs.pop("num_labels", None)
        kwargs.pop("problem_type", None)
        super().__init__(num_labels=1, hidden_size=hidden_size, pooling=pooling, layers=layers,
                         dropout=dropout, problem_type="regression", **kwargs)


class _Tied:
    """The word-embedding table a `MaskedLMHead` decodes with, kept out of Keras' tracking so
    that the frozen table is never one of the head's weights."""

    def __init__(self, table):
        self.table = table


class MaskedLMHead(keras.layers.Layer):
    """BERT's masked-language-model head: Dense + GELU + LayerNorm, then the decoder tied to the
    word embeddings (`logits = h @ E^T + output_bias`).

    The head's own weights are the transform and the output bias; the decoder is the encoder's
    frozen embedding table (`tie`), so training the head never changes the base. Given
    `mask_positions` (`[batch, predictions]` indices into the sequence), only those positions are
    decoded, as BERT's pre-training does: the vocabulary-wide logits of every token would
    dominate the cost. An `inverse` (MAD-X's invertible adapter, undone) is applied to the
    transformed states before decoding.

    Args:
        vocab_size: rows of the tied embedding table.
        hidden_size: width of the encoder.
        layer_norm_eps: epsilon of the transform's LayerNorm.
        initializer_range: std of the transform's truncated-normal kernel init.

    Example:
    >>> import numpy as np, keras
    >>> table = keras.Variable(np.eye(6, 4, dtype="float32"), trainable=False)
    >>> head = MaskedLMHead(vocab_size=6, hidden_size=4)
    >>> head.tie(table)
    >>> outputs = {"sequence_output": np.ones((2, 5, 4), "float32")}
    >>> tuple(head(outputs, mask_positions=np.array([[1, 3], [0, 0]])).shape)
    (2, 2, 6)
    >>> sorted(v.name for v in head.trainable_weights)
    ['beta', 'bias', 'gamma', 'kernel', 'output_bias']
    """

    def __init__(self, vocab_size: int = 30522, hidden_size: int = 768,
                 layer_norm_eps: float = 1e-12, initializer_range: float = 0.02, **kwargs):
        kwargs.pop("dropout", None)  # heads are built with the base's dropout; this one has none
        super().__init__(**kwargs)
        for name, value in (("vocab_size", vocab_size), ("hidden_size", hidden_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.layer_norm_eps, self.initializer_range = layer_norm_eps, initializer_range
        self.num_labels = vocab_size
        self.transform = keras.layers.Dense(
            hidden_size, kernel_initializer=keras.initializers.TruncatedNormal(stddev=initializer_range),
            dtype=self.dtype_policy, name="transform")
        self.transform_norm = LayerNorm(epsilon=layer_norm_eps, dtype=self.dtype_policy,
                                        name="transform_norm")
        self._tied = None
        self.build(None)

    def build(self, input_shape):
        self.transform.build((None, self.hidden_size))
        self.transform_norm.build((None, self.hidden_size))
        self.output_bias = self.add_weight(shape=(self.vocab_size,), initializer="zeros",
                                           name="output_bias")
        self.built = True

    def tie(self, table) -> None:
        """Decodes with `table` (`[vocab_size, hidden_size]`, the encoder's word embeddings)."""
        if tuple(table.shape) != (self.vocab_size, self.hidden_size):
            raise ValueError(f"the masked-LM head decodes {self.vocab_size} x {self.hidden_size} "
                             f"embeddings; the table to tie is {tuple(table.shape)}")
        self._tied = _Tied(table)

    def tied_table(self):
        """The embedding table the decoder is tied to."""
        if self._tied is None:
            raise ValueError(f"{self.name} is not tied to word embeddings (call tie first)")
        return self._tied.table

    def call(self, encoder_outputs, attention_mask=None, training=None, mask_positions=None,
             inverse=None):
        if self._tied is None:
            raise ValueError(f"{self.name} is not tied to word embeddings (call tie first)")
        hidden = encoder_outputs["sequence_output"]
        if mask_positions is not None:
            positions = ops.cast(mask_positions, "int32")
            hidden = ops.take_along_axis(hidden, positions[..., None], axis=1)
        hidden = self.transform_norm(gelu(self.transform(hidden)))
        if inverse is not None:
            hidden = inverse(hidden)
        table = ops.cast(self._tied.table, hidden.dtype)
        logits = ops.matmul(hidden, ops.transpose(table)) + ops.cast(self.output_bias, hidden.dtype)
        return ops.cast(logits, "float32")

    def loss(self, labels, logits):
        """Mean cross-entropy over the predicted tokens; labels < 0 are padding."""
        labels = ops.cast(labels, "int32")
        weights = ops.cast(labels >= 0, logits.dtype)
        per_token = keras.losses.sparse_categorical_crossentropy(
            ops.maximum(labels, 0), logits, from_logits=True)
        return ops.sum(per_token * weights) / ops.maximum(ops.sum(weights), 1.0)

    def assign_pretrained(self, weights: dict) -> None:
        """Sets the head from a checkpoint's (`adapter_bert.bert.checkpoint.read_masked_lm_head`)."""
        variables = named_variables(self)
        for name, value in weights.items():
            if tuple(value.shape) != tuple(variables[name].shape):
                raise ValueError(f"the checkpoint's masked-LM head weight {name} has shape "
                                 f"{tuple(value.shape)}, this head {tuple(variables[name].shape)}")
        for name, value in weights.items():
            variables[name].assign(value)

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                      layer_norm_eps=self.layer_norm_eps, initializer_range=self.initializer_range)
        return config
