"""BERT hyper-parameters, read from and written to Hugging Face / Google `config.json` files."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

# Keys of a Hugging Face BertConfig we understand; others in a file are ignored (they describe
# training, tokenizers or PyTorch-only options that do not change the encoder's math).
_ACTIVATIONS = ("gelu",)


@dataclasses.dataclass
class BertConfig:
    """The shape of a BERT encoder.

    Field names and defaults are those of Hugging Face's `BertConfig` (bert-base-uncased), so a
    checkpoint's `config.json` maps onto it directly.

    Example:
    >>> cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    ...                  intermediate_size=64, vocab_size=100)
    >>> cfg.head_size
    8
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"BertConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"BertConfig.hidden_size ({self.hidden_size}) is not a multiple of "
                f"num_attention_heads ({self.num_attention_heads})")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"BertConfig.hidden_act {self.hidden_act!r} is not supported (supported: {_ACTIVATIONS})")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"BertConfig.{name} must be in [0, 1), got {value!r}")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "BertConfig":
        """Builds a config from a dict, ignoring keys that do not change the encoder."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = dict(values)
        model_type = values.get("model_type", "bert")
        if model_type != "bert":
            raise ValueError(f"model_type {model_type!r} is not a BERT checkpoint")
        if values.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported, got "
                             f"{values['position_embedding_type']!r}")
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "BertConfig":
        """Reads a Hugging Face `config.json` or a Google `bert_config.json`."""
        try:
            with open(path, encoding="utf-8") as f:
                values = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path} does not hold a JSON object")
        return cls.from_dict(values)
