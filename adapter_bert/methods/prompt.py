"""Prompt tuning (Lester et al. 2021): trained soft prompt embeddings in front of the input.

As in the adapters library: a table of `prompt_length` embeddings is inserted into the embedding
output (after BERT's embedding LayerNorm and dropout; the prompts get no position embedding),
before the first token (`combine="prefix"`) or after it (`"prefix_after_bos"`, after [CLS]), and
the attention mask grows to match, so every token also attends to the prompts. The table starts
uniform in ±0.5 (`prompt_init="random_uniform"`) or from the word embeddings of
`prompt_init_text` tokenized with [CLS] ... [SEP] and repeated to length (`"from_string"`).

Unlike the library, the encoder then returns only the input's own positions: `sequence_output`
has the input's length and `pooled_output` pools the real [CLS] token, so heads see the real
tokens and a SavedModel takes the unextended inputs.

Example:
>>> from adapter_bert import AdapterBertModel
>>> from adapter_bert.testing import random_inputs, tiny_bert_config
>>> model = AdapterBertModel.from_config(tiny_bert_config())
>>> model.add_adapter("p", config="prompt_tuning[prompt_length=4]", set_active=True)
>>> tuple(model.bert(random_inputs(seq=10))["sequence_output"].shape)
(3, 10, 32)
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import keras
import numpy as np
from keras import ops

from adapter_bert.bert.hooks import Composer
from adapter_bert.configuration import AdapterConfig
from adapter_bert.methods.base import AdapterMethod
from adapter_bert.methods.registry import register_method

PROMPT_INITS = ("random_uniform", "from_string")
COMBINES = ("prefix", "prefix_after_bos")


@dataclasses.dataclass(eq=True)
class PromptTuningConfig(AdapterConfig):
    """Prompt tuning; field names and defaults follow the adapters library.

    Args:
        prompt_length: number of soft prompt embeddings.
        prompt_init: "random_uniform" (U(-0.5, 0.5)) or "from_string" (`prompt_init_text`).
        prompt_init_text: the text whose word embeddings start the prompts.
        combine: "prefix" (before [CLS]) or "prefix_after_bos" (after it).
        input_embeddings: insert the prompts among the word embeddings instead, before the
            position and token-type embeddings and the embedding LayerNorm, as PEFT's prompt
            tuning does: the prompts take positions 0 .. prompt_length - 1 and token type 0, and
            the input's tokens are numbered after them (`combine="prefix"` only).
    """

    prompt_length: int = 10
    prompt_init: str = "random_uniform"
    prompt_init_text: str | None = None
    combine: str = "prefix"
    input_embeddings: bool = False

    architecture = "prompt_tuning"
    own_fields = {"input_embeddings": False}
    library_only = {"init_weights_seed": None}
    #: The library's uniform range (a class attribute there too, never saved).
    random_uniform_scale = 0.5

    def validate(self):
        if isinstance(self.prompt_length, bool) or not isinstance(self.prompt_length, int) \
                or self.prompt_length <= 0:
            raise ValueError(f"prompt_length must be a positive integer, got {self.prompt_length!r}")
        if self.prompt_init not in PROMPT_INITS:
            raise ValueError(f"prompt_init must be one of {PROMPT_INITS}, got {self.prompt_init!r}")
        if self.prompt_init == "from_string" and not self.prompt_init_text:
            raise ValueError("prompt_init='from_string' needs prompt_init_text")
        if self.combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {self.combine!r}")
        if self.input_embeddings and self.combine != "prefix":
            raise ValueError("input_embeddings prompts go before the input (combine='prefix')")


class PromptState(NamedTuple):
    hidden: Any
    mask: Any
    positions: Any
    last: Any = None


class PromptComposer(Composer):
    """Prompts of several adapters in a `Stack` are all inserted, the last member's nearest the
    input; other blocks would give rows different lengths and are refused."""

    kinds = ("embeddings",)
    supported_blocks = ("stack",)
    row_aligned = ("hidden", "mask")

    def start(self, point_state):
        return PromptState(*point_state)

    def single(self, name, hook, state):
        return hook.insert(state)._replace(last=name)

    def finish(self, state):
        return state.hidden, state.mask, state.positions


class PromptEmbedding(keras.layers.Layer):
    """The prompt table of one adapter: `[prompt_length, hidden]`, and its insertion."""

    composer = PromptComposer

    def __init__(self, prompt_length: int, hidden_size: int, combine: str = "prefix",
                 scale: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.prompt_length, self.hidden_size, self.combine, self.scale = (
            prompt_length, hidden_size, combine, scale)
        self.build(None)

    def build(self, input_shape):
        self.prompts = self.add_weight(
            shape=(self.prompt_length, self.hidden_size), name="prompt_embedding",
            initializer=keras.initializers.RandomUniform(-self.scale, self.scale))
        self.built = True

    def insert(self, state: PromptState) -> PromptState:
        hidden, mask, positions = state.hidden, state.mask, state.positions
        batch = ops.shape(hidden)[0]
        prompts = ops.broadcast_to(ops.cast(self.prompts, hidden.dtype)[None],
                                   (batch, self.prompt_length, self.hidden_size))
        ones = ops.ones((batch, self.prompt_length), mask.dtype)
        if self.combine == "prefix":
            return state._replace(hidden=ops.concatenate([prompts, hidden], axis=1),
                                  mask=ops.concatenate([ones, mask], axis=1),
                                  positions=positions + self.prompt_length)
        return state._replace(
            hidden=ops.concatenate([hidden[:, :1], prompts, hidden[:, 1:]], axis=1),
            mask=ops.concatenate([mask[:, :1], ones, mask[:, 1:]], axis=1),
            positions=ops.where(positions >= 1, positions + self.prompt_length, positions))

    def get_config(self):
        config = super().get_config()
        config.update(prompt_length=self.prompt_length, hidden_size=self.hidden_size,
                      combine=self.combine, scale=self.scale)
        return config


class PromptTuningMethod(AdapterMethod):
    """Prompt tuning for one adapter: one `PromptEmbedding` at the embedding output."""

    def __init__(self, config: PromptTuningConfig, bert_config, **kwargs):
        super().__init__(config, bert_config, **kwargs)
        self.prompt = PromptEmbedding(config.prompt_length, bert_config.hidden_size,
                                      combine=config.combine, scale=config.random_uniform_scale,
                                      dtype=self.dtype_policy, name="prompt")
        self.built = True

    def placements(self):
        return [("embeddings.words" if self.config.input_embeddings else "embeddings.output",
                 self.prompt)]

    def init_from_base(self, encoder, checkpoint_dir=None) -> None:
        cfg = self.config
        if cfg.prompt_init != "from_string":
            return
        if checkpoint_dir is None:
            raise ValueError("prompt_init='from_string' needs the base's tokenizer: build the "
                             "model with from_pretrained")
        from adapter_bert.bert.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(checkpoint_dir)
        features = tokenizer.encode([cfg.prompt_init_text], max_seq_length=tokenizer.max_positions)
        ids = [int(i) for i, keep in zip(features["input_ids"][0], features["attention_mask"][0])
               if keep]  # [CLS] ... [SEP], as the library tokenizes it
        ids = (ids * (cfg.prompt_length // len(ids) + 1))[:cfg.prompt_length]
        table = encoder.embeddings.word_embeddings.embeddings.numpy()
        self.prompt.prompts.assign(table[np.asarray(ids)])


register_method(PromptTuningConfig, PromptTuningMethod,
                identifiers={"prompt_tuning": PromptTuningConfig()})
