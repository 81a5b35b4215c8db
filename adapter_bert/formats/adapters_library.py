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
