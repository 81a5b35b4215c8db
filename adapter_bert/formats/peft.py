"""PEFT's adapter files for BERT: read into this package's methods, and written back.

A PEFT directory is `adapter_config.json` (with `peft_type`) and `adapter_model.safetensors`,
keyed by the PyTorch module paths of the wrapped model (`base_model.model.encoder.layer.0.
attention.self.query.lora_A.weight`; `base_model.model.bert.` for a sequence-classification
model, whose `classifier` is saved whole as a module to save). What each PEFT type becomes here:

* `LORA`: `lora` with `target_modules` / `rank_pattern` / `alpha_pattern` / `use_rslora` / `dropout`
  resolved to the Dense layers PEFT adapts (its own matching rules: exact name or `.`-suffix, a
  string as a regular expression, `layers_to_transform`, `exclude_modules`); `bias="lora_only"` /
  `"all"` add a `bitfit` part holding the trained biases as offsets from this base's.
* `IA3`: `ia3` with the same targets; `feedforward_modules` scale the layer's input.
* `PREFIX_TUNING`: `prefix_tuning_flat[shift_positions=True]` (PEFT saves the prefix itself, with
  or without its projection MLP, `[virtual tokens, layers * 2 * hidden]`; on Hugging Face BERT
  the input's tokens are numbered after the prefix).
* `PROMPT_TUNING`: `prompt_tuning[input_embeddings=True]` (PEFT's prompts sit among the word
  embeddings, before positions, token types and the embedding LayerNorm).
* A `classifier` among the modules to save: a one-layer classification head on BERT's pooler.

PEFT's feature-extraction model drops the token types for its prompt methods; here they are
kept (as PEFT's sequence classifier keeps them), so pass zeros to reproduce its numbers.

Example:
>>> sorted(peft_target_names({"target_modules": ["query", "value"]}, num_layers=1))
['encoder.layer.0.attention.self.query', 'encoder.layer.0.attention.self.value']
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np

#: HF module path inside a layer -> this package's Dense target name.
HF_DENSE = {"attention.self.query": "attention.query", "attention.self.key": "attention.key",
            "attention.self.value": "attention.value", "attention.output.dense": "attention.output",
            "intermediate.dense": "intermediate", "output.dense": "output"}
_OURS_TO_HF = {v: k for k, v in HF_DENSE.items()}
# HF bias name inside a layer -> this package's BitFit offset location.
_HF_BIAS = {**{f"{k}.bias": v for k, v in HF_DENSE.items()},
            "attention.output.LayerNorm.bias": "attention_ln", "output.LayerNorm.bias": "output_ln"}
_WRAPPED_BIAS = re.compile(r"\.base_layer\.bias$")
SUPPORTED = ("LORA", "IA3", "PREFIX_TUNING", "PROMPT_TUNING")
# PEFT LoRA options that change what the adapter computes, at the value that means "off".
_LORA_OFF = {"use_dora": False, "lora_bias": False, "fan_in_fan_out": False, "layer_replication": None,
             "target_parameters": None, "trainable_token_indices": None, "use_qalora": False,
             "alora_invocation_tokens": None, "use_bdlora": None}


def dense_modules(num_layers: int) -> list[tuple[str, int | None, str]]:
    """`(HF module name, layer, our target)` of every Dense of a BERT that PEFT may adapt."""
    out = [(f"encoder.layer.{i}.{hf}", i, ours) for i in range(num_layers) for hf, ours in HF_DENSE.items()]
    return out + [("pooler.dense", None, "pooler")]


def hf_module(layer: int | None, target: str) -> str:
    return "pooler.dense" if layer is None else f"encoder.layer.{layer}.{_OURS_TO_HF[target]}"


def _matches_list(names, key: str) -> bool:
    return key in names or any(key.endswith(f".{name}") for name in names)


def _is_target(meta: dict, key: str, field: str = "target_modules") -> bool:
    """PEFT's rule for whether module `key` is one of `meta[field]`."""
    exclude = meta.get("exclude_modules")
    if exclude:
        if re.fullmatch(exclude, key) if isinstance(exclude, str) else _matches_list(exclude, key):
            return False
    targets = meta.get(field)
    if targets is None:
        return False
    if isinstance(targets, str):
        if targets == "all-linear":
            return True
        return re.fullmatch(targets, key) is not None
    if not _matches_list(targets, key):
        return False
    layers = meta.get("layers_to_transform") if field == "target_modules" else None
    if layers is None or layers == []:
        return True
    layers = [layers] if isinstance(layers, int) else layers
    pattern = meta.get("layers_pattern")
    patterns = [pattern] if isinstance(pattern, str) else (pattern or [])
    match = None
    if not patterns:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    for p in patterns:
        match = re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", key)
        if match:
            break
    return match is not None and int(match.group("idx")) in layers


def peft_target_names(meta: dict, num_layers: int, prefix: str = "", field: str = "target_modules"):
    """The HF module names (without `prefix`) of a BERT that PEFT's config adapts."""
    return [name for name, _, _ in dense_modules(num_layers) if _is_target(meta, prefix + name, field)]


def _pattern_value(pattern: dict, key: str, default):
    """PEFT's per-module value: the first pattern key that `key` ends with (`.`-separated), as
    PEFT's `rank_pattern` / `alpha_pattern` are matched."""
    for candidate in pattern or {}:
        if re.match(rf"(.*\.)?({candidate})$", key):
            return pattern[candidate]
    return default


def _targets(locations) -> list[str]:
    """Our `target_modules` for `(layer, target)` locations: a target's name where every layer
    has it, else one layer's entries."""
    layers = {layer for layer, _ in locations if layer is not None}
    out = []
    for target in dict.fromkeys(t for _, t in locations):
        have = {layer for layer, t in locations if t == target}
        if target == "pooler":
            out.append("pooler")
        elif have == layers and len(layers) > 1:
            out.append(target)
        else:
            out.extend(f"layer_{layer}.{target}" for layer in sorted(have))
    return out


def _layers_only(locations, num_layers):
    """`(targets, leave_out)`: a layer that no location names is left out, so the targets can say
    just the target names where the adapted layers all have them."""
    used = {layer for layer, _ in locations if layer is not None}
    leave_out = [i for i in range(num_layers) if i not in used]
    return _targets(locations), leave_out


class PeftFile:
    """One PEFT directory's config and tensors, keyed relative to the bare `BertModel`."""

    def __init__(self, meta: dict, state: dict, source):
        self.meta, self.source = meta, source
        self.peft_type = meta.get("peft_type")
        if self.peft_type not in SUPPORTED:
            raise ValueError(f"{source}: PEFT type {self.peft_type!r} has no counterpart here; "
                             f"known: {', '.join(SUPPORTED)}")
        self.state, self.head_state = {}, {}
        self.sequence_classification = False
        for key, value in state.items():
            name = key.removeprefix("base_model.model.")
            if name.startswith("bert."):
                self.sequence_classification = True
                name = name[len("bert."):]
            if name.startswith("classifier."):
                # `classifier.weight` / `.bias` are the trained head; the wrapper's own copies
                # (`original_module`, `modules_to_save`) come along when bias="all".
                if name.count(".") == 1:
                    self.head_state[name] = np.asarray(value)
                continue
            self.state[name] = np.asarray(value)
        self.prefix = "bert." if self.sequence_classification else ""
        extra = [m for m in (meta.get("modules_to_save") or []) if m not in ("classifier", "score")]
        if extra:
            raise ValueError(f"{source}: modules_to_save {extra} have no counterpart here "
                             "(a classifier head does)")

    def pop(self, key: str) -> np.ndarray:
        if key not in self.state:
            raise ValueError(f"{self.source} has no weight {key!r}, which its config needs")
        return self.state.pop(key)

    def check_used(self) -> None:
        if self.state:
            raise ValueError(f"{self.source}: weight {sorted(self.state)[0]} maps to nothing here")


def adapter_config(file: PeftFile, bert_config, base_state: dict) -> tuple[object, dict]:
    """`(our config, named weights builder)` for a PEFT file: the builder maps the module's
    method names to the weights, `builder(module) -> {name: array}`."""
    reader = {"LORA": _lora, "IA3": _ia3, "PREFIX_TUNING": _prefix, "PROMPT_TUNING": _prompt}
    return reader[file.peft_type](file, bert_config, base_state)


def _method(module, architecture):
    return next(m for m in module.methods if m.config.architecture == architecture)


def _locations(file: PeftFile, num_layers: int) -> list[tuple[int | None, str]]:
    """`(layer, target)` of every Dense the file's config adapts on a `num_layers`-layer BERT."""
    locations = [(layer, target) for name, layer, target in dense_modules(num_layers)
                 if _is_target(file.meta, file.prefix + name)]
    if not locations:
        raise ValueError(f"{file.source}: target_modules {file.meta.get('target_modules')!r} match "
                         "no Dense layer of this BERT")
    in_file = {int(m.group(1)) for key in file.state if (m := re.match(r"encoder\.layer\.(\d+)\.", key))}
    wanted = {layer for layer, _ in locations if layer is not None}
    if in_file and wanted and max(in_file) != max(wanted):
        raise ValueError(f"{file.source} was made for a base of another size: its weights reach "
                         f"layer {max(in_file)}, this BERT has {num_layers} layers")
    return locations


def _lora(file: PeftFile, bert_config, base_state):
    from adapter_bert.methods.bitfit import BitFitConfig
    from adapter_bert.configuration import ConfigUnion
    from adapter_bert.methods.lora import LoRAConfig, target_key

    meta, num_layers = file.meta, bert_config.num_hidden_layers
    for option, off in _LORA_OFF.items():
        if meta.get(option, off) not in (off, [], {}):
            raise ValueError(f"{file.source}: PEFT LoRA option {option}={meta[option]!r} has no "
                             "counterpart in adapter_bert")
    locations = _locations(file, num_layers)
    r, alpha = meta.get("r", 8), meta.get("lora_alpha", 8)
    ranks, alphas = {}, {}
    for layer, target in locations:
        key = file.prefix + hf_module(layer, target)
        rank = _pattern_value(meta.get("rank_pattern"), key, r)
        scale = _pattern_value(meta.get("alpha_pattern"), key, alpha)
        if rank != r:
            ranks[target_key(layer, target)] = rank
        if scale != alpha:
            alphas[target_key(layer, target)] = scale
    targets, leave_out = _layers_only(locations, num_layers)
    lora = LoRAConfig(r=r, alpha=alpha, dropout=float(meta.get("lora_dropout", 0.0)),
                      target_modules=targets, leave_out=leave_out, rank_pattern=ranks,
                      alpha_pattern=alphas, use_rslora=bool(meta.get("use_rslora", False)))
    bias = meta.get("bias", "none")
    if bias not in ("none", "all", "lora_only"):
        raise ValueError(f"{file.source}: PEFT LoRA bias {bias!r}; known: none, all, lora_only")
    bitfit = None
    if bias == "lora_only":
        bitfit = BitFitConfig(targets=[target_key(layer, t) for layer, t in locations])
    elif bias == "all":
        bitfit = BitFitConfig()
    config = lora if bitfit is None else ConfigUnion(lora, bitfit)

    def weights(module):
        method = _method(module, "lora")
        out = {}
        for layer, target in locations:
            name, ours = hf_module(layer, target), f"{method.name}.{target_key(layer, target).replace('.', '_')}"
            out[f"{ours}.lora_A"] = file.pop(f"{name}.lora_A.weight").T
            out[f"{ours}.lora_B"] = file.pop(f"{name}.lora_B.weight").T
        if bitfit is not None:
            out.update(_bias_offsets(file, _method(module, "bitfit"), base_state))
        file.check_used()
        return out

    return config, weights


def _bias_locations(num_layers):
    """`(HF bias name, our BitFit offset name)` of every bias BitFit has."""
    out = [(f"encoder.layer.{i}.{hf}", f"layer_{i}_{ours.replace('.', '_')}")
           for i in range(num_layers) for hf, ours in _HF_BIAS.items()]
    return out + [("pooler.dense.bias", "pooler"), ("embeddings.LayerNorm.bias", "embeddings_ln")]


def _bias_offsets(file: PeftFile, method, base_state: dict) -> dict:
    """PEFT's trained biases as BitFit offsets from this base's biases."""
    wanted = {v.name for v in method.offsets}
    out = {}
    for hf, ours in _bias_locations(method.bert_config.num_hidden_layers):
        if ours not in wanted:
            continue
        wrapped = hf[: -len(".bias")] + ".base_layer.bias"
        key = wrapped if wrapped in file.state else hf
        value = file.pop(key)
        out[f"{method.name}.{ours}.offset"] = (value.astype(np.float64)
                                               - base_state[hf].astype(np.float64)).astype(np.float32)
    return out


def _ia3(file: PeftFile, bert_config, base_state):
    from adapter_bert.methods.ia3 import IA3Config
    from adapter_bert.methods.lora import target_key

    meta, num_layers = file.meta, bert_config.num_hidden_layers
    locations = _locations(file, num_layers)
    feedforward = [(layer, target) for layer, target in locations
                   if _is_target(meta, file.prefix + hf_module(layer, target), "feedforward_modules")]
    targets, leave_out = _layers_only(locations, num_layers)
    config = IA3Config(target_modules=targets, leave_out=leave_out,
                       feedforward_modules=[target_key(layer, t) for layer, t in feedforward])

    def weights(module):
        method = _method(module, "lora")
        out = {}
        for layer, target in locations:
            value = file.pop(f"{hf_module(layer, target)}.ia3_l")
            out[f"{method.name}.{target_key(layer, target).replace('.', '_')}.scale"] = value.reshape(-1)
        file.check_used()
        return out

    return config, weights


def _prefix(file: PeftFile, bert_config, base_state):
    from adapter_bert.methods.prefix import PrefixTuningConfig

    meta = file.meta
    _check_prompt_shape(file, bert_config)
    config = PrefixTuningConfig(prefix_length=int(meta["num_virtual_tokens"]), flat=True,
                                shift_positions=True)
    return config, _prompt_embeddings(file, "prefix_tuning", "pool.control_trans")


def _prompt_embeddings(file: PeftFile, architecture: str, ours: str):
    """The weights builder of a prompt method: PEFT's one `prompt_embeddings` tensor."""
    def weights(module):
        method = _method(module, architecture)
        value = file.pop("prompt_embeddings")
        file.check_used()
        return {f"{method.name}.{ours}": value}

    return weights


def _prompt(file: PeftFile, bert_config, base_state):
    from adapter_bert.methods.prompt import PromptTuningConfig

    _check_prompt_shape(file, bert_config)
    if file.head_state:
        raise ValueError(f"{file.source}: PEFT's classifier after prompt tuning pools the first "
                         "virtual token, adapter_bert's heads the input's [CLS]; load it with "
                         "with_head=False")
    config = PromptTuningConfig(prompt_length=int(file.meta["num_virtual_tokens"]),
                                input_embeddings=True)
    return config, _prompt_embeddings(file, "prompt_tuning", "prompt.prompt_embedding")


def _check_prompt_shape(file: PeftFile, bert_config) -> None:
    meta = file.meta
    for field, ours in (("token_dim", bert_config.hidden_size),
                        ("num_layers", bert_config.num_hidden_layers),
                        ("num_attention_heads", bert_config.num_attention_heads)):
        if meta.get(field) not in (None, ours):
            raise ValueError(f"{file.source} was made for a base with {field}={meta[field]}, "
                             f"this one has {ours}")
    if meta.get("num_transformer_submodules", 1) != 1:
        raise ValueError(f"{file.source}: {meta['num_transformer_submodules']} transformer "
                         "submodules; a BERT encoder has 1")


def classifier_head(file: PeftFile, hidden_dropout: float):
    """`(head class name, config, weights)` of the file's classifier, or None."""
    if not file.head_state:
        return None
    try:
        kernel, bias = file.head_state["classifier.weight"], file.head_state["classifier.bias"]
    except KeyError as e:
        raise ValueError(f"{file.source} has no classifier weight {e.args[0]}") from None
    return ("ClassificationHead",
            {"num_labels": int(kernel.shape[0]), "pooling": "cls", "layers": 1, "dropout": hidden_dropout},
            {"classifier.kernel": kernel.T, "classifier.bias": bias})


def read_adapter(model, directory: Path, load_as: str | None, default_name: str, with_head: bool):
    """PEFT's files in `directory`, read for `model` (its `load_adapter`). PEFT's files name no
    adapter: it is `load_as`, else the directory's (or Hub repository's) name."""
    from adapter_bert.bert.checkpoint import encoder_state
    from adapter_bert.formats.files import weights_file
    from adapter_bert.io_utils import read_json
    from adapter_bert.model import ADAPTER_CONFIG_FILE, assign_named, read_weights

    name = load_as or default_name
    meta = read_json(directory / ADAPTER_CONFIG_FILE, "adapter config")
    path = weights_file(directory, "adapter_model.safetensors", "adapter_model.bin")
    file = PeftFile(meta, read_weights(path), path)
    try:
        config, weights = adapter_config(file, model.config, encoder_state(model.bert))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{directory / ADAPTER_CONFIG_FILE}: {e}" if str(path) not in str(e)
                         else str(e)) from None
    module = model._new_module(name, config)
    assign_named(module.named_variables(), weights(module), path)
    spec = classifier_head(file, model.config.hidden_dropout_prob) if with_head else None
    head = model._new_head(name, *spec, path) if spec else None
    return name, module, head, (None, path)


def write_adapter(model, name: str, with_head: bool) -> dict:
    """The files of `model`'s adapter `name` (and its head) as PEFT's `save_pretrained` writes
    them, for `model.save_adapter(..., format="peft")`."""
    from adapter_bert.bert.checkpoint import encoder_state

    head = model.heads.get(name) if with_head else None
    return peft_files(model.adapters[name], head, encoder_state(model.bert), model.base_model_name)


# --- writing --------------------------------------------------------------------------------------

PEFT_VERSION = "0.21.2"  # the release whose files these are checked against
_AUTO_MAPPING = {"base_model_class": "BertModel",
                 "parent_library": "transformers.models.bert.modeling_bert"}
# The fields PEFT writes for each type, at its defaults; the writer sets what the adapter says.
_LORA_FIELDS = {"alora_invocation_tokens": None, "alpha_pattern": {}, "arrow_config": None,
                "bias": "none", "corda_config": None, "ensure_weight_tying": False,
                "eva_config": None, "exclude_modules": None, "fan_in_fan_out": False,
                "init_lora_weights": True, "kasa_config": None, "layer_replication": None,
                "layers_pattern": None, "layers_to_transform": None, "loftq_config": {},
                "lora_alpha": 8, "lora_bias": False, "lora_dropout": 0.0, "lora_ga_config": None,
                "megatron_config": None, "megatron_core": "megatron.core", "monteclora_config": None,
                "qalora_group_size": 16, "r": 8, "rank_pattern": {}, "target_modules": None,
                "target_parameters": None, "trainable_token_indices": None, "use_bdlora": None,
                "use_dora": False, "use_qalora": False, "use_rslora": False, "velora_config": None}
_IA3_FIELDS = {"exclude_modules": None, "fan_in_fan_out": False, "feedforward_modules": None,
               "init_ia3_weights": True, "target_modules": None}
_PROMPT_FIELDS = {"num_attention_heads": None, "num_layers": None, "num_transformer_submodules": 1,
                  "num_virtual_tokens": None, "prompt_tuning_init": "RANDOM",
                  "prompt_tuning_init_text": None, "token_dim": None, "tokenizer_kwargs": None,
                  "tokenizer_name_or_path": None}
_PREFIX_FIELDS = {"encoder_hidden_size": None, "init_weights": None, "num_attention_heads": None,
                  "num_layers": None, "num_transformer_submodules": 1, "num_virtual_tokens": None,
                  "prefix_projection": False, "token_dim": None}


class NotInPeftFormat(ValueError):
    """An adapter, or a part of one, that PEFT's files cannot express."""


def peft_files(module, head, base_state: dict, base_name: str) -> dict:
    """The files PEFT's `save_pretrained` writes for this adapter on a `BertModel` (or, with a
    head, a `BertForSequenceClassification`): `{file name: JSON value or Tensors}`.

    Raises:
        NotInPeftFormat: a method, option or head PEFT's files cannot express.
    """
    from adapter_bert.io_utils import Tensors

    methods = {m.config.architecture: m for m in module.methods}
    name = module.adapter_name
    if head is not None:
        from adapter_bert.heads import ClassificationHead

        if type(head) is not ClassificationHead or head.num_layers != 1 or head.pooling != "cls":
            raise NotInPeftFormat(
                f"head {name!r}: PEFT keeps a sequence classifier as BertForSequenceClassification's "
                "classifier, one Dense on BERT's pooler (a 1-layer 'cls' classification head); "
                "pass with_head=False")
    lora = methods.get("lora")
    if lora is not None and set(methods) <= {"lora", "bitfit"}:
        writer = _ia3_files if lora.config.composition_mode == "scale" else _lora_files
        config, tensors = writer(methods, name, base_state, "bert." if head is not None else "")
    elif set(methods) == {"prefix_tuning"} and head is None:
        config, tensors = _prefix_files(methods["prefix_tuning"], name)
    elif set(methods) == {"prompt_tuning"} and head is None:
        config, tensors = _prompt_files(methods["prompt_tuning"], name)
    else:
        raise NotInPeftFormat(
            f"adapter {name!r} ({' + '.join(methods)}{' with a head' if head is not None else ''}) "
            "has no PEFT counterpart this package writes: LoRA (with BitFit as bias='all' / "
            "'lora_only'), (IA)^3, and prefix and prompt tuning without a head")
    config.update(base_model_name_or_path=base_name, inference_mode=True, modules_to_save=None,
                  peft_version=PEFT_VERSION, revision=None)
    if head is not None:
        config.update(task_type="SEQ_CLS", auto_mapping=None, modules_to_save=["classifier", "score"])
        kernel = np.asarray(head.classifier.kernel.numpy(), np.float32)
        bias = np.asarray(head.classifier.bias.numpy(), np.float32)
        tensors.update({"base_model.model.classifier.weight": np.ascontiguousarray(kernel.T),
                        "base_model.model.classifier.bias": bias})
        if config.get("bias") == "all":
            # PEFT's bias="all" also saves the wrapper's two copies of the classifier's bias.
            for wrapper in ("modules_to_save", "original_module"):
                tensors[f"base_model.model.classifier.{wrapper}.bias"] = bias.copy()
    return {"adapter_config.json": dict(sorted(config.items())),
            "adapter_model.safetensors": Tensors(tensors, metadata={"format": "pt"})}


def _hooks(method):
    for hook, (layer, target) in zip(method.updates, method.locations):
        yield layer, target, hook


def _lora_files(methods, name, base_state, prefix):
    from adapter_bert.methods.lora import is_plain_lora

    method = methods["lora"]
    cfg = method.config
    if not is_plain_lora(cfg.to_dict()) or cfg.use_gating:
        raise NotInPeftFormat(f"adapter {name!r}: gated, DoRA and VeRA updates are written in "
                              "adapter_bert's or the adapters library's format only")
    config = dict(copy.deepcopy(_LORA_FIELDS), peft_type="LORA", task_type=None, auto_mapping=_AUTO_MAPPING,
                  r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, use_rslora=cfg.use_rslora)
    tensors, targets = {}, []
    for layer, target, hook in _hooks(method):
        module = prefix + hf_module(layer, target)
        targets.append(module)
        tensors[f"base_model.model.{module}.lora_A.weight"] = _t(hook.lora_A)
        tensors[f"base_model.model.{module}.lora_B.weight"] = _t(hook.lora_B)
        if hook.r != cfg.r:
            config["rank_pattern"][module] = hook.r
        if hook.alpha != cfg.alpha:
            config["alpha_pattern"][module] = hook.alpha
    # Whole module names: PEFT takes an exact name as it is, and a suffix of BERT's names would
    # reach other layers ("output.dense" is also the attention's).
    config["target_modules"] = targets
    bitfit = methods.get("bitfit")
    if bitfit is not None:
        config["bias"], biases = _peft_biases(bitfit, method, base_state, prefix, name)
        tensors.update(biases)
    return config, tensors


def _peft_biases(bitfit, lora, base_state, prefix, name):
    """`(PEFT bias mode, tensors)` of a BitFit part: its offsets on this base's biases."""
    from adapter_bert.methods.lora import target_key

    lora_targets = {target_key(layer, target) for layer, target in lora.locations}
    wanted = bitfit.config.targets
    if wanted is None:
        mode = "all"
    elif {t for t in wanted} == lora_targets:
        mode = "lora_only"
    else:
        raise NotInPeftFormat(f"adapter {name!r}: PEFT trains all biases or those of the LoRA "
                              "layers; this BitFit part trains another set")
    offsets = {v.name: v for v in bitfit.offsets}
    wrapped = {hf_module(layer, target) for layer, target in lora.locations}
    tensors = {}
    for hf, ours in _bias_locations(lora.bert_config.num_hidden_layers):
        if ours not in offsets:
            continue
        module = hf[: -len(".bias")]
        key = f"{module}.base_layer.bias" if module in wrapped else hf
        value = base_state[hf].astype(np.float64) + offsets[ours].offset.numpy().astype(np.float64)
        tensors[f"base_model.model.{prefix}{key}"] = value.astype(np.float32)
    return mode, tensors


def _ia3_files(methods, name, base_state, prefix):
    from adapter_bert.methods.ia3 import IA3InputScale

    method = methods["lora"]
    cfg = method.config
    if "bitfit" in methods or cfg.alpha != 1 or cfg.use_gating:
        raise NotInPeftFormat(f"adapter {name!r}: PEFT's (IA)^3 has no alpha, gates or biases")
    config = dict(_IA3_FIELDS, peft_type="IA3", task_type=None, auto_mapping=_AUTO_MAPPING)
    tensors, targets, feedforward = {}, [], []
    for layer, target, hook in _hooks(method):
        module = prefix + hf_module(layer, target)
        targets.append(module)
        scale = np.asarray(hook.scale.numpy(), np.float32)
        if isinstance(hook, IA3InputScale):
            feedforward.append(module)
            tensors[f"base_model.model.{module}.ia3_l"] = scale.reshape(1, -1)
        else:
            tensors[f"base_model.model.{module}.ia3_l"] = scale.reshape(-1, 1)
    config.update(target_modules=targets, feedforward_modules=feedforward)
    return config, tensors


def _prefix_files(method, name):
    cfg, bert = method.config, method.bert_config
    if cfg.leave_out or cfg.use_gating:
        raise NotInPeftFormat(f"adapter {name!r}: PEFT's prefix tuning prefixes every layer, "
                              "without gates")
    if not cfg.shift_positions:
        raise NotInPeftFormat(f"adapter {name!r}: PEFT's prefix tuning numbers the input's tokens "
                              "after the prefix; this one was trained without (shift_positions=False), "
                              "so PEFT would compute something else. Train with shift_positions=True")
    config = dict(_PREFIX_FIELDS, peft_type="PREFIX_TUNING", task_type="FEATURE_EXTRACTION",
                  auto_mapping=None, encoder_hidden_size=bert.hidden_size,
                  num_attention_heads=bert.num_attention_heads, num_layers=bert.num_hidden_layers,
                  num_virtual_tokens=cfg.prefix_length, token_dim=bert.hidden_size)
    prefixes = np.asarray(method.pool.all_prefixes(), np.float32)
    return config, {"prompt_embeddings": np.ascontiguousarray(prefixes)}


def _prompt_files(method, name):
    cfg, bert = method.config, method.bert_config
    if not cfg.input_embeddings:
        raise NotInPeftFormat(f"adapter {name!r}: PEFT's prompts sit among the word embeddings "
                              "(input_embeddings=True); this one's follow the embedding LayerNorm, "
                              "as the adapters library's, so PEFT would compute something else")
    config = dict(_PROMPT_FIELDS, peft_type="PROMPT_TUNING", task_type="FEATURE_EXTRACTION",
                  auto_mapping=None, num_attention_heads=bert.num_attention_heads,
                  num_layers=bert.num_hidden_layers, num_virtual_tokens=cfg.prompt_length,
                  token_dim=bert.hidden_size)
    return config, {"prompt_embeddings": np.array(method.prompt.prompts.numpy(), np.float32)}


def _t(variable) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(variable.numpy(), np.float32).T)
