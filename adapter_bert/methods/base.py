"""What every method shares: `AdapterMethod`, one method's weights for one adapter over the encoder.

A method is a config (a dataclass in its module) plus a Keras layer that owns the new weights and
says where they plug into the frozen base: `placements()` lists `(hook point path, hook)` pairs, and `attach` / `detach` register and unregister them under the adapter's name through the
encoder's hook API (`adapter_bert.bert.hooks`). Whether they run is the active setup's business,
not the method's. `AdapterModule` (in `adapter_bert.model`) holds the methods of one named adapter,
so a `ConfigUnion` such as MAM (prefix tuning + parallel adapter) is simply two methods attached
under one name.
"""

from __future__ import annotations

import keras

from adapter_bert.bert.config import BertConfig
from adapter_bert.bert.fast_ops import gelu
from adapter_bert.configuration import AdapterConfig

ACTIVATIONS = {
    "relu": keras.activations.relu,
    "gelu": gelu,
    "gelu_new": lambda x: keras.activations.gelu(x, approximate=True),
    "swish": keras.activations.silu,
    "silu": keras.activations.silu,
    "tanh": keras.activations.tanh,
    "sigmoid": keras.activations.sigmoid,
    # PyTorch's default slope, which the adapters library uses (Keras' default is 0.2).
    "leakyrelu": lambda x: keras.activations.leaky_relu(x, negative_slope=0.01),
}


def check_activation(name: str, field: str = "non_linearity") -> None:
    if name.lower() not in ACTIVATIONS:
        raise ValueError(f"{field} {name!r} is not one of {sorted(ACTIVATIONS)}")


def check_leave_out(leave_out) -> None:
    if not isinstance(leave_out, (list, tuple)) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in leave_out):
        raise ValueError(f"leave_out must be a list of layer indices, got {leave_out!r}")


class BuiltFromConfig:
    """`get_config` / `from_config` of a layer built as `cls(adapter config, hidden_size, ...)`
    (a mixin, before `keras.layers.Layer` in the bases; the layer keeps `config` and
    `hidden_size`)."""

    def get_config(self):
        config = super().get_config()
        config.update(config=self.config.config_dict(), hidden_size=self.hidden_size)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(AdapterConfig.load(config.pop("config")), **config)


def named_variables(layer: keras.layers.Layer, prefix: str = "") -> dict[str, keras.Variable]:
    """Variables of `layer` keyed by a stable dotted path of sublayer names (`layer_0.down.kernel`).

    Keras' own `variable.path` depends on where and when a layer was built; these names depend only
    on the adapter's structure, so saved files load into any model with the same config.
    """
    out = {}
    for variable in list(layer._trainable_variables) + list(layer._non_trainable_variables):
        out[prefix + variable.name] = variable
    for child in layer._layers:
        for key, variable in named_variables(child, prefix + child.name + ".").items():
            if key in out:
                raise RuntimeError(f"two adapter weights share the name {key}")
            out[key] = variable
    return out


class AdapterMethod(keras.layers.Layer):
    """Base class: the weights of one method for one adapter, and how they hook into the encoder.

    Subclasses create their sublayers in `__init__` (built eagerly, so weights exist before the
    first call) and implement `placements`; `attach` / `detach` register those hooks through the
    encoder's hook API and nothing else. Methods that can fold themselves into the base weights
    (LoRA, (IA)^3) implement `merge` / `reset`.
    """

    #: True when `merge` / `reset` are implemented.
    mergeable: bool = False

    def __init__(self, config: AdapterConfig, bert_config: BertConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.bert_config = bert_config
        self.merged = False

    def layer_indices(self) -> list[int]:
        """The encoder layers this method acts on (all but `leave_out`)."""
        return self.config.layers(self.bert_config.num_hidden_layers)

    def placements(self) -> list[tuple[str, object]]:
        """`(hook point path, hook)` for every hook of this method (see `BertEncoder.hook_points`)."""
        raise NotImplementedError

    def supported_blocks(self) -> frozenset:
        """The composition blocks (`block_type`s) every hook of this method can be walked through."""
        blocks = None
        for _, hook in self.placements():
            hook_blocks = frozenset(hook.composer.supported_blocks)
            blocks = hook_blocks if blocks is None else blocks & hook_blocks
        return blocks if blocks is not None else frozenset(
            ("stack", "parallel", "batch_split", "average", "split", "fuse", "multi_task"))

    def init_from_base(self, encoder, checkpoint_dir: str | None = None) -> None:
        """Initialises weights that start from the base's (copies of LayerNorms, DoRA's norms,
        prompts from word embeddings); `checkpoint_dir` has the base's tokenizer."""

    def bind(self, encoder) -> None:
        """Gives hooks the base weights they read (DoRA's kernels); most methods read none."""

    def attach(self, encoder, adapter: str) -> None:
        """Registers every hook under `adapter`; on an error none stays registered."""
        self.bind(encoder)
        done = []
        try:
            for path, hook in self.placements():
                encoder.hook_point(path).add(adapter, hook)
                done.append((path, hook))
        except Exception:
            for path, hook in done:
                encoder.hook_point(path).remove(adapter, hook)
            raise

    def detach(self, encoder, adapter: str) -> None:
        """Unregisters every hook of this method under `adapter` (a KeyError if one is missing)."""
        for path, hook in self.placements():
            encoder.hook_point(path).remove(adapter, hook)

    def merge(self, encoder, adapter: str) -> None:
        raise TypeError(f"{type(self).__name__} cannot be merged into the base weights "
                        "(only LoRA and (IA)^3 can)")

    def reset(self, encoder, adapter: str) -> None:
        raise TypeError(f"{type(self).__name__} has nothing merged to reset")

    def base_parts(self) -> list[str]:
        """The parts of the base whose own weights this method trains (`"embeddings"`,
        `"layer_<i>"`, `"pooler"`; see `adapter_bert.bert.checkpoint.base_part`): all of them for
        full fine-tuning, the top layers for partial fine-tuning; adapters train none."""
        return []

    @property
    def trains_base(self) -> bool:
        """Whether the base's own weights are what this method trains (its saved file holds
        them)."""
        return bool(self.base_parts())

    def named_variables(self) -> dict[str, keras.Variable]:
        return named_variables(self)

    def get_config(self):
        config = super().get_config()
        config.update(adapter_config=self.config.config_dict(), bert_config=self.bert_config.to_dict())
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        adapter_config = AdapterConfig.load(config.pop("adapter_config"))
        bert_config = BertConfig.from_dict(config.pop("bert_config"))
        return cls(adapter_config, bert_config, **config)
