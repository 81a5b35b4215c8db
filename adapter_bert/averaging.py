"""Adapters and heads made by averaging others (`average_adapter`, `average_head`).

The strategies and checks are the adapters library's: adapters of one config (dropout and init
aside), weights divided by their sum unless told otherwise, and for LoRA three strategies:

* `linear`: every weight is the weighted sum of the members' (for LoRA, `A` and `B` each, so the
  new update is `(sum w A)(sum w B)`, not `sum w BA`);
* `lora_linear_only_negate_b`: `A` weighted by `|w|`, `B` by `w`, so a negative weight subtracts;
* `lora_delta_w_svd`: the rank-`svd_rank` truncated SVD of the weighted sum of the members'
  updates `sum w (alpha / r) BA`, split into `A = V^T` and `B = U S / (alpha / svd_rank)`.
  The library takes the SVD of the unscaled products and keeps `alpha`, so its result equals this
  one when `svd_rank == r` and is `r / svd_rank` times too large otherwise; here the new adapter's
  update is the truncated weighted sum whatever the rank.

These functions compute values only; `AdapterBertModel.average_adapter` builds the adapter.

Example:
>>> import numpy as np
>>> normalized_weights(["a", "b"], [3, 1], True)
[0.75, 0.25]
"""

from __future__ import annotations

import numpy as np

from adapter_bert.configuration import AdapterConfig, ConfigUnion
from adapter_bert.methods.lora import LoRAConfig, LoRADense, LoRAMethod

COMBINE_STRATEGIES = ("linear", "lora_linear_only_negate_b", "lora_delta_w_svd")
# Fields that may differ between the adapters that are averaged (as in the library).
_IGNORED = ("dropout", "init_weights")


def normalized_weights(names, weights, normalize: bool) -> list[float]:
    """One weight per name: equal by default, else `weights` divided by their sum if `normalize`."""
    if weights is None:
        return [1.0 / len(names)] * len(names)
    weights = list(weights)
    if len(weights) != len(names) or not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights):
        raise ValueError(f"give one number per adapter ({len(names)}), got weights={weights!r}")
    if not normalize:
        return [float(w) for w in weights]
    total = sum(weights)
    if total == 0:
        raise ValueError(f"weights {weights!r} sum to 0 and cannot be normalised; pass "
                         "normalize_weights=False")
    return [w / total for w in weights]


def _comparable(config: AdapterConfig):
    def strip(values):
        if isinstance(values, dict):
            return {k: strip(v) for k, v in values.items() if k not in _IGNORED}
        if isinstance(values, list):
            return [strip(v) for v in values]
        return values

    return strip(config.to_dict())


def average_modules(sources: list, weights, normalize_weights: bool, combine_strategy: str,
                    svd_rank: int | None):
    """`(config, {weight name: value})` of the average of `sources` (`AdapterModule`s).

    Raises:
        ValueError: no sources, an unknown strategy, configs that differ, a strategy the
            methods do not have, or a missing `svd_rank`.
    """
    if combine_strategy not in COMBINE_STRATEGIES:
        raise ValueError(f"unknown combine_strategy {combine_strategy!r}; known: "
                         + ", ".join(COMBINE_STRATEGIES))
    if not sources:
        raise ValueError("no adapters to average: give at least one")
    first = sources[0]
    for other in sources[1:]:
        if _comparable(other.config) != _comparable(first.config):
            raise ValueError(f"cannot average adapters of different configs: "
                             f"{first.adapter_name!r} and {other.adapter_name!r} differ")
    if any(m.trains_base for m in first.methods):
        raise ValueError("full fine-tuning adapters hold no weights of their own to average")
    names = [m.adapter_name for m in sources]
    w = normalized_weights(names, weights, normalize_weights)
    if combine_strategy != "linear":
        if isinstance(first.config, ConfigUnion):
            raise ValueError("adapters with a ConfigUnion average only with combine_strategy "
                             "'linear'")
        if not (isinstance(first.config, LoRAConfig)
                and first.config.composition_mode == "add"):
            raise ValueError(f"combine_strategy {combine_strategy!r} is for LoRA adapters; "
                             f"{names[0]!r} is {first.config.architecture}")
    config = first.config
    if combine_strategy == "lora_delta_w_svd":
        if not isinstance(svd_rank, int) or isinstance(svd_rank, bool) or svd_rank <= 0:
            raise ValueError(f"lora_delta_w_svd needs a positive integer svd_rank, got {svd_rank!r}")
        config = config.replace(r=svd_rank)
        return config, _svd_values(sources, w, svd_rank)
    variables = [m.named_variables() for m in sources]
    values = {}
    for key in variables[0]:
        total = np.zeros(variables[0][key].shape, np.float64)
        for weight, source in zip(w, variables):
            factor = weight
            if combine_strategy == "lora_linear_only_negate_b" and key.endswith("lora_A"):
                factor = abs(weight)
            total += factor * np.asarray(source[key].numpy(), np.float64)
        values[key] = total
    return config, values


def _svd_values(sources, weights, rank: int) -> dict:
    methods = [next(m for m in s.methods if isinstance(m, LoRAMethod)) for s in sources]
    first = methods[0]
    values = {}
    for index, hook in enumerate(first.updates):
        hooks: list[LoRADense] = [m.updates[index] for m in methods]
        delta = sum(weight * h.delta() for weight, h in zip(weights, hooks))  # [in, out]
        if rank > min(delta.shape):
            raise ValueError(f"svd_rank {rank} is above the rank a {delta.shape[0]} x "
                             f"{delta.shape[1]} update can have")
        # torch's layout is [out, in] = U S Vh; ours is its transpose.
        u, s, vh = np.linalg.svd(delta.T, full_matrices=False)
        scaling = hook.alpha / rank
        prefix = f"{first.name}.{hook.name}."
        values[prefix + "lora_A"] = vh[:rank].T
        values[prefix + "lora_B"] = (u[:, :rank] * s[:rank]).T / scaling
    return values


def average_heads(heads: list, weights, normalize_weights: bool):
    """`(head class, head config, {weight name: value})` of the average of `heads`."""
    from adapter_bert.methods.base import named_variables

    if not heads:
        raise ValueError("no heads to average: give at least one")
    first = heads[0]

    def comparable(head):
        return {k: v for k, v in head.get_config().items()
                if k not in ("name", "dropout", "trainable", "dtype")}

    for other in heads[1:]:
        if type(other) is not type(first):
            raise ValueError(f"cannot average heads of different classes: all must be "
                             f"{type(first).__name__}")
        if comparable(other) != comparable(first):
            raise ValueError(f"cannot average heads of different configs: {first.name} and "
                             f"{other.name} differ")
    w = normalized_weights([h.name for h in heads], weights, normalize_weights)
    variables = [named_variables(h) for h in heads]
    values = {key: sum(weight * np.asarray(v[key].numpy(), np.float64)
                       for weight, v in zip(w, variables)) for key in variables[0]}
    config = {k: v for k, v in first.get_config().items() if k not in ("name", "dtype", "trainable")}
    return type(first), config, values
