"""Masked language modelling on plain text: reading lines, BERT's masking, `tf.data` batches.

A language adapter (MAD-X's, e.g. `seq_bn_inv`) is trained with BERT's pre-training objective on
raw text: one line of a UTF-8 file is one sequence. BERT masks 15% of each sequence's real
tokens ([CLS], [SEP] and padding never), and of those replaces 80% by [MASK], 10% by a random
token and keeps 10% unchanged; the model predicts the original token at every chosen position.
The training set is masked anew every epoch (the "dynamic" masking of RoBERTa, from
`(seed, epoch)`, so a resumed run sees the same masks); the dev set is masked once, with a fixed
seed, so its perplexity is comparable across epochs, runs and seeds.

Each batch carries `mask_positions` (`[batch, predictions]`, the chosen positions, padded with 0)
next to the BERT inputs, and labels of the same shape (the original ids, -1 where padded). The
number of predictions is fixed by `max_seq_length` (`max_predictions`), so shapes stay static
where they must (TPUs).

Example:
>>> from adapter_bert import load_tokenizer
>>> tok = load_tokenizer("all-minilm-l6-v2")
>>> data = MaskedLMData.from_lines(tok, ["The cat sat on the mat.", "It rains."], max_seq_length=16)
>>> dataset = data.dataset(batch_size=2, mask_seed=0)
>>> inputs, labels = next(iter(dataset))
>>> tuple(inputs["mask_positions"].shape), tuple(labels.shape)
((2, 2), (2, 2))
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from adapter_bert.glue.data import EncodedExamples, Example, encode_examples, make_dataset
from adapter_bert.io_utils import read_text

MASK_RATE = 0.15
# BERT's split of the chosen tokens: [MASK], a random token, unchanged.
MASK_TOKEN_SHARE, RANDOM_TOKEN_SHARE = 0.8, 0.1
NO_PREDICTION = -1
DEV_FRACTION = 0.05
# Dev masks are drawn from this seed whatever the run's --seed: one fixed dev set per file.
DEV_MASK_SEED = 12345


def read_text_lines(path: str | os.PathLike) -> list[str]:
    """The non-empty lines of a UTF-8 text file, stripped.

    Raises:
        FileNotFoundError: there is no such file.
        ValueError: the file is not UTF-8 or has no non-empty line.

    Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "text.txt"
    >>> _ = path.write_text("One line.\\n\\n  Two.  \\n", encoding="utf-8")
    >>> read_text_lines(path)
    ['One line.', 'Two.']
    """
    path = Path(path)
    text = read_text(path)
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"{path} has no text (every line is empty)")
    return lines


def hold_out(lines: Sequence[str], fraction: float = DEV_FRACTION) -> tuple[list[str], list[str]]:
    """Splits lines into `(train, dev)`: a fixed `fraction` (at least one line) for dev, chosen
    by a seeded permutation, so the same file always gives the same split; both keep file order.

    Example:
    >>> train, dev = hold_out([f"line {i}" for i in range(40)])
    >>> len(train), len(dev), hold_out([f"line {i}" for i in range(40)])[1] == dev
    (38, 2, True)
    """
    if len(lines) < 2:
        raise ValueError(f"holding out dev lines needs at least 2 lines, got {len(lines)}; "
                         "give a dev file")
    count = max(1, int(round(fraction * len(lines))))
    dev = set(np.random.default_rng(0).permutation(len(lines))[:count].tolist())
    return ([l for i, l in enumerate(lines) if i not in dev],
            [l for i, l in enumerate(lines) if i in dev])


def max_predictions(max_seq_length: int) -> int:
    """Predictions per sequence: 15% of `max_seq_length`, rounded, at least one.

    Example:
    >>> max_predictions(128), max_predictions(8)
    (19, 1)
    """
    return max(1, int(round(MASK_RATE * max_seq_length)))


def mask_tokens(encoded: EncodedExamples, rng: np.random.Generator, *, mask_id: int,
                vocab_size: int, special_ids: Sequence[int], predictions: int):
    """BERT's masking of every row of `encoded`.

    Each row predicts `round(0.15 * n)` of its `n` maskable tokens (at least one, at most
    `predictions`), chosen without replacement; each chosen token becomes [MASK] (80%), a random
    id (10%) or stays (10%).

    Returns:
        `(masked, positions, labels)`: `EncodedExamples` with the masked ids, and int32
        `[rows, predictions]` positions (0 where padded) and original ids (-1 where padded).

    Example:
    >>> encoded = EncodedExamples.from_rows([[101, 5, 6, 7, 8, 9, 10, 102]])
    >>> masked, positions, labels = mask_tokens(encoded, np.random.default_rng(0), mask_id=103,
    ...     vocab_size=200, special_ids=[0, 101, 102, 103], predictions=2)
    >>> positions.shape, int((labels >= 0).sum()), bool(positions[0, 0] not in (0, 7))
    ((1, 2), 1, True)
    """
    special = np.asarray(sorted(set(special_ids)), np.int32)
    ids = encoded.input_ids.copy()
    positions = np.zeros((len(encoded), predictions), np.int32)
    labels = np.full((len(encoded), predictions), NO_PREDICTION, np.int32)
    # Random replacements come from the ordinary tokens, as a [CLS] or [PAD] mid-sentence is no
    # word; BERT drew from the whole vocabulary, which differs in a handful of ids.
    ordinary = np.setdiff1d(np.arange(vocab_size, dtype=np.int32), special)
    splits = encoded.row_splits
    for row in range(len(encoded)):
        start, end = splits[row], splits[row + 1]
        candidates = np.flatnonzero(~np.isin(ids[start:end], special))
        count = min(predictions, max(1, int(round(MASK_RATE * len(candidates)))), len(candidates))
        if not count:
            continue
        chosen = np.sort(rng.choice(candidates, size=count, replace=False))
        positions[row, :count] = chosen
        labels[row, :count] = ids[start + chosen]
        roll = rng.random(count)
        replace = rng.integers(0, len(ordinary), size=count)
        for k, position in enumerate(chosen):
            if roll[k] < MASK_TOKEN_SHARE:
                ids[start + position] = mask_id
            elif roll[k] < MASK_TOKEN_SHARE + RANDOM_TOKEN_SHARE:
                ids[start + position] = ordinary[replace[k]]
    masked = EncodedExamples(ids, encoded.token_type_ids, encoded.row_lengths)
    return masked, positions, labels


@dataclasses.dataclass(frozen=True)
class MaskedLMData:
    """Tokenized text lines and what masking them needs.

    Attributes:
        encoded: the unmasked rows (`[CLS] line [SEP]`, truncated to `max_seq_length`).
        max_seq_length: the longest row.
        mask_id, vocab_size, special_ids: the tokenizer's [MASK] id, vocabulary size and
            special ids (never masked, never drawn as random replacements).
    """

    encoded: EncodedExamples
    max_seq_length: int
    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...]

    @classmethod
    def from_lines(cls, tokenizer, lines: Sequence[str], max_seq_length: int) -> MaskedLMData:
        """Tokenizes `lines` with a `BertTokenizer` (`adapter_bert.load_tokenizer`)."""
        hf = tokenizer.hf_tokenizer
        examples = [Example(str(i), line, None, None) for i, line in enumerate(lines)]
        return cls(encode_examples(tokenizer, examples, max_seq_length), max_seq_length,
                   int(hf.mask_token_id), int(tokenizer.vocab_size),
                   tuple(int(i) for i in hf.all_special_ids))

    def __len__(self) -> int:
        return len(self.encoded)

    @property
    def predictions(self) -> int:
        return max_predictions(self.max_seq_length)

    def masked(self, mask_seed):
        """`mask_tokens` of every row, from `np.random.default_rng(mask_seed)`."""
        return mask_tokens(self.encoded, np.random.default_rng(mask_seed), mask_id=self.mask_id,
                           vocab_size=self.vocab_size, special_ids=self.special_ids,
                           predictions=self.predictions)

    def dataset(self, batch_size: int, mask_seed, shuffle: bool = False, seed: int = 0,
                drop_remainder: bool = False, padding: str = "dynamic",
                bucket_boundaries: Sequence[int] | None = None,
                pad_to_bucket_boundary: bool = False):
        """Batches of `({input_ids, attention_mask, token_type_ids, mask_positions}, labels)`
        masked from `mask_seed` (an int or a tuple such as `(seed, epoch)`); the other arguments
        are `adapter_bert.glue.data.make_dataset`'s."""
        import tensorflow as tf

        masked, positions, labels = self.masked(mask_seed)
        positions, labels = tf.constant(positions), tf.constant(labels)
        # The rows' indices ride through make_dataset as their labels, so shuffling, padding and
        # bucketing stay the GLUE pipeline's; the masks are looked up by index afterwards.
        rows = np.arange(len(masked), dtype=np.int32)
        dataset = make_dataset(masked, rows, batch_size, shuffle=shuffle, seed=seed,
                               drop_remainder=drop_remainder, padding=padding,
                               max_seq_length=self.max_seq_length,
                               bucket_boundaries=bucket_boundaries,
                               pad_to_bucket_boundary=pad_to_bucket_boundary)

        def attach(inputs, index):
            return ({**inputs, "mask_positions": tf.gather(positions, index)},
                    tf.gather(labels, index))

        return dataset.map(attach, num_parallel_calls=tf.data.AUTOTUNE)


def masked_lm_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Perplexity (exp of the mean cross-entropy), loss and accuracy over the predicted tokens
    (labels >= 0).

    Example:
    >>> logits = np.log(np.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]]))
    >>> metrics = masked_lm_metrics(logits, np.array([[0, -1]]))
    >>> round(metrics["perplexity"], 4), metrics["accuracy"]
    (2.0, 1.0)
    """
    sums = masked_lm_sums(logits, labels)
    return metrics_from_sums(*sums)


def masked_lm_sums(logits: np.ndarray, labels: np.ndarray) -> tuple[float, int, int]:
    """`(summed cross-entropy, predicted tokens, correct predictions)` of one batch."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    keep = labels >= 0
    logits, labels = logits[keep], labels[keep]
    if not len(labels):
        return 0.0, 0, 0
    top = logits.max(-1, keepdims=True)
    log_norm = np.log(np.exp(logits - top).sum(-1)) + top[:, 0]
    losses = log_norm - logits[np.arange(len(labels)), labels]
    return float(losses.sum()), int(len(labels)), int((logits.argmax(-1) == labels).sum())


def metrics_from_sums(loss_sum: float, count: int, correct: int) -> dict[str, float]:
    """The dev metrics from summed batch results (`masked_lm_sums`)."""
    if not count:
        raise ValueError("the dev text has no token to predict")
    loss = loss_sum / count
    return {"perplexity": float(np.exp(loss)), "loss": float(loss),
            "accuracy": float(correct / count)}
