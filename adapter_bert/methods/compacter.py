"""Compacter (Mahabadi et al. 2021): bottleneck adapters whose projections are parameterized
hypercomplex multiplications (PHM).

A PHM layer of `n = phm_dim` builds its `[in, out]` kernel as a sum of Kronecker products,
`H = sum_i kron(rule_i, W_i)`, with `n x n` "rules" and `W_i` of `in/n x out/n`, itself the
low-rank product `W_left_i W_right_i` (`factorized_phm_W`, rank `phm_rank`). The rules are shared
by all PHM layers of an adapter (`shared_phm_rule`, one variable per adapter in the model), and so
may be the W factors (`shared_W_phm`). Field names, defaults and weight shapes are the adapters
library's; `compacter` is Houlsby placement with PHM and reduction factor 32 (57,088 weights on
bert-base), `compacter++` Pfeiffer placement (28,576). Any bottleneck config takes
`phm_layer=True` (or `use_phm=True`).

Initialisation: `hypercomplex_nonlinearity` "glorot-normal", "glorot-uniform" (default) or
"normal" (std `phm_init_range`) for each W slice; shared rules normal with std `phm_init_range`
(`phm_c_init="normal"`) or uniform in ±1; per-layer rules std 0.01 or uniform in ±0.01; biases
zero. (The adapters library applies glorot-normal whatever the option says, and trains the rules
even with `learn_phm=False`; here the option and `learn_phm` are honoured.) Only `init_weights`
"bert" applies to PHM layers, as in the library (where the others fail).

Example:
>>> from adapter_bert.model import AdapterModule
>>> from adapter_bert import AdapterConfig, BertConfig
>>> AdapterModule("c", AdapterConfig.load("compacter"), BertConfig()).num_params()
57088
"""

from __future__ import annotations

import dataclasses
from typing import Union

import keras
from keras import ops

from adapter_bert.configuration import AdapterConfig
from adapter_bert.methods.bottleneck import (BnConfig, DoubleSeqBnConfig, SeqBnConfig,
                                             register_projection)
from adapter_bert.methods.base import BuiltFromConfig
from adapter_bert.methods.registry import register_method

NONLINEARITIES = ("glorot-normal", "glorot-uniform", "normal")
C_INITS = ("normal", "uniform")


@dataclasses.dataclass(eq=True)
class CompacterConfig(DoubleSeqBnConfig):
    """`compacter`: Houlsby placement, PHM projections, reduction factor 32, GELU."""

    phm_layer: bool = True
    reduction_factor: Union[float, dict] = 32
    non_linearity: str = "gelu"


@dataclasses.dataclass(eq=True)
class CompacterPlusPlusConfig(SeqBnConfig):
    """`compacter++`: Pfeiffer placement, PHM projections, reduction factor 32, GELU."""

    phm_layer: bool = True
    reduction_factor: Union[float, dict] = 32
    non_linearity: str = "gelu"


def _w_initializer(config: BnConfig, fan_in: int, fan_out: int):
    """Per-slice W init; torch's fan-in / fan-out of a 2-D slice `[a, b]` are `b` / `a`."""
    if config.hypercomplex_nonlinearity == "normal":
        return keras.initializers.RandomNormal(stddev=config.phm_init_range)
    if config.hypercomplex_nonlinearity == "glorot-normal":
        return keras.initializers.RandomNormal(stddev=(2.0 / (fan_in + fan_out)) ** 0.5)
    limit = (6.0 / (fan_in + fan_out)) ** 0.5
    return keras.initializers.RandomUniform(-limit, limit)


def _rule_initializer(config: BnConfig, shared: bool):
    if config.phm_c_init == "uniform":
        bound = 1.0 if shared else 0.01
        return keras.initializers.RandomUniform(-bound, bound)
    return keras.initializers.RandomNormal(stddev=config.phm_init_range if shared else 0.01)


def _add_w(layer, config, prefix: str, rows: int, cols: int):
    """W factors (`W_left`, `W_right`) or a whole W of `n` slices `rows x cols`."""
    n, rank = config.phm_dim, config.phm_rank
    if config.factorized_phm_W:
        left = layer.add_weight(shape=(n, rows, rank), name=f"{prefix}left",
                                initializer=_w_initializer(config, rank, rows))
        right = layer.add_weight(shape=(n, rank, cols), name=f"{prefix}right",
                                 initializer=_w_initializer(config, cols, rank))
        return (left, right)
    whole = prefix.rstrip("_") or "W"
    return (layer.add_weight(shape=(n, rows, cols), name=whole,
                             initializer=_w_initializer(config, cols, rows)),)


def _add_rule(layer, config, shared: bool):
    n = config.phm_dim
    init = _rule_initializer(config, shared)
    if config.factorized_phm_rule:
        return (layer.add_weight(shape=(n, n, 1), name="phm_rule_left", initializer=init,
                                 trainable=config.learn_phm),
                layer.add_weight(shape=(n, 1, n), name="phm_rule_right", initializer=init,
                                 trainable=config.learn_phm))
    return (layer.add_weight(shape=(n, n, n), name="phm_rule", initializer=init,
                             trainable=config.learn_phm),)


def _product(factors):
    return factors[0] if len(factors) == 1 else ops.matmul(factors[0], factors[1])


class _Untracked:
    """Holds a layer without Keras tracking it as this layer's own (so it is counted once)."""

    def __init__(self, value):
        self.value = value


class PHMShared(BuiltFromConfig, keras.layers.Layer):
    """An adapter's shared PHM weights: its rules and, with `shared_W_phm`, its W factors."""

    def __init__(self, config: BnConfig, hidden_size: int, **kwargs):
        super().__init__(**kwargs)
        self.config, self.hidden_size = config, hidden_size
        self.rule = _add_rule(self, config, shared=True) if config.shared_phm_rule else None
        self.w = {}
        if config.shared_W_phm:
            n = config.phm_dim
            bottleneck = int(hidden_size // config.reduction_factor)
            self.w["down"] = _add_w(self, config, "W_down_", hidden_size // n, bottleneck // n)
            self.w["up"] = _add_w(self, config, "W_up_", bottleneck // n, hidden_size // n)
        self.built = True


class PHMLayer(keras.layers.Layer):
    """`y = x H + b` with `H = sum_i kron(rule_i, W_i)` (`[in, out]`).

    Args:
        in_features / out_features: the projection's sizes (multiples of `phm_dim`).
        position: "down" or "up" (which shared W factors it uses).
        config: the bottleneck config with the `phm_*` options.
        shared: the adapter's `PHMShared` (its rules, perhaps its W).
    """

    def __init__(self, in_features: int, out_features: int, position: str, config: BnConfig,
                 shared: PHMShared | None = None, **kwargs):
        super().__init__(**kwargs)
        self.in_features, self.out_features, self.position = in_features, out_features, position
        self.config = config
        self._shared = _Untracked(shared)  # the shared weights belong to the method, not here
        n = config.phm_dim
        self.own_w = None if config.shared_W_phm else _add_w(
            self, config, "W_", in_features // n, out_features // n)
        self.own_rule = None if config.shared_phm_rule else _add_rule(self, config, shared=False)
        self.b = (self.add_weight(shape=(out_features,), initializer="zeros", name="b")
                  if config.phm_bias else None)
        self.built = True

    def get_config(self):
        config = super().get_config()
        config.update(in_features=self.in_features, out_features=self.out_features,
                      position=self.position, config=self.config.config_dict())
        return config

    @classmethod
    def from_config(cls, config):
        """A standalone layer: the weights the adapter shares between its layers are its own."""
        config = dict(config)
        bn_config = AdapterConfig.load(config.pop("config"))
        hidden = config["in_features"] if config["position"] == "down" else config["out_features"]
        shared = (PHMShared(bn_config, hidden, dtype=config.get("dtype"), name="shared")
                  if bn_config.shared_phm_rule or bn_config.shared_W_phm else None)
        return cls(config=bn_config, shared=shared, **config)

    def kernel(self):
        shared = self._shared.value
        w = _product(self.own_w if self.own_w is not None else shared.w[self.position])
        rule = _product(self.own_rule if self.own_rule is not None else shared.rule)
        n, rows, cols = self.config.phm_dim, self.in_features // self.config.phm_dim, \
            self.out_features // self.config.phm_dim
        # kron(rule_i, W_i)[r * rows + s, c * cols + t] = rule_i[r, c] * W_i[s, t], summed over i.
        return ops.reshape(ops.einsum("irc,ist->rsct", rule, w), (n * rows, n * cols))

    def call(self, x):
        y = ops.matmul(x, ops.cast(self.kernel(), x.dtype))
        return y if self.b is None else y + ops.cast(self.b, y.dtype)


class _PHMProvider:
    """What `BottleneckAdapter` asks of this module when a config has `phm_layer=True`."""

    @staticmethod
    def validate(config: BnConfig) -> None:
        if config.init_weights != "bert":
            raise ValueError(f"PHM projections (phm_layer) start from their own init; "
                             f"init_weights must be 'bert', got {config.init_weights!r}")
        for name in ("phm_dim", "phm_rank"):
            value = getattr(config, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if config.hypercomplex_nonlinearity not in NONLINEARITIES:
            raise ValueError(f"hypercomplex_nonlinearity must be one of {NONLINEARITIES}, got "
                             f"{config.hypercomplex_nonlinearity!r}")
        if config.phm_c_init not in C_INITS:
            raise ValueError(f"phm_c_init must be one of {C_INITS}, got {config.phm_c_init!r}")
        if config.shared_W_phm and not config.factorized_phm_W:
            raise ValueError("shared_W_phm needs factorized_phm_W (as in the adapters library)")

    @staticmethod
    def layer(in_features, out_features, position, config, shared, **kwargs):
        for size in (in_features, out_features):
            if size % config.phm_dim:
                raise ValueError(f"PHM layers need sizes divisible by phm_dim={config.phm_dim}; "
                                 f"{position} maps {in_features} to {out_features}")
        return PHMLayer(in_features, out_features, position, config, shared, **kwargs)

    @staticmethod
    def shared(config, hidden_size, **kwargs):
        if not (config.shared_phm_rule or config.shared_W_phm):
            return None
        return PHMShared(config, hidden_size, **kwargs)


register_projection("phm", _PHMProvider)

# Bottleneck adapters with PHM projections: `BottleneckMethod` builds them, as any BnConfig.
register_method(CompacterConfig, config_classes=(CompacterPlusPlusConfig,), bare_dicts=False,
                identifiers={"compacter": CompacterConfig(), "compacter++": CompacterPlusPlusConfig()})
