"""The adapters library's weight names, and the map from them to this package's.

The library keys an adapter's weights by where they sit in the PyTorch `BertModel`
(`encoder.layer.3.output.adapters.<name>.adapter_up.weight`,
`encoder.layer.3.attention.self.query.loras.<name>.lora_A`, ...), with PyTorch's `[out, in]`
Linear kernels; this package keys them by method and layer (`bottleneck.layer_3_output_adapter.up.kernel`)
with Keras' `[in, out]` kernels.

Example:
>>> import numpy as np
>>> from adapter_bert.configuration import AdapterConfig
>>> from adapter_bert.model import AdapterModule
>>> from adapter_bert.testing import tiny_bert_config
>>> module = AdapterModule("a", AdapterConfig.load("seq_bn"), tiny_bert_config())
>>> ours = from_library_state(module, {
...     "encoder.layer.1.output.adapters.a.adapter_up.weight": np.ones((32, 2), "float32")})
>>> list(ours), ours["bottleneck.layer_1_output_adapter.up.kernel"].shape
(['bottleneck.layer_1_output_adapter.up.kernel'], (2, 32))
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

# The library's module path of each Dense hook point of a layer.
_DENSE = {"attention.self.query": "attention_query", "attention.self.key": "attention_key",
          "attention.self.value": "attention_value", "intermediate.dense": "intermediate",
          "output.dense": "output"}
_LOCATION = {"attention.output": "mh_adapter", "output": "output_adapter"}

_BOTTLENECK = re.compile(r"(?:^|\.)layer\.(\d+)\.(attention\.output|output)\.adapters\.([^.]+)\.(.+)$")
_LORA = re.compile(r"(?:^|\.)layer\.(\d+)\.(" + "|".join(re.escape(k) for k in _DENSE)
                   + r")\.loras\.([^.]+)\.(lora_A|lora_B|m\.weight|vera_D|vera_B|gate\.weight|gate\.bias)$")
_PREFIX_GATE = re.compile(r"(?:^|\.)layer\.(\d+)\.attention\.self\.prefix_tuning\.prefix_gates\.([^.]+)\."
                          r"(weight|bias)$")
_REFT = re.compile(r"(?:^|\.)layer\.(\d+)\.reft_layer\.refts\.([^.]+)\.units\.(\d+)\."
                   r"(learned_source\.weight|learned_source\.bias|projection\.weight)$")
_PROMPT = re.compile(r"(?:^|\.)prompt_tunings\.([^.]+)\.prompt_embedding\.weight$")
_SHARED = re.compile(r"(?:^|\.)shared_parameters\.([^.]+)\.(lora_A|lora_B|phm_rule\w*|W_\w+)$")
_INVERTIBLE = re.compile(r"(?:^|\.)invertible_adapters\.([^.]+)\.(F|G|s1|s2)\.([02])\.(weight|bias)$")
_PREFIX = re.compile(r"(?:^|\.)prefix_tunings\.([^.]+)\.self_prefix\.(.+)$")
_FUSION = re.compile(r"(?:^|\.)layer\.(\d+)\.(attention\.output|output)\.adapter_fusion_layer\."
                     r"([^.]+)\.(query|key|value|dense)\.(weight|bias)$")


def _method(module, architecture: str, key: str):
    for method in module.methods:
        if method.config.architecture == architecture:
            return method
    raise ValueError(f"adapters library weight {key} is {architecture}, adapter "
                     f"{module.adapter_name!r} has no {architecture} part")


def _bottleneck_key(module, layer, location, rest, key):
    method = _method(module, "bottleneck", key)
    prefix = f"{method.name}.layer_{layer}_{_LOCATION[location]}."
    ln_before = method.config.ln_before
    if method.config.phm_layer:  # Compacter: PHM weights keep their layout (x @ H, H [in, out])
        for part, ours in (("adapter_down.0.", "down."), ("adapter_up.", "up.")):
            if rest.startswith(part):
                return prefix + ours + rest[len(part):], False
    table = {"adapter_up.weight": ("up.kernel", True), "adapter_up.bias": ("up.bias", False),
             "gate.weight": ("gate.kernel", True), "gate.bias": ("gate.bias", False),
             "adapter_norm_after.weight": ("adapter_norm_after.gamma", False),
             "adapter_norm_after.bias": ("adapter_norm_after.beta", False),
             "scaling": ("scaling", False)}
    down = "adapter_down.1" if ln_before else "adapter_down.0"
    table.update({f"{down}.weight": ("down.kernel", True), f"{down}.bias": ("down.bias", False)})
    if ln_before:
        table.update({"adapter_down.0.weight": ("adapter_norm_before.gamma", False),
                      "adapter_down.0.bias": ("adapter_norm_before.beta", False)})
    if rest not in table:
        return None, False
    name, transpose = table[rest]
    return prefix + name, transpose


def from_library_state(module, state: dict, adapter: str | None = None) -> dict:
    """The adapters library's weights of one adapter, renamed and laid out for `module`.

    Args:
        module: the `AdapterModule` the weights are for (its config decides the names).
        state: library parameter name -> array; keys of other adapters are ignored.
        adapter: the adapter's name in the library's keys (default: the module's name).

    Raises:
        ValueError: a key of this adapter that maps to nothing here, naming it.
    """
    adapter = adapter or module.adapter_name
    out = {}
    for key, value in state.items():
        value = np.asarray(value)
        match = _BOTTLENECK.search(key)
        if match and match.group(3) == adapter:
            name, transpose = _bottleneck_key(module, match.group(1), match.group(2),
                                              match.group(4), key)
            if name is None:
                raise ValueError(f"adapters library weight {key} has no counterpart here")
            out[name] = value.T if transpose else value
            continue
        match = _LORA.search(key)
        if match and match.group(3) == adapter:
            method = _method(module, "lora", key)
            point = f"{method.name}.layer_{match.group(1)}_{_DENSE[match.group(2)]}"
            kind = match.group(4)
            if kind.startswith("gate."):  # UniPELT's gate: Linear(in, 1)
                out[f"{point}.gate.{'kernel' if kind == 'gate.weight' else 'bias'}"] = \
                    value.T if kind == "gate.weight" else value
            elif method.config.composition_mode == "scale":
                out[f"{point}.scale"] = value.reshape(-1)  # (IA)^3: lora_B [out, 1]
            elif kind == "m.weight":
                out[f"{point}.m"] = value.reshape(-1)  # DoRA's magnitude: [out, 1]
            else:
                out[f"{point}.{kind}"] = value.T
            continue
        match = _PREFIX_GATE.search(key)
        if match and match.group(2) == adapter:
            method = _method(module, "prefix_tuning", key)
            kind = "kernel" if match.group(3) == "weight" else "bias"
            out[f"{method.name}.gate_{match.group(1)}.{kind}"] = value.T if kind == "kernel" else value
            continue
        match = _REFT.search(key)
        if match and match.group(2) == adapter:
            method = _method(module, "reft", key)
            unit = f"{method.name}.layer_{match.group(1)}.units_{match.group(3)}."
            kind = match.group(4)
            if kind == "projection.weight":
                out[unit + "projection"] = value
            else:
                out[unit + ("learned_source.kernel" if kind.endswith("weight")
                            else "learned_source.bias")] = value.T if kind.endswith("weight") else value
            continue
        match = _PROMPT.search(key)
        if match and match.group(1) == adapter:
            method = _method(module, "prompt_tuning", key)
            out[f"{method.name}.prompt.prompt_embedding"] = value
            continue
        match = _SHARED.search(key)
        if match and match.group(1) == adapter:
            if match.group(2) in ("lora_A", "lora_B"):  # VeRA's frozen pair, [r, in] and [out, r]
                method = _method(module, "lora", key)
                out[f"{method.name}.shared_{match.group(2)[-1]}"] = value.T
            else:  # Compacter's shared rules and W factors
                method = _method(module, "bottleneck", key)
                out[f"{method.name}.shared.{match.group(2)}"] = value
            continue
        match = _INVERTIBLE.search(key)
        if match and match.group(1) == adapter:
            method = _method(module, "bottleneck", key)
            subnet, index, kind = match.group(2, 3, 4)
            name = f"{method.name}.invertible.{subnet}.{index}."
            out[name + ("kernel" if kind == "weight" else "bias")] = value.T if kind == "weight" else value
            continue
        match = _PREFIX.search(key)
        if match and match.group(1) == adapter:
            method = _method(module, "prefix_tuning", key)
            pool = f"{method.name}.pool."
            rest = match.group(2)
            if rest == "control_trans" and method.config.flat:
                out[pool + "control_trans"] = value.reshape(method.pool.prefix_length, -1)
            elif rest == "wte.weight":
                out[pool + "wte.embeddings"] = value
            elif rest in ("control_trans.0.weight", "control_trans.2.weight"):
                out[pool + rest.replace(".0.weight", "_0.kernel").replace(".2.weight", "_2.kernel")] = value.T
            elif rest in ("control_trans.0.bias", "control_trans.2.bias"):
                out[pool + rest.replace(".0.bias", "_0.bias").replace(".2.bias", "_2.bias")] = value
            else:
                raise ValueError(f"adapters library weight {key} has no counterpart here")
            continue
        # Any other weight under this adapter's name (heads and fusions have their own readers).
        if adapter in key.split(".") and not key.startswith("heads.") and "adapter_fusion" not in key:
            raise ValueError(f"adapters library weight {key} has no counterpart here")
    return out


def fusion_from_library_state(module, state: dict, fusion: str | None = None) -> dict:
    """The adapters library's weights of one AdapterFusion, renamed and laid out for `module`
    (a `FusionModule`); `fusion` is its name in the library's keys (default the module's)."""
    fusion = fusion or module.fusion_name
    out = {}
    for key, value in state.items():
        match = _FUSION.search(key)
        if not match or match.group(3) != fusion:
            continue
        layer, location, projection, kind = match.group(1, 2, 4, 5)
        name = f"layer_{layer}_{_LOCATION[location]}.{projection}."
        value = np.asarray(value)
        out[name + ("kernel" if kind == "weight" else "bias")] = value.T if kind == "weight" else value
    return out


# The library's masked-LM head (`BertStyleMaskedLMHead`): position in its Sequential -> ours.
_MASKED_LM_HEAD = {"0.weight": ("transform.kernel", True), "0.bias": ("transform.bias", False),
                   "2.weight": ("transform_norm.gamma", False),
                   "2.bias": ("transform_norm.beta", False), "3.bias": ("output_bias", False)}


def masked_lm_head_from_library_state(state: dict, head: str) -> dict:
    """The adapters library's masked-LM head `head` (`heads.<head>.<i>.*`), renamed for
    `adapter_bert.heads.MaskedLMHead`. Its decoder weight, tied to the word embeddings, is not
    a head weight here and is skipped.

    Raises:
        ValueError: a weight of that head with no counterpart here.
    """
    out = {}
    prefix = f"heads.{head}."
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        if rest == "3.weight":
            continue
        if rest not in _MASKED_LM_HEAD:
            raise ValueError(f"adapters library weight {key} has no counterpart in a masked-LM head")
        name, transpose = _MASKED_LM_HEAD[rest]
        value = np.asarray(value)
        out[name] = value.T if transpose else value
    return out


# --- a directory of the library's files -----------------------------------------------------------

def read_adapter(model, directory: Path, load_as: str | None, default_name: str, with_head: bool):
    """The adapters library's files in `directory`, read for `model` (its `load_adapter`)."""
    from adapter_bert.configuration import AdapterConfig
    from adapter_bert.formats.files import weights_file
    from adapter_bert.io_utils import read_json
    from adapter_bert.model import ADAPTER_CONFIG_FILE, HEAD_CONFIG_FILE, assign_named, read_weights

    source = directory / ADAPTER_CONFIG_FILE
    meta = read_json(source, "adapter config")
    if meta.get("model_type", "bert") != "bert":
        raise ValueError(f"{source} is an adapter for a {meta['model_type']!r} model, not BERT")
    if meta.get("hidden_size", model.config.hidden_size) != model.config.hidden_size:
        raise ValueError(f"adapter in {directory} was trained for a base of another size: "
                         f"hidden_size={meta['hidden_size']} (this model: {model.config.hidden_size})")
    library_name = meta.get("name")
    if not isinstance(library_name, str):
        raise ValueError(f"{source}: no adapter 'name' (a string)")
    try:
        config = AdapterConfig.load(config_from_library(meta["config"]))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {e}") from None
    path = weights_file(directory, "adapter.safetensors", "pytorch_adapter.bin")
    state = resolve_parametrisations(read_weights(path))
    module = model._new_module(load_as or library_name, config)
    try:
        weights = from_library_state(module, state, adapter=library_name)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    assign_named(module.named_variables(), weights, path)
    head = None
    if with_head and (directory / HEAD_CONFIG_FILE).is_file():
        head_source = directory / HEAD_CONFIG_FILE
        head_meta = read_json(head_source, "head config")
        head_path = weights_file(directory, "model_head.safetensors", "pytorch_model_head.bin")
        spec = head_from_library(head_meta, read_weights(head_path),
                                 head_meta.get("name", library_name),
                                 model.config.hidden_dropout_prob, head_source)
        head = model._new_head(module.adapter_name, *spec, head_path)
    return module.adapter_name, module, head, (None, path)


def write_adapter(model, name: str, with_head: bool) -> dict:
    """The files of `model`'s adapter `name` (and its head) as the library's `save_adapter`
    writes them for a `BertAdapterModel`, for `model.save_adapter(..., format="adapters")`."""
    head = model.heads.get(name) if with_head else None
    return library_files(model.adapters[name], head, name, model.base_model_name)


# --- writing: this package's weight names -> the library's ----------------------------------------

_POINT_PATH = {"attention_query": "attention.self.query", "attention_key": "attention.self.key",
               "attention_value": "attention.self.value", "intermediate": "intermediate.dense",
               "output": "output.dense"}
_LOCATION_PATH = {"mh_adapter": "attention.output", "output_adapter": "output"}
_OURS_BOTTLENECK = re.compile(r"^layer_(\d+)_(mh_adapter|output_adapter)\.(.+)$")
_OURS_DENSE = re.compile(r"^layer_(\d+)_(attention_query|attention_key|attention_value|intermediate|"
                         r"output)\.(lora_A|lora_B|scale|m|gate\.kernel|gate\.bias|vera_D|vera_B)$")
_OURS_REFT = re.compile(r"^layer_(\d+)\.units_(\d+)\.(projection|learned_source\.kernel|"
                        r"learned_source\.bias)$")
_OURS_PREFIX_GATE = re.compile(r"^gate_(\d+)\.(kernel|bias)$")
_OURS_INVERTIBLE = re.compile(r"^invertible\.(F|G|s1|s2)\.([02])\.(kernel|bias)$")


class NotInLibraryFormat(ValueError):
    """An adapter, or a part of one, that the adapters library's files cannot express."""


def _bottleneck_name(method, rest: str):
    """`(library name after the location, transpose)` of a bottleneck weight; None if none."""
    if method.config.phm_layer:
        for ours, part in (("down.", "adapter_down.0."), ("up.", "adapter_up.")):
            if rest.startswith(ours):
                return part + rest[len(ours):], False
    down = "adapter_down.1" if method.config.ln_before else "adapter_down.0"
    table = {"up.kernel": ("adapter_up.weight", True), "up.bias": ("adapter_up.bias", False),
             "down.kernel": (f"{down}.weight", True), "down.bias": (f"{down}.bias", False),
             "gate.kernel": ("gate.weight", True), "gate.bias": ("gate.bias", False),
             "adapter_norm_after.gamma": ("adapter_norm_after.weight", False),
             "adapter_norm_after.beta": ("adapter_norm_after.bias", False),
             "adapter_norm_before.gamma": ("adapter_down.0.weight", False),
             "adapter_norm_before.beta": ("adapter_down.0.bias", False),
             "scaling": ("scaling", False)}
    return table.get(rest)


def _library_weights(method, rest: str, value: np.ndarray, adapter: str, num_layers: int):
    """The library's `{name: array}` for one of `method`'s weights (`rest`: its name in the method)."""
    arch = method.config.architecture
    if arch == "bottleneck":
        match = _OURS_BOTTLENECK.match(rest)
        if match:
            found = _bottleneck_name(method, match.group(3))
            if found:
                name, transpose = found
                return {f"encoder.layer.{match.group(1)}.{_LOCATION_PATH[match.group(2)]}.adapters."
                        f"{adapter}.{name}": value.T if transpose else value}
        if rest.startswith("shared."):
            return {f"shared_parameters.{adapter}.{rest[len('shared.'):]}": value}
        match = _OURS_INVERTIBLE.match(rest)
        if match:
            subnet, index, kind = match.groups()
            return {f"invertible_adapters.{adapter}.{subnet}.{index}."
                    f"{'weight' if kind == 'kernel' else 'bias'}": value.T if kind == "kernel" else value}
    elif arch == "lora":
        match = _OURS_DENSE.match(rest)
        if match:
            layer, point, kind = match.groups()
            base = f"encoder.layer.{layer}.{_POINT_PATH[point]}.loras.{adapter}."
            if kind in ("scale", "m"):  # [out] vectors, [out, 1] there
                return {base + ("lora_B" if kind == "scale" else "m.weight"): value.reshape(-1, 1)}
            if kind == "gate.bias":
                return {base + kind: value}
            return {base + kind.replace(".kernel", ".weight"): value.T}
        if rest in ("shared_A", "shared_B"):  # VeRA's frozen pair
            return {f"shared_parameters.{adapter}.lora_{rest[-1]}": value.T}
    elif arch == "prefix_tuning":
        match = _OURS_PREFIX_GATE.match(rest)
        if match:
            layer, kind = match.groups()
            return {f"encoder.layer.{layer}.attention.self.prefix_tuning.prefix_gates.{adapter}."
                    f"{'weight' if kind == 'kernel' else 'bias'}": value.T if kind == "kernel" else value}
        table = {"pool.control_trans": ("control_trans", value.reshape(-1)),
                 "pool.wte.embeddings": ("wte.weight", value),
                 "pool.control_trans_0.kernel": ("control_trans.0.weight", value.T),
                 "pool.control_trans_0.bias": ("control_trans.0.bias", value),
                 "pool.control_trans_2.kernel": ("control_trans.2.weight", value.T),
                 "pool.control_trans_2.bias": ("control_trans.2.bias", value)}
        if rest in table:
            name, value = table[rest]
            # The library's pool is one module referenced from the model and from every layer.
            holders = ["prefix_tuning."] + [f"encoder.layer.{i}.attention.self.prefix_tuning.pool."
                                            for i in range(num_layers)]
            return {f"{h}prefix_tunings.{adapter}.self_prefix.{name}": value for h in holders}
    elif arch == "prompt_tuning":
        if rest == "prompt.prompt_embedding":
            return {f"prompt_tuning.prompt_tunings.{adapter}.prompt_embedding.weight": value}
    elif arch == "reft":
        match = _OURS_REFT.match(rest)
        if match:
            if method.config.orthogonality:
                raise NotInLibraryFormat(
                    "LoReFT's orthonormal projection is a torch parametrisation in the adapters "
                    "library's files, which adapter_bert does not write; save it in adapter_bert's "
                    "format, or use noreft / direft")
            layer, unit, kind = match.groups()
            base = f"encoder.layer.{layer}.reft_layer.refts.{adapter}.units.{unit}."
            if kind == "projection":
                return {base + "projection.weight": value}
            return {base + kind.replace(".kernel", ".weight"): value.T if kind.endswith("kernel") else value}
    return None


def to_library_state(module, adapter: str | None = None, prefix: str = "bert.") -> dict:
    """`module`'s weights under the adapters library's names and layouts (a `BertAdapterModel`'s,
    with `prefix`), the inverse of `from_library_state`.

    Raises:
        NotInLibraryFormat: a weight the library's files have no place for, naming it.
    """
    adapter = adapter or module.adapter_name
    num_layers = module.bert_config.num_hidden_layers
    out = {}
    for method in module.methods:
        for rest, variable in method.named_variables().items():
            value = np.ascontiguousarray(np.asarray(variable.numpy(), np.float32))
            found = _library_weights(method, rest, value, adapter, num_layers)
            if found is None:
                raise NotInLibraryFormat(f"weight {method.name}.{rest} of adapter {adapter!r} has "
                                         "no place in the adapters library's files")
            out.update({prefix + k: np.ascontiguousarray(v) for k, v in found.items()})
    return out


def library_config(config) -> dict:
    """The adapters library's `config` dict of an adapter config (its field names and values).

    Raises:
        NotInLibraryFormat: an option only adapter_bert has, set away from what the library does.
    """
    from adapter_bert.configuration import ConfigUnion

    if isinstance(config, ConfigUnion):
        return {"architecture": "union", "configs": [library_config(c) for c in config]}
    values = config.to_dict()
    for name, library_value in type(config).own_fields.items():
        if values.pop(name) != library_value:
            raise NotInLibraryFormat(f"{type(config).__name__} option {name}={getattr(config, name)!r} "
                                     "has no counterpart in the adapters library")
    for name, default in type(config).library_only.items():
        values.setdefault(name, default)
    if values.get("architecture") == "bottleneck":
        del values["architecture"]  # the library writes none for its bottleneck configs
    return values


def config_from_library(values) -> dict:
    """A library `config` dict made loadable by `AdapterConfig.load`: its bottleneck configs name
    no architecture there."""
    if not isinstance(values, dict):
        raise ValueError(f"the adapters library's config is not an object: {values!r}")
    values = dict(values)
    if values.get("architecture") == "union":
        values["configs"] = [config_from_library(c) for c in values.get("configs") or []]
    elif values.get("architecture") is None and "reduction_factor" in values:
        values["architecture"] = "bottleneck"
    return values


def torch_orthogonal(original: np.ndarray, base: np.ndarray | None) -> np.ndarray:
    """The weight torch's `orthogonal` parametrisation (Householder map) gives for its stored
    `original` and `base`, as the library's LoReFT projections are saved."""
    x = np.asarray(original, np.float64)
    transposed = x.shape[0] < x.shape[1]
    if transposed:
        x = x.T
    n, k = x.shape
    vectors = np.tril(x, -1)
    tau = 2.0 / (1.0 + (vectors * vectors).sum(axis=0))
    q = np.eye(n)
    for i in range(k):
        v = vectors[:, i].copy()
        v[i] = 1.0
        q = q - tau[i] * np.outer(q @ v, v)
    q = q[:, :k] * np.trunc(np.diagonal(x))[None, :]  # torch keeps the diagonal's signs as ints
    if base is not None:
        q = np.asarray(base, np.float64) @ q
    return (q.T if transposed else q).astype(np.float32)


def resolve_parametrisations(state: dict) -> dict:
    """Library weights with torch parametrisations (`<w>.parametrizations.weight.original` +
    `.0.base`) replaced by the weights they give (`<w>.weight`)."""
    out = {}
    for key, value in state.items():
        if key.endswith(".parametrizations.weight.original"):
            stem = key[: -len(".parametrizations.weight.original")]
            out[stem + ".weight"] = torch_orthogonal(value, state.get(stem + ".parametrizations.weight.0.base"))
        elif not key.endswith(".parametrizations.weight.0.base"):
            out[key] = value
    return out


# --- heads --------------------------------------------------------------------------------------

def head_from_library(meta: dict, state: dict, name: str, hidden_dropout: float, source):
    """`(head class name, its config, weights in this package's names)` of the library's head
    `name` (`head_config.json`'s dict and `model_head.safetensors`' tensors)."""
    config = meta.get("config") if isinstance(meta, dict) else None
    if not isinstance(config, dict):
        raise ValueError(f"{source}: no head 'config' (an object)")
    head_type = config.get("head_type")
    if head_type == "masked_lm":
        shape = (config.get("layers", 2), config.get("activation_function", "gelu"),
                 config.get("layer_norm", True), config.get("bias", True))
        if shape != (2, "gelu", True, True):
            raise ValueError(f"{source}: a masked-LM head with layers, activation, layer_norm, "
                             f"bias = {shape}; BERT's (2, 'gelu', True, True) loads here")
        return "MaskedLMHead", {}, masked_lm_head_from_library_state(state, name)
    if head_type != "classification":
        raise ValueError(f"{source}: the adapters library's {head_type!r} head has no counterpart "
                         "here (classification and masked_lm heads load); pass with_head=False")
    layers = config.get("layers", 2)
    if layers not in (1, 2):
        raise ValueError(f"{source}: a classification head of {layers} layers; 1 or 2 load here")
    if layers == 2 and config.get("activation_function", "tanh") != "tanh":
        raise ValueError(f"{source}: head activation {config.get('activation_function')!r}; "
                         "adapter_bert's two-layer head uses tanh")
    if not config.get("bias", True):
        raise ValueError(f"{source}: a head without biases has no counterpart here")
    label2id = config.get("label2id") or {}
    num_labels = config.get("num_labels", len(label2id) or 2)
    dropout = config.get("dropout_prob")
    ours = {"num_labels": num_labels, "pooling": "cls" if config.get("use_pooler") else "cls_token",
            "layers": layers, "dropout": hidden_dropout if dropout is None else dropout,
            "id2label": {str(v): k for k, v in label2id.items()} or None}
    # The library's Sequential: [Dropout, Linear, Activation] per hidden layer, then [Dropout, Linear].
    linears = ["hidden", "classifier"] if layers == 2 else ["classifier"]
    weights = {}
    for index, ours_name in enumerate(linears):
        for kind, our_kind in (("weight", "kernel"), ("bias", "bias")):
            key = f"heads.{name}.{1 + 3 * index}.{kind}"
            if key not in state:
                raise ValueError(f"{source} has no {key}")
            value = np.asarray(state[key])
            weights[f"{ours_name}.{our_kind}"] = value.T if kind == "weight" else value
    stray = sorted(k for k in state if k.startswith(f"heads.{name}.")
                   and k.split(".")[2] not in {str(1 + 3 * i) for i in range(len(linears))})
    if stray:
        raise ValueError(f"{source}: head weight {stray[0]} has no counterpart here")
    return "ClassificationHead", ours, weights


def head_to_library(head, name: str) -> tuple[dict, dict]:
    """`(head config dict, weights)` of a head in the library's form: a classification or
    regression head as its classification head, a masked-LM head as its masked-LM head.

    Raises:
        NotInLibraryFormat: a head the library's heads cannot express.
    """
    from adapter_bert.heads import ClassificationHead, MaskedLMHead
    from adapter_bert.methods.base import named_variables

    if isinstance(head, MaskedLMHead):
        return _masked_lm_head_to_library(head, name)
    if not isinstance(head, ClassificationHead):
        raise NotInLibraryFormat(f"head {name!r} ({type(head).__name__}) is written in adapter_bert's "
                                 "format only; pass with_head=False")
    if head.pooling == "mean":
        raise NotInLibraryFormat(f"head {name!r} pools by the mean, which the library's "
                                 "classification head cannot; pass with_head=False")
    labels = head.id2label or {str(i): f"LABEL_{i}" for i in range(head.num_labels)}
    config = {"head_type": "classification", "num_labels": head.num_labels, "layers": head.num_layers,
              "activation_function": "tanh", "label2id": {v: int(k) for k, v in labels.items()},
              "use_pooler": head.pooling == "cls", "bias": True, "dropout_prob": head.dropout_rate}
    variables = named_variables(head)
    linears = ["hidden", "classifier"] if head.num_layers == 2 else ["classifier"]
    weights = {}
    for index, ours in enumerate(linears):
        kernel = np.asarray(variables[f"{ours}.kernel"].numpy(), np.float32)
        weights[f"heads.{name}.{1 + 3 * index}.weight"] = np.ascontiguousarray(kernel.T)
        weights[f"heads.{name}.{1 + 3 * index}.bias"] = np.asarray(variables[f"{ours}.bias"].numpy(),
                                                                   np.float32)
    return config, weights


def _masked_lm_head_to_library(head, name: str) -> tuple[dict, dict]:
    """BERT's masked-LM head as the library's `BertStyleMaskedLMHead`: its Sequential's
    transform (0), LayerNorm (2) and decoder (3, the tied word embeddings, saved with it)."""
    from adapter_bert.methods.base import named_variables

    variables = {k: np.asarray(v.numpy(), np.float32) for k, v in named_variables(head).items()}
    config = {"head_type": "masked_lm", "vocab_size": head.vocab_size,
              "embedding_size": head.hidden_size, "layers": 2, "activation_function": "gelu",
              "layer_norm": True, "bias": True, "shift_labels": False, "label2id": None}
    prefix = f"heads.{name}."
    weights = {prefix + "0.weight": np.ascontiguousarray(variables["transform.kernel"].T),
               prefix + "0.bias": variables["transform.bias"],
               prefix + "2.weight": variables["transform_norm.gamma"],
               prefix + "2.bias": variables["transform_norm.beta"],
               prefix + "3.weight": np.asarray(head.tied_table().numpy(), np.float32),
               prefix + "3.bias": variables["output_bias"]}
    return config, weights


LIBRARY_VERSION = "adapters.1.3.0"  # the release whose files these are checked against


def library_files(module, head, name: str, base_name: str) -> dict:
    """The files the adapters library's `save_adapter` writes for a `BertAdapterModel`:
    `{file name: JSON value or Tensors}`.

    Raises:
        NotInLibraryFormat: a method, option or head the library's files cannot express.
    """
    from adapter_bert.io_utils import Tensors

    common = {"hidden_size": module.bert_config.hidden_size, "model_class": "BertAdapterModel",
              "model_name": base_name, "model_type": "bert", "name": name, "version": LIBRARY_VERSION}
    files = {"adapter_config.json": dict(common, config=library_config(module.config)),
             "adapter.safetensors": Tensors(to_library_state(module, name))}
    if head is not None:
        head_config, weights = head_to_library(head, name)
        files["head_config.json"] = dict(common, config=head_config)
        files["model_head.safetensors"] = Tensors(weights)
    return files
