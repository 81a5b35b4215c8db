"""`AdapterBertModel`: one frozen BERT, many named adapters and heads, and the adapter API.

The base (`model.bert`, a `BertEncoder`) is shared by every task. Each adapter is an
`AdapterModule` (its config and method layers); each head is a `ClassificationHead`. Activating an
adapter attaches its hooks to the base, so `model.bert(inputs)` and `model(inputs)` run with it;
deactivating detaches them and the base computes exactly what it did before. The exception is a
merged LoRA / (IA)^3 adapter (`merge_adapter`): it lives in the base weights, whatever is active,
until `reset_adapter`.

Example:
>>> from adapter_bert import AdapterBertModel
>>> from adapter_bert.testing import tiny_bert_config, random_inputs
>>> model = AdapterBertModel.from_config(tiny_bert_config())
>>> model.add_adapter("mrpc", config="double_seq_bn[reduction_factor=4]")
>>> model.add_classification_head("mrpc", num_labels=2)
>>> model.train_adapter("mrpc")
>>> tuple(model(random_inputs()).shape)
(3, 2)
>>> print(model.adapter_summary().splitlines()[-1])
trainable params: 2,274 || all params: 23,618 || trainable%: 9.6282
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import keras
import numpy as np

from adapter_bert.bert.checkpoint import (encoder_state, load_pretrained_encoder,
                                          load_state_into_encoder)
from adapter_bert.bert.config import BertConfig
from adapter_bert.bert.encoder import BertEncoder
from adapter_bert.configuration import AdapterConfig, ConfigUnion
from adapter_bert.heads import ClassificationHead, RegressionHead
from adapter_bert.io_utils import atomic_directory, read_json, recover_directory, write_json
from adapter_bert.methods.base import AdapterMethod, named_variables
from adapter_bert.methods.prefix import PrefixTuningMethod
from adapter_bert.methods.registry import config_identifier, method_class_for

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter.safetensors"
HEAD_CONFIG_FILE = "head_config.json"
HEAD_WEIGHTS_FILE = "head.safetensors"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Sizes an adapter's weights depend on; a saved adapter loads only into a base that matches them.
_SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
_HEAD_CLASSES = {"ClassificationHead": ClassificationHead, "RegressionHead": RegressionHead}


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{what} name must be letters, digits, '_', '-' or '.', got {name!r}")




class AdapterModule(keras.layers.Layer):
    """One named adapter: its config and the method layers it is made of (several for a union)."""

    def __init__(self, adapter_name: str, config: AdapterConfig, bert_config: BertConfig, **kwargs):
        super().__init__(name=kwargs.pop("name", adapter_name), **kwargs)
        self.adapter_name = adapter_name
        self.config = config
        self.bert_config = bert_config
        members = list(config) if isinstance(config, ConfigUnion) else [config]
        if isinstance(config, ConfigUnion):
            ConfigUnion.validate_configs(members, num_layers=bert_config.num_hidden_layers)
        self.methods = []
        for index, member in enumerate(members):
            name = member.architecture if len(members) == 1 else f"{member.architecture}_{index}"
            self.methods.append(method_class_for(member)(member, bert_config, dtype=self.dtype_policy,
                                                         name=name))
        self.built = True

    def _lock_state(self):
        # eject_prefix_tuning swaps a method layer after the module is built.
        pass

    @property
    def trains_base(self) -> bool:
        return any(m.trains_base for m in self.methods)

    @property
    def merged(self) -> bool:
        return any(m.merged for m in self.methods)

    def named_variables(self) -> dict[str, keras.Variable]:
        out = {}
        for method in self.methods:
            out.update({f"{method.name}.{k}": v for k, v in method.named_variables().items()})
        return out

    def num_params(self) -> int:
        return int(sum(np.prod(v.shape) for v in self.named_variables().values()))

    def get_config(self):
        config = super().get_config()
        config.update(adapter_name=self.adapter_name, config=self.config.config_dict(),
                      bert_config=self.bert_config.to_dict())
        return config


class AdapterBertModel(keras.Model):
    """A frozen BERT with named adapters and heads (the public API of DESIGN.md).

    Build it with `from_pretrained` (a checkpoint directory, short name or hub id) or
    `from_config` (random weights). `model(inputs)` returns the active head's logits (or the
    encoder outputs when no head is active); `model.bert(inputs)` returns the encoder outputs.
    Inputs are a dict of int `[batch, seq]` arrays: `input_ids`, `attention_mask`,
    `token_type_ids`.
    """

    def __init__(self, bert: BertEncoder, checkpoint_dir: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.bert = bert
        self.checkpoint_dir = checkpoint_dir
        self.adapter_modules = {}
        self.heads = {}
        self._active_adapter = None
        self._active_head = None
        self._training_adapter = None

    def _lock_state(self):
        # Adapters and heads are added and removed after the model is built, by design.
        pass

    # --- construction ----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, **kwargs) -> "AdapterBertModel":
        """Loads a pretrained BERT (local HF or Google directory, short name, or hub id).

        Example:
        >>> model = AdapterBertModel.from_pretrained("all-minilm-l6-v2")
        >>> model.bert.bert_config.hidden_size
        384
        """
        from adapter_bert.bert.checkpoint import resolve_checkpoint

        directory = resolve_checkpoint(path_or_id)
        return cls(load_pretrained_encoder(directory), checkpoint_dir=str(directory), **kwargs)

    @classmethod
    def from_config(cls, config, **kwargs) -> "AdapterBertModel":
        """A randomly initialised model from a `BertConfig` (or a dict from `get_config`)."""
        if isinstance(config, BertConfig):
            return cls(BertEncoder.from_bert_config(config), **kwargs)
        config = dict(config)
        bert_config = BertConfig.from_dict(config.pop("bert_config"))
        return cls(BertEncoder.from_bert_config(bert_config), checkpoint_dir=config.get("checkpoint_dir"))

    def get_config(self):
        return {"bert_config": self.bert.bert_config.to_dict(), "checkpoint_dir": self.checkpoint_dir,
                "name": self.name}

    @property
    def config(self) -> BertConfig:
        return self.bert.bert_config

    # --- adapters ----------------------------------------------------------------------------------

    @property
    def adapters(self) -> dict[str, AdapterModule]:
        return dict(self.adapter_modules)

    def _adapter(self, name: str) -> AdapterModule:
        if name not in self.adapter_modules:
            known = ", ".join(sorted(self.adapter_modules)) or "none"
            raise KeyError(f"no adapter named {name!r} (adapters: {known})")
        return self.adapter_modules[name]

    def add_adapter(self, name: str, config="seq_bn", overwrite_ok: bool = False,
                    set_active: bool = False) -> None:
        """Adds a new adapter.

        Args:
            name: the adapter's name.
            config: a config string (`"double_seq_bn[reduction_factor=24]"`), an `AdapterConfig`,
                a dict, or a JSON file path.
            overwrite_ok: replace an existing adapter of that name instead of raising.
            set_active: activate the new adapter.
        """
        _check_name(name, "adapter")
        if name in self.adapter_modules and not overwrite_ok:
            raise ValueError(f"an adapter named {name!r} exists already (pass overwrite_ok=True)")
        # Built before the old one is removed, so a bad config leaves the model as it was.
        config = AdapterConfig.load(config)
        module = AdapterModule(name, config, self.bert.bert_config, dtype=self.bert.dtype_policy)
        for method in module.methods:
            if hasattr(method, "init_from_base"):
                method.init_from_base(self.bert)
        module.trainable = False
        if name in self.adapter_modules:
            self.delete_adapter(name)
        self.adapter_modules[name] = module
        if set_active:
            self.set_active_adapters(name)

    def delete_adapter(self, name: str) -> None:
        """Removes an adapter (resetting it first if it is merged)."""
        module = self._adapter(name)
        if self._active_adapter == name:
            self.set_active_adapters(None)
        if module.merged:
            self.reset_adapter(name)
        if self._training_adapter == name:
            self._training_adapter = None
        # pop (not del): Keras' tracked dict untracks the layer only on pop.
        self.adapter_modules.pop(name)

    @property
    def active_adapters(self) -> str | None:
        """The name of the active adapter, or None."""
        return self._active_adapter

    def set_active_adapters(self, name: str | None) -> None:
        """Activates adapter `name` (None: the plain base). A head of the same name becomes active too."""
        if name is not None:
            self._adapter(name)
        previous = self._active_adapter
        if previous is not None:
            for method in self.adapter_modules[previous].methods:
                method.detach(self.bert)
        self._active_adapter = None
        self._forget_traces()
        if name is None:
            return
        try:
            for method in self.adapter_modules[name].methods:
                method.attach(self.bert)
        except Exception:
            # Detaching is idempotent, so undo every method (the failing one may be half attached)
            # and put the previous adapter back.
            for method in self.adapter_modules[name].methods:
                method.detach(self.bert)
            if previous is not None:
                for method in self.adapter_modules[previous].methods:
                    method.attach(self.bert)
                self._active_adapter = previous
            raise
        self._active_adapter = name
        if name in self.heads:
            self._active_head = name

    def _forget_traces(self) -> None:
        # Which hooks run is Python state baked into traced functions; retrace after a change.
        for attr in ("train_function", "test_function", "predict_function"):
            if hasattr(self, attr):
                setattr(self, attr, None)

    def train_adapter(self, name: str) -> None:
        """Activates adapter `name` and makes only it (with its LayerNorm copies) and head `name` trainable."""
        module = self._adapter(name)
        if module.merged:
            raise ValueError(f"adapter {name!r} is merged into the base; reset_adapter({name!r}) "
                             "before training it")
        self.set_active_adapters(name)
        self.bert.trainable = module.trains_base
        for other_name, other in self.adapter_modules.items():
            other.trainable = other_name == name
        for head_name, head in self.heads.items():
            head.trainable = head_name == name
        self._training_adapter = name

    def freeze_model(self) -> None:
        """Makes every weight untrainable (inference)."""
        self.bert.trainable = False
        for layer in list(self.adapter_modules.values()) + list(self.heads.values()):
            layer.trainable = False
        self._training_adapter = None

    def _mergeable_methods(self, name: str) -> list[AdapterMethod]:
        methods = [m for m in self._adapter(name).methods if m.mergeable]
        if not methods:
            raise TypeError(f"adapter {name!r} has no LoRA or (IA)^3 part to merge")
        return methods

    @contextlib.contextmanager
    def _adapters_detached(self):
        """Runs a block with no adapter attached, then re-activates the one that was active."""
        active = self._active_adapter
        self.set_active_adapters(None)
        try:
            yield
        finally:
            if active is not None:
                self.set_active_adapters(active)

    def merge_adapter(self, name: str) -> None:
        """Folds LoRA / (IA)^3 adapter `name` into the base weights (no cost at inference)."""
        methods = self._mergeable_methods(name)
        with self._adapters_detached():
            for method in methods:
                method.merge(self.bert)

    def reset_adapter(self, name: str) -> None:
        """Undoes `merge_adapter`: the base weights are restored exactly."""
        methods = self._mergeable_methods(name)
        with self._adapters_detached():
            for method in methods:
                method.reset(self.bert)

    def eject_prefix_tuning(self, name: str) -> None:
        """Replaces prefix tuning's reparameterisation by its result: flat prefixes, same outputs."""
        module = self._adapter(name)
        index = [i for i, m in enumerate(module.methods) if isinstance(m, PrefixTuningMethod)]
        if not index:
            raise TypeError(f"adapter {name!r} has no prefix tuning part")
        with self._adapters_detached():
            trainable = module.trainable
            ejected = module.methods[index[0]].ejected()
            module.methods.pop(index[0])
            module.methods.insert(index[0], ejected)
            members = list(module.config) if isinstance(module.config, ConfigUnion) else [module.config]
            members[index[0]] = ejected.config
            module.config = ConfigUnion(*members) if len(members) > 1 else members[0]
            module.trainable = trainable

    # --- heads -------------------------------------------------------------------------------------

    def add_classification_head(self, name: str, num_labels: int = 2, pooling: str = "cls",
                                layers: int = 1, dropout: float | None = None,
                                id2label: dict | None = None, overwrite_ok: bool = False,
                                set_active: bool = True) -> None:
        """Adds a classification head (softmax over `num_labels`).

        Args:
            pooling: "cls" (BERT's pooler) or "mean" (masked mean of the sequence output).
            layers: 1 (Dense) or 2 (tanh hidden layer, then Dense).
            dropout: defaults to the base's hidden dropout.
        """
        self._add_head(name, ClassificationHead, overwrite_ok, set_active, num_labels=num_labels,
                       pooling=pooling, layers=layers, dropout=dropout, id2label=id2label)

    def add_regression_head(self, name: str, pooling: str = "cls", layers: int = 1,
                            dropout: float | None = None, overwrite_ok: bool = False,
                            set_active: bool = True) -> None:
        """Adds a one-output regression head trained with mean squared error (STS-B)."""
        self._add_head(name, RegressionHead, overwrite_ok, set_active, pooling=pooling,
                       layers=layers, dropout=dropout)

    def _add_head(self, name, head_class, overwrite_ok, set_active, dropout=None, **kwargs):
        _check_name(name, "head")
        if name in self.heads and not overwrite_ok:
            raise ValueError(f"a head named {name!r} exists already (pass overwrite_ok=True)")
        cfg = self.bert.bert_config
        dropout = cfg.hidden_dropout_prob if dropout is None else dropout
        head = head_class(hidden_size=cfg.hidden_size, dropout=dropout,
                          initializer_range=cfg.initializer_range, dtype=self.bert.dtype_policy,
                          name=f"head_{name}", **kwargs)
        head.trainable = self._training_adapter == name
        # pop first: assigning over a tracked dict entry would keep the old head's weights tracked.
        self.heads.pop(name, None)
        self.heads[name] = head
        if set_active:
            self._active_head = name

    def delete_head(self, name: str) -> None:
        if name not in self.heads:
            raise KeyError(f"no head named {name!r}")
        self.heads.pop(name)
        if self._active_head == name:
            self._active_head = None

    @property
    def active_head(self) -> str | None:
        return self._active_head

    @active_head.setter
    def active_head(self, name: str | None) -> None:
        if name is not None and name not in self.heads:
            raise KeyError(f"no head named {name!r} (heads: {', '.join(sorted(self.heads)) or 'none'})")
        self._active_head = name
        self._forget_traces()

    # --- forward -----------------------------------------------------------------------------------

    def call(self, inputs, training=None):
        outputs = self.bert(inputs, training=training)
        if self._active_head is None:
            return outputs
        mask = inputs.get("attention_mask", inputs.get("padding_mask"))
        if mask is None:
            mask = keras.ops.ones_like(inputs["input_ids"])
        return self.heads[self._active_head](outputs, mask, training=training)

    # --- saving and loading ------------------------------------------------------------------------

    def _shape_config(self) -> dict:
        cfg = self.bert.bert_config.to_dict()
        return {k: cfg[k] for k in _SHAPE_KEYS}

    def save_adapter(self, directory: str | os.PathLike, name: str, with_head: bool = True) -> None:
        """Writes adapter `name` (and head `name`, if any) to `directory`, atomically.

        Files: `adapter_config.json`, `adapter.safetensors` and, with a head, `head_config.json` +
        `head.safetensors`. If anything fails, a previous save in `directory` is left intact.
        """
        from safetensors.numpy import save_file

        module = self._adapter(name)
        target = Path(directory)
        if target.is_dir() and any(target.iterdir()) and not (target / ADAPTER_CONFIG_FILE).is_file():
            raise ValueError(f"{target} is a non-empty directory that holds no saved adapter; "
                             "save_adapter replaces its directory as a whole, pick an empty one")
        if module.trains_base:
            weights = {f"bert.{k}": np.ascontiguousarray(v) for k, v in encoder_state(self.bert).items()}
        else:
            weights = {k: np.ascontiguousarray(v.numpy()) for k, v in module.named_variables().items()}
        with atomic_directory(directory) as tmp:
            write_json(tmp / ADAPTER_CONFIG_FILE, {
                "name": name, "config": module.config.config_dict(),
                "model_config": self._shape_config(), "library": "adapter_bert",
                "format_version": 1})
            save_file(weights, str(tmp / ADAPTER_WEIGHTS_FILE), metadata={"format": "adapter_bert"})
            if with_head and name in self.heads:
                head = self.heads[name]
                head_config = {k: v for k, v in head.get_config().items()
                               if k not in ("name", "dtype", "trainable")}
                write_json(tmp / HEAD_CONFIG_FILE, {"name": name, "head_class": type(head).__name__,
                                                    "config": head_config})
                save_file({k: np.ascontiguousarray(v.numpy())
                           for k, v in named_variables(head).items()},
                          str(tmp / HEAD_WEIGHTS_FILE))

    def load_adapter(self, directory: str | os.PathLike, load_as: str | None = None,
                     with_head: bool = True, set_active: bool = False) -> str:
        """Loads an adapter written by `save_adapter`; returns its name.

        Raises a one-line error for a missing or corrupt file, or an adapter trained for a model
        of another size. Nothing is added to the model unless everything loads.
        """
        directory = Path(directory)
        recover_directory(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"adapter directory {directory} does not exist")
        meta = read_json(directory / ADAPTER_CONFIG_FILE, "adapter config")
        if not isinstance(meta, dict) or "config" not in meta or "model_config" not in meta:
            raise ValueError(f"{directory / ADAPTER_CONFIG_FILE} is not an adapter_bert adapter config")
        mine = self._shape_config()
        theirs = {k: meta["model_config"].get(k) for k in _SHAPE_KEYS}
        if theirs != mine:
            diff = ", ".join(f"{k}={theirs[k]} (this model: {mine[k]})" for k in _SHAPE_KEYS
                             if theirs[k] != mine[k])
            raise ValueError(f"adapter in {directory} was trained for a base of another size: {diff}")
        name = load_as or meta["name"]
        _check_name(name, "adapter")
        weights = _read_weights(directory / ADAPTER_WEIGHTS_FILE)
        config = AdapterConfig.load(meta["config"])
        module = AdapterModule(name, config, self.bert.bert_config, dtype=self.bert.dtype_policy)
        head = None
        if with_head and (directory / HEAD_CONFIG_FILE).is_file():
            head = self._read_head(directory, name)
        if module.trains_base:
            state = {k.removeprefix("bert."): v for k, v in weights.items()}
            load_state_into_encoder(self.bert, state, source=str(directory / ADAPTER_WEIGHTS_FILE))
        else:
            _assign_named(module.named_variables(), weights, directory / ADAPTER_WEIGHTS_FILE)
        if name in self.adapter_modules:
            self.delete_adapter(name)
        module.trainable = False
        self.adapter_modules[name] = module
        if head is not None:
            head.trainable = False
            self.heads.pop(name, None)
            self.heads[name] = head
        if set_active:
            self.set_active_adapters(name)
        return name

    def _read_head(self, directory: Path, name: str) -> ClassificationHead:
        meta = read_json(directory / HEAD_CONFIG_FILE, "head config")
        head_class = _HEAD_CLASSES.get(meta.get("head_class"))
        if head_class is None:
            raise ValueError(f"{directory / HEAD_CONFIG_FILE}: unknown head class {meta.get('head_class')!r}")
        config = dict(meta["config"])
        if config.get("hidden_size") != self.bert.bert_config.hidden_size:
            raise ValueError(f"head in {directory} has hidden_size {config.get('hidden_size')}, "
                             f"this model {self.bert.bert_config.hidden_size}")
        if head_class is RegressionHead:
            config.pop("num_labels", None)
            config.pop("problem_type", None)
        head = head_class(dtype=self.bert.dtype_policy, name=f"head_{name}", **config)
        weights = _read_weights(directory / HEAD_WEIGHTS_FILE)
        _assign_named(named_variables(head), weights, directory / HEAD_WEIGHTS_FILE)
        return head

    # --- reporting ---------------------------------------------------------------------------------

    def adapter_summary(self, as_dict: bool = False):
        """A table of adapters and the PEFT-style parameter line.

        Returns a string (or, with `as_dict=True`, a list of dicts with keys name, architecture,
        params, active, train). `params` counts the adapter's own weights (the whole base for full
        fine-tuning); the last line counts trainable and all weights of the model.
        """
        base_params = self.bert.count_params()
        rows = []
        for name, module in self.adapter_modules.items():
            label = config_identifier(module.config) + (" (merged)" if module.merged else "")
            rows.append({"name": name, "architecture": label,
                         "params": base_params if module.trains_base else module.num_params(),
                         "active": name == self._active_adapter,
                         "train": name == self._training_adapter})
        if as_dict:
            return rows
        trainable = int(sum(np.prod(v.shape) for v in self.trainable_weights))
        total = int(sum(np.prod(v.shape) for v in self.weights))
        width = max([len(r["name"]) for r in rows] + [4])
        arch_width = max([len(r["architecture"]) for r in rows] + [12])
        lines = [f"{'name':<{width}}  {'architecture':<{arch_width}}  {'#params':>12}  "
                 f"{'%base':>8}  active  train", "-" * (width + arch_width + 42)]
        for r in rows:
            lines.append(f"{r['name']:<{width}}  {r['architecture']:<{arch_width}}  "
                         f"{r['params']:>12,}  {100 * r['params'] / base_params:>8.3f}  "
                         f"{str(r['active']):>6}  {str(r['train']):>5}")
        lines.append("-" * (width + arch_width + 42))
        lines.append(f"trainable params: {trainable:,} || all params: {total:,} || "
                     f"trainable%: {100 * trainable / total:.4f}")
        return "\n".join(lines)


def _read_weights(path: Path) -> dict[str, np.ndarray]:
    """A safetensors file's tensors, with one-line errors for a missing or corrupt file."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except (SafetensorError, OSError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None


def _assign_named(variables: dict, weights: dict, source) -> None:
    """Assigns `weights` to `variables` by name after checking that names and shapes agree."""
    missing = sorted(set(variables) - set(weights))
    unexpected = sorted(set(weights) - set(variables))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else ""))
        if unexpected:
            parts.append("unexpected " + ", ".join(unexpected[:3]) + (" ..." if len(unexpected) > 3 else ""))
        raise ValueError(f"{source} does not match the adapter config: " + "; ".join(parts))
    for key, variable in variables.items():
        if tuple(weights[key].shape) != tuple(variable.shape):
            raise ValueError(f"{source}: weight {key} has shape {tuple(weights[key].shape)}, "
                             f"expected {tuple(variable.shape)}")
    for key, variable in variables.items():
        variable.assign(weights[key].astype(variable.dtype))
