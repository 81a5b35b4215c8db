"""Tiny random BERTs and checkpoint directories for fast tests and examples.

Claims about accuracy are never made with these; they exist so unit tests run in seconds.

Example:
>>> encoder = tiny_encoder(seed=0)
>>> encoder.bert_config.hidden_size
32
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras
import numpy as np

from adapter_bert.bert.config import BertConfig
from adapter_bert.bert.encoder import BertEncoder

# Special tokens first, in the order BERT vocabularies use, then a few words and word pieces.
TINY_VOCAB = (["[PAD]"] + [f"[unused{i}]" for i in range(4)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
              + ["the", "a", "cat", "dog", "sat", "on", "mat", "is", "good", "bad", "movie", "not",
                 "very", "and", "it", "was", "##s", "##ing", "##ed", ".", ",", "!", "?"])


def tiny_bert_config(dropout: float | None = None, **overrides) -> BertConfig:
    """A 2-layer, 32-wide BERT config; any field may be overridden, `dropout` sets both rates."""
    if dropout is not None:
        overrides.setdefault("hidden_dropout_prob", dropout)
        overrides.setdefault("attention_probs_dropout_prob", dropout)
    values = dict(vocab_size=len(TINY_VOCAB), hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                  type_vocab_size=2)
    values.update(overrides)
    return BertConfig(**values)


def tiny_encoder(seed: int = 0, dropout: float | None = None, **overrides) -> BertEncoder:
    """A randomly initialised tiny `BertEncoder`, reproducible for a given seed.

    LayerNorm parameters are randomised too, so tests notice a gamma/beta mix-up.
    """
    keras.utils.set_random_seed(seed)
    encoder = BertEncoder.from_bert_config(tiny_bert_config(dropout=dropout, **overrides))
    rng = np.random.default_rng(seed)
    for variable in encoder.weights:
        if variable.path.endswith(("gamma", "beta", "bias")):
            base = 1.0 if variable.path.endswith("gamma") else 0.0
            variable.assign(base + 0.1 * rng.standard_normal(variable.shape).astype("float32"))
    return encoder


def random_inputs(batch: int = 3, seq: int = 10, vocab_size: int = len(TINY_VOCAB), seed: int = 0,
                  pairs: bool = True) -> dict[str, np.ndarray]:
    """int32 BERT inputs with [CLS]/[SEP], mixed lengths and trailing padding."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((batch, seq), np.int32)
    mask = np.zeros((batch, seq), np.int32)
    types = np.zeros((batch, seq), np.int32)
    for row in range(batch):
        length = seq if row == 0 else int(rng.integers(4, seq + 1))
        ids[row, :length] = rng.integers(9, vocab_size, length)
        ids[row, 0] = TINY_VOCAB.index("[CLS]")
        ids[row, length - 1] = TINY_VOCAB.index("[SEP]")
        mask[row, :length] = 1
        if pairs and length > 4:
            middle = length // 2
            ids[row, middle - 1] = TINY_VOCAB.index("[SEP]")
            types[row, middle:length] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def write_vocab(directory: str | os.PathLike, tokens=TINY_VOCAB) -> Path:
    path = Path(directory) / "vocab.txt"
    path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return path


def write_tiny_hf_checkpoint(directory: str | os.PathLike, seed: int = 0, **overrides) -> BertEncoder:
    """Writes config.json, model.safetensors, vocab.txt and tokenizer_config.json of a tiny BERT."""
    from adapter_bert.bert.checkpoint import save_hf_checkpoint

    encoder = tiny_encoder(seed=seed, **overrides)
    save_hf_checkpoint(encoder, directory)
    write_vocab(directory)
    with open(Path(directory) / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump({"do_lower_case": True, "tokenizer_class": "BertTokenizer"}, f)
    return encoder
