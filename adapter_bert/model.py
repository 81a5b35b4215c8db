"""`AdapterBertModel`: one frozen BERT, many named adapters and heads, and the adapter API.

The base (`model.bert`, a `BertEncoder`) is shared by every task. Each adapter is an
`AdapterModule` (its config and method layers), whose hooks are registered at the encoder's hook
points when it is added; each head is a `ClassificationHead`. What runs is the *active setup*
(`set_active_adapters`): an adapter name, or a composition block of several
(`adapter_bert.composition`: `Stack`, `Parallel`, `BatchSplit`, `Average`, `Split`), which the
encoder walks at every hook point. With no setup the base computes exactly what it did before any
adapter was added. The exception is a merged LoRA / (IA)^3 adapter (`merge_adapter`): it lives in
the base weights, whatever is active, until `reset_adapter`.

Example:
>>> from adapter_bert import AdapterBertModel, Stack
>>> from adapter_bert.testing import tiny_bert_config, random_inputs
>>> model = AdapterBertModel.from_config(tiny_bert_config())
>>> model.add_adapter("mrpc", config="double_seq_bn[reduction_factor=4]")
>>> model.add_classification_head("mrpc", num_labels=2)
>>> model.train_adapter("mrpc")
>>> tuple(model(random_inputs()).shape)
(3, 2)
>>> print(model.adapter_summary().splitlines()[-1])
trainable params: 2,274 || all params: 23,618 || trainable%: 9.6282
>>> model.add_adapter("lang", config="seq_bn[reduction_factor=4]")
>>> model.set_active_adapters(Stack("lang", "mrpc"))
>>> model.active_adapters, model.active_head
(Stack[lang, mrpc], 'mrpc')
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import keras
import numpy as np

from adapter_bert.bert.checkpoint import (base_part_names, base_variables_by_part, encoder_state,
                                          load_pretrained_encoder, load_state_into_encoder)
from adapter_bert.bert.config import BertConfig
from adapter_bert.averaging import average_heads, average_modules
from adapter_bert.bert.encoder import BertEncoder
from adapter_bert.composition import (AdapterCompositionBlock, BatchSplit, Fuse, MultiTask, as_setup,
                                      parse_heads_from_composition, setup_from_dict, setup_key,
                                      setup_to_dict)
from adapter_bert.configuration import AdapterConfig, ConfigUnion
from adapter_bert.fusion import FUSION_PRESETS, AdapterFusionConfig, FusionModule
from adapter_bert.bert.hooks import first_adapter
from adapter_bert.heads import ClassificationHead, MaskedLMHead, RegressionHead
from adapter_bert.io_utils import (atomic_directory, read_json, recover_directory, write_file,
                                   write_json)
from adapter_bert.methods.base import AdapterMethod, named_variables
from adapter_bert.methods.prefix import PrefixTuningMethod
from adapter_bert.methods.registry import config_identifier, method_class_for

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter.safetensors"
HEAD_CONFIG_FILE = "head_config.json"
HEAD_WEIGHTS_FILE = "head.safetensors"
SETUP_FILE = "adapter_setup.json"
FUSION_CONFIG_FILE = "adapter_fusion_config.json"
FUSION_WEIGHTS_FILE = "model_adapter_fusion.safetensors"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Sizes an adapter's weights depend on; a saved adapter loads only into a base that matches them.
_SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
_HEAD_CLASSES = {"ClassificationHead": ClassificationHead, "RegressionHead": RegressionHead,
                 "MaskedLMHead": MaskedLMHead}


NATIVE_FORMAT = "adapter_bert"


class AdapterFormats:
    """Other libraries' adapter files, as `adapter_bert.formats` registers them when the package
    is imported (it stands above this module, which only calls what was registered).

    `locate(path_or_id) -> (directory, default name)` finds a directory or Hub repository,
    `detect(directory) -> format name` tells which library wrote it, and each format has a
    reader `(model, directory, load_as, default name, with_head) -> (name, module, head,
    (base state, source))` and a writer `(model, adapter name, with_head) -> {file name: JSON
    value or io_utils.Tensors}` that raises before returning when the adapter
    cannot be expressed.
    """

    def __init__(self):
        self.locate = _local_directory
        self.detect = lambda directory: NATIVE_FORMAT
        self.readers, self.writers = {}, {}

    def register(self, name: str, reader, writer) -> None:
        self.readers[name], self.writers[name] = reader, writer

    def names(self) -> tuple[str, ...]:
        return (NATIVE_FORMAT,) + tuple(self.writers)


def _local_directory(path_or_id):
    return Path(path_or_id), Path(path_or_id).name


ADAPTER_FORMATS = AdapterFormats()


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

    def attach(self, encoder) -> None:
        """Registers every method's hooks under this adapter's name (all or none)."""
        done = []
        try:
            for method in self.methods:
                if not method.merged:
                    method.attach(encoder, self.adapter_name)
                    done.append(method)
        except Exception:
            for method in done:
                method.detach(encoder, self.adapter_name)
            raise

    def detach(self, encoder) -> None:
        for method in self.methods:
            if not method.merged:
                method.detach(encoder, self.adapter_name)

    def supported_blocks(self) -> frozenset:
        """The composition blocks every method of this adapter can be walked through."""
        blocks = None
        for method in self.methods:
            blocks = method.supported_blocks() if blocks is None else blocks & method.supported_blocks()
        return blocks

    def base_parts(self) -> list[str]:
        """The parts of the base this adapter trains (full or partial fine-tuning), bottom to top."""
        parts = {p for m in self.methods for p in m.base_parts()}
        return [p for p in base_part_names(self.bert_config.num_hidden_layers) if p in parts]

    @property
    def trains_base(self) -> bool:
        return bool(self.base_parts())

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

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(config.pop("adapter_name"), AdapterConfig.load(config.pop("config")),
                   BertConfig.from_dict(config.pop("bert_config")), **config)


@keras.saving.register_keras_serializable(package="adapter_bert")
class AdapterBertModel(keras.Model):
    """A frozen BERT with named adapters and heads: the package's adapter API.

    Build it with `from_pretrained` (a checkpoint directory, short name or hub id) or
    `from_config` (random weights). `model(inputs)` returns the active head's logits (or the
    encoder outputs when no head is active); `model.bert(inputs)` returns the encoder outputs.
    Inputs are a dict of int `[batch, seq]` arrays: `input_ids`, `attention_mask`,
    `token_type_ids`. Under a `Parallel` setup both return one output per branch; under a
    `BatchSplit` setup `model(inputs)` returns one head output per group of rows.

    The whole model, with every adapter, head and fusion and the active setup, saves the Keras
    way: `model.save("m.keras")`, then `keras.models.load_model("m.keras")` (adapters merged into
    the base are reset first; the file keeps them apart).

    Example:
    >>> import tempfile, os, keras
    >>> from adapter_bert.testing import random_inputs, tiny_bert_config
    >>> model = AdapterBertModel.from_config(tiny_bert_config())
    >>> model.add_adapter("a", config="lora[init_weights='bert']", set_active=True)
    >>> model.add_classification_head("a", num_labels=3)
    >>> path = os.path.join(tempfile.mkdtemp(), "m.keras")
    >>> model.save(path)
    >>> again = keras.models.load_model(path)
    >>> again.active_adapters, again.active_head
    ('a', 'a')
    >>> bool(np.allclose(again(random_inputs()), model(random_inputs()), atol=1e-6))
    True
    """

    def __init__(self, bert: BertEncoder, checkpoint_dir: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.bert = bert
        self.checkpoint_dir = checkpoint_dir
        self.adapter_modules = {}
        self.fusion_modules = {}
        self.heads = {}
        self._active_head = None
        self._training_adapters: set[str] = set()
        self._training_fusions: set[str] = set()
        # Keras' traced train / test / predict functions bake in the setup that was active when
        # they were traced; they are kept per setup, so switching back reuses the right ones.
        self._traces: dict[tuple, dict] = {}
        # Every weight exists once the encoder does (adapters and heads build as they are added).
        self.built = True

    def save(self, filepath, overwrite: bool = True, **kwargs):
        """Keras' `save`, written beside the target and renamed into place, so a refusal (a merged
        adapter) or a failure leaves no file, and an earlier file stays whole."""
        self.get_config()  # refusals first
        path = Path(filepath)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists (pass overwrite=True)")
        tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
        try:
            super().save(tmp, overwrite=True, **kwargs)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

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
        """A randomly initialised model from a `BertConfig`, or the model a `get_config` dict
        describes: its adapters, heads and fusions (with fresh weights) and active setup."""
        if isinstance(config, BertConfig):
            return cls(BertEncoder.from_bert_config(config), **kwargs)
        config = dict(config)
        bert_config = BertConfig.from_dict(config.pop("bert_config"))
        model = cls(BertEncoder.from_bert_config(bert_config), checkpoint_dir=config.get("checkpoint_dir"),
                    name=config.get("name"))
        for item in config.get("adapters", []):
            model.add_adapter(item["name"], config=AdapterConfig.load(item["config"]))
        for item in config.get("heads", []):
            head = model._new_head(item["name"], item["head_class"], item["config"], {}, "config",
                                   check_weights=False)
            head.trainable = False
            model.heads[item["name"]] = head
        for item in config.get("fusions", []):
            model.add_adapter_fusion(Fuse(*item["adapters"], name=item["name"]),
                                     config=AdapterFusionConfig.load(item["config"]))
        if config.get("active_adapters") is not None:
            model.set_active_adapters(setup_from_dict(config["active_adapters"]),
                                      skip_layers=config.get("skip_layers") or None)
        if config.get("active_head") is not None:
            heads = config["active_head"]
            model.active_head = setup_from_dict(heads) if isinstance(heads, dict) else heads
        return model

    def get_config(self):
        """Everything `from_config` needs to rebuild this model's structure (not its weights).

        Raises:
            ValueError: a merged adapter (its update lives in the base kernels; reset it first).
        """
        merged = [n for n, m in self.adapter_modules.items() if m.merged]
        if merged:
            raise ValueError(f"adapter(s) {', '.join(merged)} are merged into the base; "
                             "reset_adapter before saving the whole model")
        heads = self._active_head
        return {"bert_config": self.bert.bert_config.to_dict(), "checkpoint_dir": self.checkpoint_dir,
                "name": self.name,
                "adapters": [{"name": n, "config": m.config.config_dict()}
                             for n, m in self.adapter_modules.items()],
                "heads": [{"name": n, "head_class": type(h).__name__, "config": _head_config(h)}
                          for n, h in self.heads.items()],
                "fusions": [{"name": n, "adapters": list(f.adapters),
                             "config": f.fusion_config.to_dict()}
                            for n, f in self.fusion_modules.items()],
                "active_adapters": (None if self.active_adapters is None
                                    else setup_to_dict(self.active_adapters)),
                "skip_layers": sorted(self.bert.skip_layers),
                "active_head": (setup_to_dict(heads) if isinstance(heads, AdapterCompositionBlock)
                                else heads)}

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
        """Adds a new adapter; its hooks are registered but run only once a setup names it.

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
            method.init_from_base(self.bert, checkpoint_dir=self.checkpoint_dir)
        self._install(name, module)
        if set_active:
            self.set_active_adapters(name)

    def _install(self, name: str, module: AdapterModule) -> None:
        """Puts a built module in place of any adapter of that name and registers its hooks."""
        setup, skip_layers = self.active_adapters, self.bert.skip_layers
        if name in self.adapter_modules:
            self._replacing = True
            try:
                self.delete_adapter(name)
            finally:
                self._replacing = False
        module.trainable = False
        module.attach(self.bert)
        self.adapter_modules[name] = module
        self._invalidate_traces()
        if setup is not None and self.active_adapters is None and name in _names(setup):
            try:  # the replaced adapter was active: the new one takes its place
                self.set_active_adapters(setup, skip_layers=skip_layers)
            except ValueError as e:
                raise ValueError(f"adapter {name!r} was replaced, but cannot take its place in the "
                                 f"active setup: {e}; no setup is active now") from None

    def delete_adapter(self, name: str) -> None:
        """Removes an adapter (resetting it first if it is merged); a setup naming it is cleared.

        An adapter that a fusion fuses is refused: delete the fusion first.
        """
        module = self._adapter(name)
        fused = [f for f, m in self.fusion_modules.items() if name in m.adapters]
        if fused and not getattr(self, "_replacing", False):
            raise ValueError(f"adapter {name!r} is fused in {', '.join(map(repr, fused))}; "
                             "delete_adapter_fusion first")
        if name in _names(self.active_adapters):
            self.set_active_adapters(None)
        if module.merged:
            self.reset_adapter(name)
        self._training_adapters.discard(name)
        module.detach(self.bert)
        # pop (not del): Keras' tracked dict untracks the layer only on pop.
        self.adapter_modules.pop(name)
        self._invalidate_traces()

    @property
    def active_adapters(self):
        """The active setup: an adapter name, a composition block, or None."""
        return self.bert.active_setup

    def set_active_adapters(self, setup, skip_layers=None) -> None:
        """Activates a setup: an adapter name, a composition block, a list (a `Stack`), a setup
        string such as `"Stack(lang, mrpc)"`, or None for the plain base.

        The heads that go with it become active (`parse_heads_from_composition`): a name's head,
        each `Parallel` branch's, each `BatchSplit` group's. `skip_layers` (AdapterDrop) are
        layers where no adapter runs; every call sets them anew, as in the adapters library.

        Raises:
            KeyError: a name with no adapter.
            ValueError: a nesting the library does not allow, a block one of the adapters'
                methods cannot be composed with, or bad `skip_layers`. The previous setup stays.
        """
        setup = as_setup(setup)
        for name in _names(setup):
            self._adapter(name)
        _check_blocks(setup, self.adapter_modules, self.fusion_modules)
        if not isinstance(setup, (str, type(None))):
            _check_not_merged(setup, self.adapter_modules)
        self.bert.set_active_setup(setup, tuple(skip_layers or ()))
        heads = parse_heads_from_composition(setup) if setup is not None else None
        if heads is not None and all(h in self.heads for h in _head_names(heads)):
            self._active_head = heads
        self._swap_traces()

    def _setup_key(self) -> tuple:
        merged = tuple(sorted(n for n, m in self.adapter_modules.items() if m.merged))
        head = self._active_head
        head = setup_key(head) if isinstance(head, AdapterCompositionBlock) else repr(head)
        return (setup_key(self.active_adapters), tuple(sorted(self.bert.skip_layers)), head,
                merged, tuple(sorted(self._training_adapters)), tuple(sorted(self._training_fusions)))

    def _invalidate_traces(self) -> None:
        """Forgets every traced function: the adapters or heads they captured have changed."""
        for name in ("train_function", "test_function", "predict_function"):
            setattr(self, name, None)
        self._traces.clear()
        self._trace_key = None
        self._swap_traces()

    def compile(self, *args, **kwargs):
        # Functions traced before hold the previous optimizer, loss and metrics.
        super().compile(*args, **kwargs)
        self._invalidate_traces()

    def _swap_traces(self) -> None:
        """Keeps Keras' traced functions per setup: each setup is traced at most once."""
        current = getattr(self, "_trace_key", None)
        key = self._setup_key()
        if current == key:
            return
        names = ("train_function", "test_function", "predict_function")
        if current is not None:
            self._traces[current] = {n: getattr(self, n, None) for n in names}
        for n, function in self._traces.get(key, dict.fromkeys(names)).items():
            setattr(self, n, function)
        self._trace_key = key

    def train_adapter(self, setup) -> None:
        """Activates `setup` and makes only its adapters (with their LayerNorm copies) and the
        heads named after them trainable; everything else is frozen.

        `train_adapter("task")` then `set_active_adapters(Stack("lang", "task"))` trains "task"
        inside the stack with "lang" frozen (how MAD-X trains a task adapter).
        """
        setup = as_setup(setup)
        names = _names(setup)
        for name in names:
            if self._adapter(name).merged:
                raise ValueError(f"adapter {name!r} is merged into the base; reset_adapter({name!r}) "
                                 "before training it")
        self.set_active_adapters(setup)
        self._train_base_parts({p for n in names for p in self.adapter_modules[n].base_parts()})
        for other_name, other in self.adapter_modules.items():
            other.trainable = other_name in names
        for fusion in self.fusion_modules.values():
            fusion.trainable = False
        for head_name, head in self.heads.items():
            head.trainable = head_name in names
        self._training_adapters = set(names)
        self._training_fusions = set()
        self._swap_traces()

    def _train_base_parts(self, parts) -> None:
        """Makes the base's weights of `parts` (`base_part` names) trainable, the rest frozen."""
        encoder = self.bert
        encoder.trainable = bool(parts)  # Keras lists no weight of an untrainable parent
        if not parts:
            return
        layers = {"embeddings": encoder.embeddings, "pooler": encoder.pooler}
        layers.update({f"layer_{i}": layer for i, layer in enumerate(encoder.layers)})
        for part, layer in layers.items():
            layer.trainable = part in parts

    def freeze_model(self) -> None:
        """Makes every weight untrainable (inference)."""
        self.bert.trainable = False
        for layer in (list(self.adapter_modules.values()) + list(self.fusion_modules.values())
                      + list(self.heads.values())):
            layer.trainable = False
        self._training_adapters = set()
        self._training_fusions = set()
        self._swap_traces()

    def _mergeable_methods(self, name: str) -> list[AdapterMethod]:
        methods = [m for m in self._adapter(name).methods if m.mergeable]
        if not methods:
            raise TypeError(f"adapter {name!r} has no LoRA or (IA)^3 part to merge")
        return methods

    def merge_adapter(self, name: str) -> None:
        """Folds LoRA / (IA)^3 adapter `name` into the base weights (no cost at inference).

        A merged adapter acts on every row, whatever is active; so it cannot be merged while a
        composition block names it (activate it alone, or reset it first).
        """
        methods = self._mergeable_methods(name)
        setup = self.active_adapters
        if not isinstance(setup, (str, type(None))) and name in setup.flatten():
            raise ValueError(f"adapter {name!r} is part of the active setup {setup}; a merged "
                             "adapter would act on every row and branch of it")
        done = []
        try:
            for method in methods:
                method.merge(self.bert, name)
                done.append(method)
        except Exception:
            for method in done:
                method.reset(self.bert, name)
            raise
        self._swap_traces()

    def reset_adapter(self, name: str) -> None:
        """Undoes `merge_adapter`: the base weights are restored exactly."""
        for method in self._mergeable_methods(name):
            method.reset(self.bert, name)
        self._swap_traces()

    def eject_prefix_tuning(self, name: str) -> None:
        """Replaces prefix tuning's reparameterisation by its result: flat prefixes, same outputs."""
        module = self._adapter(name)
        index = [i for i, m in enumerate(module.methods) if isinstance(m, PrefixTuningMethod)]
        if not index:
            raise TypeError(f"adapter {name!r} has no prefix tuning part")
        trainable = module.trainable
        old = module.methods[index[0]]
        ejected = old.ejected()
        old.detach(self.bert, name)
        module.methods.pop(index[0])
        module.methods.insert(index[0], ejected)
        ejected.attach(self.bert, name)
        members = list(module.config) if isinstance(module.config, ConfigUnion) else [module.config]
        members[index[0]] = ejected.config
        module.config = ConfigUnion(*members) if len(members) > 1 else members[0]
        module.trainable = trainable
        self._invalidate_traces()

    # --- combining adapters and heads ---------------------------------------------------------------

    def average_adapter(self, name: str, adapter_list, weights=None, combine_strategy: str = "linear",
                        normalize_weights: bool = True, overwrite_ok: bool = False,
                        set_active: bool = False, svd_rank: int | None = None) -> None:
        """Adds adapter `name` whose weights combine those of `adapter_list` (all of one config).

        Args:
            adapter_list: names of adapters with equal configs (dropout and init aside).
            weights: one per adapter (default equal); divided by their sum unless
                `normalize_weights=False`.
            combine_strategy: "linear" (the weighted sum of every weight; for LoRA of `A` and
                `B` separately, as the adapters library does), and for LoRA also
                "lora_linear_only_negate_b" (`A` weighted by |w|, `B` by w) and
                "lora_delta_w_svd" (the rank-`svd_rank` SVD of the weighted sum of the updates).
            svd_rank: the rank of "lora_delta_w_svd"'s result.

        Example:
        >>> from adapter_bert.testing import tiny_bert_config
        >>> model = AdapterBertModel.from_config(tiny_bert_config())
        >>> model.add_adapter("a", config="lora"); model.add_adapter("b", config="lora")
        >>> model.average_adapter("ab", ["a", "b"], weights=[0.7, 0.3])
        >>> model.adapters["ab"].config == model.adapters["a"].config
        True
        """
        _check_name(name, "adapter")
        if name in self.adapter_modules and not overwrite_ok:
            raise ValueError(f"an adapter named {name!r} exists already (pass overwrite_ok=True)")
        sources = [self._adapter(n) for n in adapter_list] if adapter_list else []
        config, values = average_modules(sources, weights, normalize_weights, combine_strategy,
                                         svd_rank)
        module = AdapterModule(name, config, self.bert.bert_config, dtype=self.bert.dtype_policy)
        assign_named(module.named_variables(), values, f"the average of {', '.join(adapter_list)}")
        self._install(name, module)
        if set_active:
            self.set_active_adapters(name)

    def average_head(self, name: str, head_list, weights=None, normalize_weights: bool = True,
                     overwrite_ok: bool = False, set_active: bool = False) -> None:
        """Adds head `name`, the weighted sum of the weights of `head_list` (one class and config)."""
        _check_name(name, "head")
        if name in self.heads and not overwrite_ok:
            raise ValueError(f"a head named {name!r} exists already (pass overwrite_ok=True)")
        for head_name in head_list or []:
            if head_name not in self.heads:
                raise KeyError(f"no head named {head_name!r}")
        head_class, config, values = average_heads([self.heads[n] for n in head_list or []],
                                                   weights, normalize_weights)
        head = head_class(dtype=self.bert.dtype_policy, name=f"head_{name}", **config)
        self._tie(head)
        assign_named(named_variables(head), values, f"the average of {', '.join(head_list)}")
        head.trainable = name in self._training_adapters
        self.heads.pop(name, None)
        self.heads[name] = head
        self._invalidate_traces()
        if set_active:
            self.active_head = name

    # --- AdapterFusion -----------------------------------------------------------------------------

    @property
    def fusions(self) -> dict[str, FusionModule]:
        """The AdapterFusions by name (`Fuse("a", "b").name` is `"a,b"`)."""
        return dict(self.fusion_modules)

    def _fusion(self, fusion) -> FusionModule:
        name = fusion.name if isinstance(fusion, Fuse) else fusion
        if name not in self.fusion_modules:
            known = ", ".join(sorted(self.fusion_modules)) or "none"
            raise KeyError(f"no AdapterFusion named {name!r} (fusions: {known})")
        return self.fusion_modules[name]

    def add_adapter_fusion(self, fuse, config="dynamic", name: str | None = None,
                           overwrite_ok: bool = False, set_active: bool = False) -> None:
        """Adds an AdapterFusion over bottleneck adapters (`Fuse("a", "b")`, or a list of names).

        Args:
            fuse: the adapters to fuse.
            config: `"dynamic"` (default), `"static"`, an `AdapterFusionConfig`, a dict or a
                JSON file (see `adapter_bert.fusion`).
            name: the fusion's name; default the members' names joined by commas.
            set_active: activate the `Fuse` setup.

        Example:
        >>> from adapter_bert.testing import tiny_bert_config
        >>> model = AdapterBertModel.from_config(tiny_bert_config())
        >>> model.add_adapter("a", config="seq_bn"); model.add_adapter("b", config="seq_bn")
        >>> model.add_adapter_fusion(Fuse("a", "b"), set_active=True)
        >>> model.active_adapters, list(model.fusions)
        (Fuse[a, b], ['a,b'])
        """
        if not isinstance(fuse, Fuse):
            fuse = Fuse(*([fuse] if isinstance(fuse, str) else fuse), name=name)
        elif name is not None:
            fuse = Fuse(*fuse.children, name=name)
        fusion_name = fuse.name
        if fusion_name in self.fusion_modules and not overwrite_ok:
            raise ValueError(f"an AdapterFusion named {fusion_name!r} exists already "
                             "(pass overwrite_ok=True)")
        members = fuse.flatten()
        modules = [self._adapter(n) for n in members]
        cfg = self.bert.bert_config
        module = FusionModule(fusion_name, members, AdapterFusionConfig.load(config), modules,
                              cfg.hidden_size, cfg.num_hidden_layers,
                              dropout=cfg.attention_probs_dropout_prob, dtype=self.bert.dtype_policy)
        self._install_fusion(module)
        if set_active:
            self.set_active_adapters(fuse)

    def _install_fusion(self, module: FusionModule) -> None:
        if module.fusion_name in self.fusion_modules:
            self.delete_adapter_fusion(module.fusion_name)
        module.trainable = False
        module.attach(self.bert)
        self.fusion_modules[module.fusion_name] = module
        self._invalidate_traces()

    def delete_adapter_fusion(self, fusion) -> None:
        """Removes an AdapterFusion; a setup that uses it is cleared."""
        module = self._fusion(fusion)
        if module.fusion_name in _fusion_names(self.active_adapters):
            self.set_active_adapters(None)
        module.detach(self.bert)
        self._training_fusions.discard(module.fusion_name)
        self.fusion_modules.pop(module.fusion_name)
        self._invalidate_traces()

    def train_adapter_fusion(self, fuse, unfreeze_adapters: bool = False) -> None:
        """Activates a setup with a `Fuse` and makes only its fusion layers (and, with
        `unfreeze_adapters`, the fused adapters) and the active head trainable."""
        setup = as_setup(fuse)
        names = _fusion_names(setup)
        if not names:
            raise ValueError(f"{setup} holds no Fuse block to train")
        self.set_active_adapters(setup)
        self.bert.trainable = False
        members = set(_names(setup)) if unfreeze_adapters else set()
        for name, module in self.adapter_modules.items():
            module.trainable = name in members
        for name, module in self.fusion_modules.items():
            module.trainable = name in names
        for name, head in self.heads.items():
            head.trainable = name == self._active_head or name in members
        self._training_adapters = members
        self._training_fusions = set(names)
        self._invalidate_traces()

    def fusion_regularization_loss(self):
        """The regularisation of the active, trainable fusions whose config asks for it
        (`0.01 * ||I - V||^2` per value projection, as in the adapters library); 0 without."""
        total = 0.0
        for name in _fusion_names(self.active_adapters):
            module = self.fusion_modules[name]
            if module.trainable and module.fusion_config.regularization:
                total = total + module.regularization_loss()
        return total

    def save_adapter_fusion(self, directory: str | os.PathLike, fusion, with_head=True) -> None:
        """Writes an AdapterFusion to `directory`, atomically: `adapter_fusion_config.json` and
        `model_adapter_fusion.safetensors`, and a head (`with_head`: True for the head named
        after the fusion, or a head's name)."""
        from safetensors.numpy import save_file

        module = self._fusion(fusion)
        head = module.fusion_name if with_head is True else (with_head or None)
        if head is not None and head not in self.heads:
            if with_head is True:
                head = None
            else:
                raise KeyError(f"no head named {head!r} to save with the fusion")
        target = Path(directory)
        if target.exists() and not target.is_dir():
            raise ValueError(f"{target} is a file; save_adapter_fusion writes a directory")
        if target.is_dir() and any(target.iterdir()) and not (target / FUSION_CONFIG_FILE).is_file():
            raise ValueError(f"{target} is a non-empty directory that holds no saved fusion; "
                             "pick an empty one")
        with atomic_directory(directory) as tmp:
            write_json(tmp / FUSION_CONFIG_FILE, {
                "name": module.fusion_name, "adapters": module.adapters,
                "config": module.fusion_config.to_dict(), "model_config": self._shape_config(),
                "head": head, "library": "adapter_bert", "format_version": 1})
            save_file({k: np.ascontiguousarray(v.numpy()) for k, v in module.named_variables().items()},
                      str(tmp / FUSION_WEIGHTS_FILE), metadata={"format": "adapter_bert"})
            if head is not None:
                self._write_head(tmp, head)

    def load_adapter_fusion(self, directory: str | os.PathLike, set_active: bool = False,
                            with_head: bool = True) -> str:
        """Loads a fusion written by `save_adapter_fusion` over adapters this model has; returns
        its name. Nothing is added unless everything loads."""
        directory = Path(directory)
        recover_directory(directory)
        meta = read_json(directory / FUSION_CONFIG_FILE, "fusion config")
        for key in ("name", "adapters", "config", "model_config"):
            if not isinstance(meta, dict) or key not in meta:
                raise ValueError(f"{directory / FUSION_CONFIG_FILE} has no {key!r}")
        self._check_shape(meta["model_config"], f"fusion in {directory}")
        missing = [a for a in meta["adapters"] if a not in self.adapter_modules]
        if missing:
            raise ValueError(f"fusion in {directory} fuses {', '.join(map(repr, missing))}, which "
                             "this model does not have: load those adapters first")
        cfg = self.bert.bert_config
        module = FusionModule(meta["name"], meta["adapters"], AdapterFusionConfig.load(meta["config"]),
                              [self.adapter_modules[a] for a in meta["adapters"]], cfg.hidden_size,
                              cfg.num_hidden_layers, dropout=cfg.attention_probs_dropout_prob,
                              dtype=self.bert.dtype_policy)
        assign_named(module.named_variables(), read_weights(directory / FUSION_WEIGHTS_FILE),
                      directory / FUSION_WEIGHTS_FILE)
        head = None
        if with_head and meta.get("head") and (directory / HEAD_CONFIG_FILE).is_file():
            head = self._read_head(directory, meta["head"])
        self._install_fusion(module)
        if head is not None:
            head.trainable = False
            self.heads.pop(meta["head"], None)
            self.heads[meta["head"]] = head
            self._invalidate_traces()
        if set_active:
            self.set_active_adapters(Fuse(*module.adapters, name=module.fusion_name))
            if head is not None:
                self.active_head = meta["head"]
        return module.fusion_name

    # --- heads -------------------------------------------------------------------------------------

    def add_classification_head(self, name: str, num_labels: int = 2, pooling: str = "cls",
                                layers: int = 1, dropout: float | None = None,
                                id2label: dict | None = None, overwrite_ok: bool = False,
                                set_active: bool = True) -> None:
        """Adds a classification head (softmax over `num_labels`).

        Args:
            pooling: "cls" (BERT's pooler), "cls_token" (the [CLS] state) or "mean" (masked mean
                of the sequence output).
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

    def add_masked_lm_head(self, name: str, overwrite_ok: bool = False,
                           set_active: bool = True) -> None:
        """Adds BERT's masked-LM head, its decoder tied to the (frozen) word embeddings.

        The transform and output bias start from the checkpoint's pretrained head when the model
        came from one that has it (`BertForMaskedLM`, Google's `cls/predictions`), else from
        BERT's initialisation, to be trained with the adapter. With the head active, `model(inputs)`
        returns `[batch, seq, vocab]` logits, or `[batch, predictions, vocab]` for the positions
        in `inputs["mask_positions"]`.

        Example:
        >>> from adapter_bert.testing import random_inputs, tiny_bert_config
        >>> model = AdapterBertModel.from_config(tiny_bert_config())
        >>> model.add_adapter("en", config="seq_bn_inv", set_active=True)
        >>> model.add_masked_lm_head("en")
        >>> tuple(model(random_inputs(batch=2, seq=6)).shape)
        (2, 6, 32)
        """
        from adapter_bert.bert.checkpoint import read_masked_lm_head

        cfg = self.bert.bert_config
        pretrained = read_masked_lm_head(self.checkpoint_dir) if self.checkpoint_dir else None
        self._add_head(name, MaskedLMHead, overwrite_ok, set_active, vocab_size=cfg.vocab_size,
                       layer_norm_eps=cfg.layer_norm_eps, pretrained=pretrained)

    def _add_head(self, name, head_class, overwrite_ok, set_active, dropout=None, pretrained=None,
                  **kwargs):
        _check_name(name, "head")
        if name in self.heads and not overwrite_ok:
            raise ValueError(f"a head named {name!r} exists already (pass overwrite_ok=True)")
        cfg = self.bert.bert_config
        dropout = cfg.hidden_dropout_prob if dropout is None else dropout
        head = head_class(hidden_size=cfg.hidden_size, dropout=dropout,
                          initializer_range=cfg.initializer_range, dtype=self.bert.dtype_policy,
                          name=f"head_{name}", **kwargs)
        self._tie(head)
        if pretrained is not None:
            head.assign_pretrained(pretrained)
        head.trainable = name in self._training_adapters
        # pop first: assigning over a tracked dict entry would keep the old head's weights tracked.
        self.heads.pop(name, None)
        self.heads[name] = head
        self._invalidate_traces()
        if set_active:
            self.active_head = name

    def delete_head(self, name: str) -> None:
        if name not in self.heads:
            raise KeyError(f"no head named {name!r}")
        self.heads.pop(name)
        if name in _head_names(self._active_head):
            self._active_head = None
        self._invalidate_traces()

    @property
    def active_head(self):
        """The active head: a name, a list (one per `Parallel` branch), a `BatchSplit`, or None."""
        return self._active_head

    @active_head.setter
    def active_head(self, heads) -> None:
        if isinstance(heads, (list, tuple)):
            heads = list(heads)
        for name in _head_names(heads):
            if name not in self.heads:
                raise KeyError(f"no head named {name!r} (heads: "
                               f"{', '.join(sorted(self.heads)) or 'none'})")
        self._active_head = heads
        self._swap_traces()

    # --- forward -----------------------------------------------------------------------------------

    def call(self, inputs, training=None):
        outputs = self.bert(inputs, training=training)
        heads = self._active_head
        if heads is None:
            return outputs
        mask = inputs.get("attention_mask", inputs.get("padding_mask"))
        if mask is None:
            mask = keras.ops.ones_like(inputs["input_ids"])
        if isinstance(outputs, list):  # Parallel: one head per branch
            if not isinstance(heads, list) or len(heads) != len(outputs):
                raise ValueError(f"{self.active_adapters} has {len(outputs)} branches but the "
                                 f"active head is {heads}; give each branch a head named after "
                                 "its last adapter, or call model.bert")
            return [self._head(n, o, mask, inputs, training) for n, o in zip(heads, outputs)]
        if isinstance(heads, MultiTask):
            return self._multi_task_logits(outputs, mask, inputs, heads, training)
        if isinstance(heads, BatchSplit):
            results, begin = [], 0
            for name, size in zip(heads.children, heads.batch_sizes):
                rows = slice(begin, begin + size)
                part = {k: v[rows] for k, v in outputs.items()}
                results.append(self._head(name, part, mask[rows],
                                          {k: v[rows] for k, v in inputs.items()}, training))
                begin += size
            return results
        if isinstance(heads, list):
            return [self._head(n, outputs, mask, inputs, training) for n in heads]
        return self._head(heads, outputs, mask, inputs, training)

    def head_logits(self, name: str, outputs: dict, inputs: dict, training=None):
        """Head `name` applied to encoder outputs `outputs` of `inputs` (`self.bert(inputs)`):
        several heads on one encoder pass (learning without forgetting reads an earlier task's
        head beside the one being trained)."""
        mask = inputs.get("attention_mask", inputs.get("padding_mask"))
        if mask is None:
            mask = keras.ops.ones_like(inputs["input_ids"])
        return self._head(name, outputs, mask, inputs, training)

    def _head(self, name, outputs, mask, inputs, training):
        """Head `name` on encoder outputs; a masked-LM head also gets the positions to decode
        and the inverse of the setup's invertible adapter."""
        head = self.heads[name]
        if isinstance(head, MaskedLMHead):
            return head(outputs, mask, training=training,
                        mask_positions=inputs.get("mask_positions"), inverse=self._inverse())
        return head(outputs, mask, training=training)

    def _inverse(self):
        """The inverse of the invertible adapter that acts under the active setup, or None."""
        first = first_adapter(self.active_adapters)
        if first is None:
            return None
        for hook in self.bert.hook_point("embeddings.output").get(first):
            if hasattr(hook, "inverse"):
                return hook.inverse
        return None

    def _tie(self, head) -> None:
        if isinstance(head, MaskedLMHead):
            head.tie(self.bert.embeddings.word_embeddings.embeddings)

    def _multi_task_logits(self, outputs, mask, inputs, heads, training):
        """Each row's own head's logits, `[batch, most labels]`, padded with -inf (a regression
        head's score in column 0). Heads are cheap next to the encoder, so each runs on every
        row and each row keeps its own."""
        ops = keras.ops
        if "task_ids" not in inputs:
            raise ValueError(f"the active head {heads} needs `task_ids` in the inputs")
        task_ids = ops.cast(inputs["task_ids"], "int32")
        masked_lm = [n for n in heads.children if isinstance(self.heads[n], MaskedLMHead)]
        if masked_lm:
            raise ValueError(f"{heads} holds the masked-LM head {masked_lm[0]!r}; a MultiTask "
                             "head routes rows to classification and regression heads")
        width = max(self.heads[n].num_labels for n in heads.children)
        result = None
        for index, name in enumerate(heads.children):
            logits = self.heads[name](outputs, mask, training=training)
            missing = width - logits.shape[-1]
            if missing:
                pad = ops.full((ops.shape(logits)[0], missing), float("-inf"), logits.dtype)
                logits = ops.concatenate([logits, pad], axis=-1)
            mine = (task_ids == index)[:, None]
            result = logits if result is None else ops.where(mine, logits, result)
        return result

    # --- saving and loading ------------------------------------------------------------------------

    def _shape_config(self) -> dict:
        cfg = self.bert.bert_config.to_dict()
        return {k: cfg[k] for k in _SHAPE_KEYS}

    def save_adapter(self, directory: str | os.PathLike, name: str, with_head: bool = True,
                     format: str = "adapter_bert") -> None:
        """Writes adapter `name` (and head `name`, if any) to `directory`, atomically.

        Files: `adapter_config.json`, `adapter.safetensors` and, with a head, `head_config.json` +
        `head.safetensors`. If anything fails, a previous save in `directory` is left intact.

        Args:
            format: "adapter_bert" (this package's files, any method), "adapters" (the PyTorch
                adapters library's, for a `BertAdapterModel`) or "peft" (PEFT's, for LoRA, (IA)^3 and
                prefix tuning). Those libraries load the files unchanged; a method or option they
                lack is a one-line error before anything is written.

        Example:
        >>> import tempfile
        >>> from adapter_bert.testing import tiny_bert_config
        >>> model = AdapterBertModel.from_config(tiny_bert_config())
        >>> model.add_adapter("task", config="lora[r=4]")
        >>> directory = tempfile.mkdtemp()
        >>> model.save_adapter(directory, "task", format="peft")
        >>> sorted(p.name for p in Path(directory).iterdir())
        ['adapter_config.json', 'adapter_model.safetensors']
        >>> model.load_adapter(directory, load_as="again")   # read back, recognised as PEFT's
        'again'
        """
        if format != NATIVE_FORMAT and format not in ADAPTER_FORMATS.writers:
            raise ValueError(f"unknown adapter format {format!r}; known: "
                             f"{', '.join(ADAPTER_FORMATS.names())}")
        module = self._adapter(name)
        target = Path(directory)
        if target.exists() and not target.is_dir():
            raise ValueError(f"{target} is a file; save_adapter writes a directory")
        if target.is_dir() and any(target.iterdir()) and not (target / ADAPTER_CONFIG_FILE).is_file():
            raise ValueError(f"{target} is a non-empty directory that holds no saved adapter; "
                             "save_adapter replaces its directory as a whole, pick an empty one")
        if format != NATIVE_FORMAT:
            if module.merged:
                raise ValueError(f"adapter {name!r} is merged; reset_adapter before saving it for "
                                 "another library")
            # Every refusal comes here, before anything is written.
            files = ADAPTER_FORMATS.writers[format](self, name, with_head)
            with atomic_directory(directory) as tmp:
                for filename, content in files.items():
                    write_file(tmp / filename, content)
            return
        from safetensors.numpy import save_file

        if module.trains_base:
            weights = {f"bert.{k}": np.ascontiguousarray(v)
                       for k, v in encoder_state(self.bert, module.base_parts()).items()}
        else:
            weights = {k: np.ascontiguousarray(v.numpy()) for k, v in module.named_variables().items()}
        with atomic_directory(directory) as tmp:
            write_json(tmp / ADAPTER_CONFIG_FILE, {
                "name": name, "config": module.config.config_dict(),
                "model_config": self._shape_config(), "library": "adapter_bert",
                "format_version": 1})
            save_file(weights, str(tmp / ADAPTER_WEIGHTS_FILE), metadata={"format": "adapter_bert"})
            if with_head and name in self.heads:
                self._write_head(tmp, name)

    @property
    def base_model_name(self) -> str | None:
        """What other libraries' files call the base: its Hub id where known, else its path
        (None for a model built from a config)."""
        from adapter_bert.bert.checkpoint import packaged_minilm_dir

        if self.checkpoint_dir is None:
            return None
        try:
            if Path(self.checkpoint_dir).resolve() == packaged_minilm_dir().resolve():
                return "sentence-transformers/all-MiniLM-L6-v2"
        except Exception:  # noqa: BLE001 - the package may be absent; then it is not that base
            pass
        for part in Path(self.checkpoint_dir).parts:  # huggingface_hub's cache: models--owner--name
            if part.startswith("models--"):
                return part[len("models--"):].replace("--", "/")
        return str(self.checkpoint_dir)

    def _write_head(self, directory: Path, name: str) -> None:
        """`head_config.json` and `head.safetensors` of head `name` into `directory`."""
        from safetensors.numpy import save_file

        head = self.heads[name]
        write_json(directory / HEAD_CONFIG_FILE, {"name": name, "head_class": type(head).__name__,
                                                  "config": _head_config(head)})
        save_file({k: np.ascontiguousarray(v.numpy()) for k, v in named_variables(head).items()},
                  str(directory / HEAD_WEIGHTS_FILE))

    def _check_shape(self, model_config, what: str) -> None:
        """A one-line error when saved weights were made for a base of another size."""
        mine = self._shape_config()
        theirs = {k: (model_config or {}).get(k) for k in _SHAPE_KEYS}
        if theirs != mine:
            diff = ", ".join(f"{k}={theirs[k]} (this model: {mine[k]})" for k in _SHAPE_KEYS
                             if theirs[k] != mine[k])
            raise ValueError(f"{what} was trained for a base of another size: {diff}")

    def load_adapter(self, path_or_id: str | os.PathLike, load_as: str | None = None,
                     with_head: bool = True, set_active: bool = False) -> str:
        """Loads an adapter; returns its name.

        `path_or_id` is a directory or a Hugging Face Hub id (`"owner/name"`, through
        huggingface_hub's cache; `HF_HUB_OFFLINE=1` uses the cache alone). The files say which
        library wrote them (`adapter_bert.formats.detect`): this package (`save_adapter`, any
        format), the PyTorch adapters library (its `adapter_config.json` + `adapter.safetensors`,
        and a head's `head_config.json` + `model_head.safetensors`) or PEFT
        (`adapter_config.json` with `peft_type` + `adapter_model.safetensors`; a sequence
        classifier's `classifier` becomes the head). A PEFT adapter, which has no name in its
        files, is named `load_as` or after its directory (or repository).

        Raises a one-line error for a missing or corrupt file, a PyTorch pickle (with the command
        that converts it), a weight that maps to nothing or is missing, or an adapter trained for
        a model of another size. Nothing is added to the model unless everything loads.
        """
        recover_directory(Path(path_or_id))
        directory, default_name = ADAPTER_FORMATS.locate(path_or_id)
        kind = ADAPTER_FORMATS.detect(directory)
        if kind == NATIVE_FORMAT:
            loaded = self._read_adapter(directory, load_as, with_head)
        else:
            loaded = ADAPTER_FORMATS.readers[kind](self, directory, load_as, default_name, with_head)
        self._put(*loaded)
        if set_active:
            self.set_active_adapters(loaded[0])
        return loaded[0]

    def _read_adapter(self, directory: Path, load_as: str | None, with_head: bool):
        """`(name, module, head or None, base state or None)` read from a saved adapter."""
        recover_directory(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"adapter directory {directory} does not exist")
        meta = read_json(directory / ADAPTER_CONFIG_FILE, "adapter config")
        if not isinstance(meta, dict) or "config" not in meta or "model_config" not in meta:
            raise ValueError(f"{directory / ADAPTER_CONFIG_FILE} is not an adapter_bert adapter config")
        if not isinstance(meta["model_config"], dict):
            raise ValueError(f"{directory / ADAPTER_CONFIG_FILE}: 'model_config' is not an object")
        self._check_shape(meta["model_config"], f"adapter in {directory}")
        if load_as is None and not isinstance(meta.get("name"), str):
            raise ValueError(f"{directory / ADAPTER_CONFIG_FILE}: no adapter 'name' (a string)")
        name = load_as or meta["name"]
        _check_name(name, "adapter")
        weights = read_weights(directory / ADAPTER_WEIGHTS_FILE)
        config = AdapterConfig.load(meta["config"])
        module = AdapterModule(name, config, self.bert.bert_config, dtype=self.bert.dtype_policy)
        head = None
        if with_head and (directory / HEAD_CONFIG_FILE).is_file():
            head = self._read_head(directory, name)
        base_state = None
        if module.trains_base:
            base_state = ({k.removeprefix("bert."): v for k, v in weights.items()},
                          module.base_parts())
        else:
            assign_named(module.named_variables(), weights, directory / ADAPTER_WEIGHTS_FILE)
        return name, module, head, (base_state, directory / ADAPTER_WEIGHTS_FILE)

    def _new_module(self, name: str, config) -> AdapterModule:
        _check_name(name, "adapter")
        return AdapterModule(name, config, self.bert.bert_config, dtype=self.bert.dtype_policy)

    def _new_head(self, name: str, class_name: str, config: dict, weights: dict, source,
                  check_weights: bool = True):
        """A head of class `class_name` built from `config` and given `weights` (checked by name
        and shape; with `check_weights=False`, a head with fresh weights)."""
        head_class = _HEAD_CLASSES.get(class_name)
        if head_class is None:
            raise ValueError(f"{source}: unknown head class {class_name!r}")
        cfg = self.bert.bert_config
        config = dict(config)
        if config.get("hidden_size", cfg.hidden_size) != cfg.hidden_size:
            raise ValueError(f"head in {source} has hidden_size {config.get('hidden_size')}, "
                             f"this model {cfg.hidden_size}")
        config["hidden_size"] = cfg.hidden_size
        if head_class is MaskedLMHead:
            config.setdefault("vocab_size", cfg.vocab_size)
            config.setdefault("layer_norm_eps", cfg.layer_norm_eps)
        if head_class is RegressionHead:
            config.pop("num_labels", None)
            config.pop("problem_type", None)
        head = head_class(dtype=self.bert.dtype_policy, name=f"head_{name}", **config)
        self._tie(head)
        if check_weights:
            assign_named(named_variables(head), weights, source)
        return head

    def _put(self, name, module, head, base_state) -> None:
        state, source = base_state
        if state is not None:
            # A partial fine-tuning's file holds its parts of the base only.
            state, parts = state if isinstance(state, tuple) else (state, None)
            load_state_into_encoder(self.bert, state, source=str(source), parts=parts)
        self._install(name, module)
        if head is not None:
            head.trainable = False
            self.heads.pop(name, None)
            self.heads[name] = head
            self._invalidate_traces()

    def _read_head(self, directory: Path, name: str) -> ClassificationHead:
        meta = read_json(directory / HEAD_CONFIG_FILE, "head config")
        if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
            raise ValueError(f"{directory / HEAD_CONFIG_FILE}: no head 'config' (an object)")
        config = dict(meta["config"])
        if config.get("hidden_size") != self.bert.bert_config.hidden_size:
            raise ValueError(f"head in {directory} has hidden_size {config.get('hidden_size')}, "
                             f"this model {self.bert.bert_config.hidden_size}")
        return self._new_head(name, meta.get("head_class"), config,
                              read_weights(directory / HEAD_WEIGHTS_FILE), directory / HEAD_WEIGHTS_FILE)

    # --- reporting ---------------------------------------------------------------------------------

    def _base_params(self, parts) -> int:
        by_part = base_variables_by_part(self.bert)
        return int(sum(np.prod(v.shape) for p in parts for v in by_part[p].values()))

    def adapter_summary(self, as_dict: bool = False):
        """A table of adapters, the active setup, and the PEFT-style parameter line.

        Returns a string (or, with `as_dict=True`, a list of dicts with keys name, architecture,
        params, active, train). `params` counts the adapter's own weights (the whole base for full
        fine-tuning); `active` is whether the active setup names the adapter; the last line counts
        trainable and all weights of the model.
        """
        base_params = self.bert.count_params()
        active = _names(self.active_adapters)
        rows = []
        for name, module in self.adapter_modules.items():
            label = config_identifier(module.config) + (" (merged)" if module.merged else "")
            rows.append({"name": name, "architecture": label,
                         "params": (self._base_params(module.base_parts()) if module.trains_base
                                    else module.num_params()),
                         "active": name in active, "train": name in self._training_adapters})
        fused = _fusion_names(self.active_adapters)
        for name, fusion in self.fusion_modules.items():
            preset = next((p for p, c in FUSION_PRESETS.items() if c == fusion.fusion_config), None)
            rows.append({"name": name, "architecture": "fusion" + (f" ({preset})" if preset else ""),
                         "params": fusion.num_params(), "active": name in fused,
                         "train": name in self._training_fusions})
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
        setup = self.active_adapters
        if setup is not None:
            skipped = self.bert.skip_layers
            lines.append(f"active setup: {setup}"
                         + (f" (adapters skipped in layers {', '.join(map(str, sorted(skipped)))})"
                            if skipped else "")
                         + (f"; head: {self._active_head}" if self._active_head is not None else ""))
        lines.append(f"trainable params: {trainable:,} || all params: {total:,} || "
                     f"trainable%: {100 * trainable / total:.4f}")
        return "\n".join(lines)

    # --- whole setups ------------------------------------------------------------------------------

    def save_adapter_setup(self, directory: str | os.PathLike, setup=None) -> None:
        """Writes a whole setup, atomically: every adapter it names (each with its head, if any)
        in a subdirectory of that name, and `adapter_setup.json` with the block and the heads.

        Args:
            setup: the setup to save; default the active one.
        """
        setup = as_setup(setup) if setup is not None else self.active_adapters
        if setup is None:
            raise ValueError("no setup to save: pass one or activate one first")
        names = _names(setup)
        for name in names:
            self._adapter(name)
        target = Path(directory)
        if target.is_dir() and any(target.iterdir()) and not (target / SETUP_FILE).is_file():
            raise ValueError(f"{target} is a non-empty directory that holds no saved adapter "
                             "setup; pick an empty one")
        heads = parse_heads_from_composition(setup)
        if heads is not None and not all(h in self.heads for h in _head_names(heads)):
            heads = None
        # As the adapters library writes it: a name, a list, or a block's dict. On loading, the
        # heads are derived from the setup again (each adapter's directory holds its head).
        head_setup = setup_to_dict(heads) if isinstance(heads, AdapterCompositionBlock) else heads
        with atomic_directory(directory) as tmp:
            for name in names:
                self.save_adapter(tmp / name, name)
            write_json(tmp / SETUP_FILE, {"adapter_setup": setup_to_dict(setup),
                                          "head_setup": head_setup, "library": "adapter_bert",
                                          "format_version": 1})

    def load_adapter_setup(self, directory: str | os.PathLike, set_active: bool = True):
        """Loads a setup written by `save_adapter_setup`: its adapters and heads, and the block.

        Returns the setup. Nothing is added unless every adapter loads.
        """
        directory = Path(directory)
        recover_directory(directory)
        meta = read_json(directory / SETUP_FILE, "adapter setup")
        if not isinstance(meta, dict) or "adapter_setup" not in meta:
            raise ValueError(f"{directory / SETUP_FILE} has no 'adapter_setup'")
        try:
            setup = setup_from_dict(meta["adapter_setup"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{directory / SETUP_FILE}: {e}") from None
        names = _names(setup)
        for name in names:
            if not (directory / name / ADAPTER_CONFIG_FILE).is_file():
                raise FileNotFoundError(f"{directory / SETUP_FILE} names adapter {name!r}, but "
                                        f"{directory / name} holds none")
        # Everything is read before anything is added, so a bad file leaves the model as it was.
        loaded = [self._read_adapter(directory / name, name, True) for name in names]
        for item in loaded:
            self._put(*item)
        if set_active:
            self.set_active_adapters(setup)
        return setup

def _head_config(head) -> dict:
    """A head's constructor arguments (its `get_config` less Keras' own layer keys)."""
    return {k: v for k, v in head.get_config().items() if k not in ("name", "dtype", "trainable")}


def read_weights(path: Path) -> dict[str, np.ndarray]:
    """A safetensors file's tensors, with one-line errors for a missing or corrupt file."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except (SafetensorError, OSError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None


def assign_named(variables: dict, weights: dict, source) -> None:
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


def _names(setup) -> tuple[str, ...]:
    """The adapter names of a setup (none for None)."""
    if setup is None:
        return ()
    return (setup,) if isinstance(setup, str) else setup.flatten()


def _head_names(heads) -> tuple[str, ...]:
    if heads is None:
        return ()
    if isinstance(heads, str):
        return (heads,)
    if isinstance(heads, AdapterCompositionBlock):
        return heads.flatten()
    return tuple(heads)


def _fusion_names(setup) -> tuple[str, ...]:
    """The names of the fusions a setup's `Fuse` blocks use."""
    if setup is None or isinstance(setup, str):
        return ()
    names = [setup.name] if isinstance(setup, Fuse) else []
    for child in setup.children:
        names += [n for n in _fusion_names(child) if n not in names]
    return tuple(names)


def _check_not_merged(setup, modules: dict) -> None:
    merged = [name for name in setup.flatten() if modules[name].merged]
    if merged:
        raise ValueError(f"adapter {merged[0]!r} is merged into the base weights, where every row "
                         f"and branch of {setup} would see it; reset_adapter({merged[0]!r}) first")


def _check_blocks(setup, modules: dict, fusions: dict) -> None:
    """Raises ValueError when a block of `setup` holds an adapter whose methods cannot be
    composed with it, or when its `Parallel` blocks disagree on the number of branches."""
    if setup is None or isinstance(setup, str):
        return
    widths = set()

    def visit(block, ancestors):
        if isinstance(block, str):
            for ancestor in ancestors:
                if ancestor.block_type == "fuse" and ancestor.name not in fusions:
                    raise ValueError(f"{ancestor}: no AdapterFusion named {ancestor.name!r}; add it "
                                     f"with add_adapter_fusion({ancestor!r})")
                supported = modules[block].supported_blocks()
                if ancestor.block_type not in supported:
                    methods = ", ".join(m.config.architecture for m in modules[block].methods)
                    raise ValueError(f"{type(ancestor).__name__} cannot hold adapter {block!r}: "
                                     f"its {methods} method composes only with "
                                     + ", ".join(sorted(b.title().replace("_", "")
                                                        for b in supported)))
            return
        if block.block_type == "parallel":
            widths.add(len(block.children))
        for child in block.children:
            visit(child, ancestors + [block])

    visit(setup, [])
    if len(widths) > 1:
        raise ValueError(f"the Parallel blocks of {setup} have different numbers of branches "
                         f"({', '.join(map(str, sorted(widths)))}); the batch is replicated once")
