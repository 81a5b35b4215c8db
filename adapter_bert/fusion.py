"""AdapterFusion (Pfeiffer et al. 2021): attention over several task adapters' outputs.

At every bottleneck location where all the fused adapters have an adapter, a `BertFusion` layer
attends from the sublayer's (pre-processed) hidden state over the adapters' up-projections and
replaces their single output by the attention-weighted mix. The config fields, presets and math
are the adapters library's `AdapterFusionConfig` and `BertFusion`:

* `static`: query and key projections, no value projection;
* `dynamic` (the default): query, key and a value projection initialised to the identity (1 on
  the diagonal, 1e-6 elsewhere), with the regularisation `0.01 * ||I - V||^2` toward it.

Scores are `query . key` without a 1/sqrt(d) scaling, dropout acts on the scores before the
softmax, and with `temperature=True` the softmax temperature starts at 50 and falls by 0.05 per
training call to 1 (the library also anneals during evaluation; here evaluation leaves it).

Example:
>>> config = AdapterFusionConfig.load("dynamic", temperature=True)
>>> config.value, config.value_initialized, config.temperature
(True, True, True)
>>> AdapterFusionConfig.load("static").to_dict()["value"]
False
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import keras
import numpy as np
from keras import ops

from adapter_bert.io_utils import read_json
from adapter_bert.methods.base import named_variables
from adapter_bert.methods.bottleneck import BottleneckComposer, BottleneckMethod


@dataclasses.dataclass(frozen=True)
class AdapterFusionConfig:
    """The adapters library's `AdapterFusionConfig` fields (its `dynamic` preset's values).

    Args:
        key / query / value: learn a key, query or value projection.
        query_before_ln: take the query before the layer's LayerNorm.
        regularization: add `0.01 * ||I - V||^2` of each value projection to the training loss.
        residual_before: add the residual to the adapters' outputs before the attention.
        temperature: anneal the softmax temperature from 50 to 1.
        value_before_softmax: apply the value projection to each adapter's output (True) or to
            the attention's result (False).
        value_initialized: start the value projection at the identity.
        dropout_prob: dropout on the scores; None takes the base's attention dropout.
    """

    key: bool = True
    query: bool = True
    value: bool = True
    query_before_ln: bool = False
    regularization: bool = True
    residual_before: bool = False
    temperature: bool = False
    value_before_softmax: bool = True
    value_initialized: bool = True
    dropout_prob: float | None = None

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "dropout_prob":
                if value is not None and (isinstance(value, bool) or not 0 <= value < 1):
                    raise ValueError(f"AdapterFusionConfig dropout_prob must be None or in [0, 1), "
                                     f"got {value!r}")
            elif not isinstance(value, bool):
                raise ValueError(f"AdapterFusionConfig {field.name} must be True or False, got "
                                 f"{value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "AdapterFusionConfig":
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"AdapterFusionConfig has no field(s) {unknown}")
        return dataclasses.replace(self, **changes)

    @staticmethod
    def load(config="dynamic", **kwargs) -> "AdapterFusionConfig":
        """A preset name (`static`, `dynamic`), a config, a dict, or a JSON file's path;
        `kwargs` override fields (None: not given)."""
        if isinstance(config, AdapterFusionConfig):
            loaded = config
        elif isinstance(config, dict):
            loaded = AdapterFusionConfig().replace(**config)
        elif isinstance(config, (str, os.PathLike)) and os.fspath(config) in FUSION_PRESETS:
            loaded = FUSION_PRESETS[os.fspath(config)]
        elif isinstance(config, (str, os.PathLike)) and os.fspath(config).endswith(".json"):
            values = read_json(config, "fusion config")
            if not isinstance(values, dict):
                raise ValueError(f"fusion config file {config} does not hold a JSON object")
            loaded = AdapterFusionConfig().replace(**values.get("config", values))
        else:
            raise ValueError(f"unknown AdapterFusion config {config!r}; known: "
                             + ", ".join(FUSION_PRESETS) + ", or a dict or JSON file")
        return loaded.replace(**{k: v for k, v in kwargs.items() if v is not None})


FUSION_PRESETS = {
    "static": AdapterFusionConfig(value=False, regularization=False, value_initialized=False),
    "dynamic": AdapterFusionConfig(),
}


def _near_identity(size: int) -> np.ndarray:
    """The library's value initialisation: 1 on the diagonal, 1e-6 elsewhere."""
    matrix = np.full((size, size), 1e-6, "float32")
    np.fill_diagonal(matrix, 1.0)
    return matrix


def _bert_init():
    # The library's Adapter.init_bert_weights: normal(0, 0.02) kernels, zero biases.
    return keras.initializers.RandomNormal(stddev=0.02)


class BertFusion(keras.layers.Layer):
    """The AdapterFusion layer of one location: `fusion(query, ups, residual) -> hidden`.

    Args:
        config: an `AdapterFusionConfig`.
        hidden_size: the width of the residual stream (and of each adapter's output).
        dropout: the dropout rate on the scores.

    `ups` is `[..., n_adapters, hidden]`, `query` and `residual` `[..., hidden]` (a batch of
    token rows, or `[batch, seq]` positions). It is registered at its location's `residual`
    hook point under the fusion's name; `BottleneckComposer.compose_fuse` calls it.
    """

    composer = BottleneckComposer

    def __init__(self, config: AdapterFusionConfig, hidden_size: int, dropout: float = 0.1,
                 **kwargs):
        super().__init__(**kwargs)
        self.fusion_config, self.hidden_size, self.dropout_rate = config, hidden_size, dropout
        init = _bert_init()
        self.dense = None
        if not (config.query or config.key or config.value):
            # The library builds this layer and never uses it; kept so weights and counts agree.
            self.dense = keras.layers.Dense(1, kernel_initializer=init, dtype=self.dtype_policy,
                                            name="dense")
        self.query = (keras.layers.Dense(hidden_size, kernel_initializer=init,
                                         dtype=self.dtype_policy, name="query")
                      if config.query else None)
        self.key = (keras.layers.Dense(hidden_size, kernel_initializer=init,
                                       dtype=self.dtype_policy, name="key")
                    if config.key else None)
        value_init = keras.initializers.Constant(_near_identity(hidden_size)) \
            if config.value_initialized else init
        self.value = (keras.layers.Dense(hidden_size, use_bias=False, kernel_initializer=value_init,
                                         dtype=self.dtype_policy, name="value")
                      if config.value else None)
        self.dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy, name="dropout")
        self.build(None)

    def build(self, input_shape):
        for layer in (self.dense, self.query, self.key, self.value):
            if layer is not None:
                layer.build((None, self.hidden_size))
        # Only an annealed temperature is state (a variable the training step updates); a fixed
        # one is the constant 1, so the preset configs hold exactly the library's weights.
        self.temperature = None
        if self.fusion_config.temperature:
            self.temperature = self.add_weight(shape=(), initializer=keras.initializers.Constant(50.0),
                                               trainable=False, name="temperature")
        self.built = True

    def call(self, query, ups, residual, training=None):
        cfg = self.fusion_config
        if cfg.residual_before:
            # The library adds it in place to the tensor that is both its key and its value.
            ups = ups + residual[..., None, :]
        query = self.query(query) if self.query is not None else query
        keys = self.key(ups) if self.key is not None else ups
        values = self.value(ups) if self.value is not None and cfg.value_before_softmax else ups
        scores = ops.sum(query[..., None, :] * keys, axis=-1)          # [..., n_adapters]
        scores = self.dropout(scores, training=training)
        if self.temperature is not None:
            scores = scores / ops.cast(self.temperature, scores.dtype)
            if training:
                self.temperature.assign(ops.maximum(self.temperature - 0.05, 1.0))
        probs = ops.softmax(ops.cast(scores, "float32"), axis=-1)
        context = ops.sum(ops.cast(probs, values.dtype)[..., None] * values, axis=-2)
        if self.value is not None and not cfg.value_before_softmax:
            context = self.value(context)
        return context if cfg.residual_before else context + residual

    def regularization_loss(self):
        """`0.01 * ||I - V||^2`, the library's pull of the value projection toward the identity."""
        if self.value is None:
            return 0.0
        kernel = self.value.kernel
        return 0.01 * ops.sum(ops.square(ops.eye(self.hidden_size, dtype=kernel.dtype) - kernel))

    def get_config(self):
        config = super().get_config()
        config.update(config=self.fusion_config.to_dict(), hidden_size=self.hidden_size,
                      dropout=self.dropout_rate)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["config"] = AdapterFusionConfig.load(config["config"])
        return cls(**config)


# Each bottleneck location flag and the hook point a fusion layer takes there.
_POINTS = {"mh_adapter": "attention_residual", "output_adapter": "output_residual"}


def _fusion_locations(fusion_name: str, configs, num_layers: int) -> list[str]:
    """The hook points where every member has a bottleneck adapter (the library's rule)."""
    for flag in _POINTS:
        if len({bool(getattr(c, flag)) for c in configs}) > 1:
            raise ValueError(f"the adapters of fusion {fusion_name!r} must all have, or all "
                             f"lack, a bottleneck adapter at {flag}")
    locations = [f"layer_{layer}.{point}" for layer in range(num_layers)
                 for flag, point in _POINTS.items()
                 if all(getattr(c, flag) and layer not in (c.leave_out or ()) for c in configs)]
    if not locations:
        raise ValueError(f"the adapters of fusion {fusion_name!r} share no bottleneck location")
    return locations


def _bottleneck_config(module):
    methods = [m for m in module.methods if isinstance(m, BottleneckMethod)]
    if not methods:
        raise ValueError(f"adapter {module.adapter_name!r} has no bottleneck adapter to fuse "
                         f"(it is {', '.join(m.config.architecture for m in module.methods)})")
    return methods[0].config


class FusionModule(keras.layers.Layer):
    """One AdapterFusion: its config, the fused adapters' names, and one `BertFusion` per location.

    A location (the adapters library's rule) is a layer's attention or feed-forward output where
    every member has a bottleneck adapter; the members must agree on `mh_adapter` and
    `output_adapter`.

    Args:
        fusion_name: the name setups use (`Fuse(...).name`: the members joined by commas).
        adapters: the fused adapters' names, in order.
        config: an `AdapterFusionConfig`.
        modules: the members' `AdapterModule`s (only their configs are read), or None with
            `locations` given (a rebuilt fusion, `from_config`).
        hidden_size / num_layers: the base's sizes.
        dropout: the base's attention dropout, used where the config has no `dropout_prob`.
        locations: the hook points the fusion acts at (default: derived from `modules`).
    """

    def __init__(self, fusion_name: str, adapters, config: AdapterFusionConfig, modules,
                 hidden_size: int, num_layers: int, dropout: float = 0.1,
                 locations: list | None = None, **kwargs):
        super().__init__(name=kwargs.pop("name", "fusion_" + fusion_name.replace(",", "_")),
                         **kwargs)
        self.fusion_name, self.adapters, self.fusion_config = fusion_name, list(adapters), config
        self.hidden_size, self.num_layers, self.dropout_rate = hidden_size, num_layers, dropout
        if locations is None:
            locations = _fusion_locations(fusion_name, [_bottleneck_config(m) for m in modules],
                                          num_layers)
        rate = dropout if config.dropout_prob is None else config.dropout_prob
        flags = {point: flag for flag, point in _POINTS.items()}
        self.locations, self.fusions = list(locations), []
        for path in self.locations:
            layer, point = path.split(".")
            self.fusions.append(BertFusion(config, hidden_size, rate, dtype=self.dtype_policy,
                                           name=f"{layer}_{flags[point]}"))
        self.built = True

    def get_config(self):
        config = super().get_config()
        config.update(fusion_name=self.fusion_name, adapters=list(self.adapters),
                      config=self.fusion_config.to_dict(), hidden_size=self.hidden_size,
                      num_layers=self.num_layers, dropout=self.dropout_rate,
                      locations=list(self.locations))
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["config"] = AdapterFusionConfig.load(config["config"])
        return cls(modules=None, **config)

    def placements(self):
        return list(zip(self.locations, self.fusions))

    def attach(self, encoder) -> None:
        for path, layer in self.placements():
            encoder.hook_point(path).add(self.fusion_name, layer)

    def detach(self, encoder) -> None:
        for path, layer in self.placements():
            encoder.hook_point(path).remove(self.fusion_name, layer)

    def named_variables(self) -> dict:
        return named_variables(self)

    def num_params(self) -> int:
        return int(sum(np.prod(v.shape) for v in self.named_variables().values()
                       if v.trainable or "temperature" not in v.path))

    def regularization_loss(self):
        """The sum of the value projections' pulls toward the identity (0 without them)."""
        total = 0.0
        for layer in self.fusions:
            total = total + layer.regularization_loss()
        return total
