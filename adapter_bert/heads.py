"""Prediction heads: classification and regression on top of the encoder.

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

POOLINGS = ("cls", "mean")


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
        pooling: "cls" or "mean".
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
