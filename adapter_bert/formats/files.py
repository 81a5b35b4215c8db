"""Adapter files of three formats, told apart from the files alone: finding, detecting, refusing.

* adapter_bert's own: `adapter_config.json` with `"library": "adapter_bert"` (and the config's
  `config_class`), `adapter.safetensors` keyed by this package's weight names (its metadata says
  `"format": "adapter_bert"`), `head_config.json` + `head.safetensors`.
* the adapters library's: `adapter_config.json` with `"config"` and `"version": "adapters.<v>"`
  (also `model_class`, `model_type`), `adapter.safetensors` keyed by PyTorch module paths,
  `head_config.json` + `model_head.safetensors`.
* PEFT's: `adapter_config.json` with `"peft_type"`, `adapter_model.safetensors`.

The marks never overlap, so `detect` never guesses: a config with none of them is an error.
PyTorch pickles (`pytorch_adapter.bin`, `adapter_model.bin`, `pytorch_model_head.bin`) are
refused: loading one can run arbitrary code. The refusal says how to convert the file once.

Example:
>>> import json, tempfile, pathlib
>>> directory = pathlib.Path(tempfile.mkdtemp())
>>> _ = (directory / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
>>> detect(directory)
'peft'
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from adapter_bert.bert.checkpoint import hub_snapshot
from adapter_bert.io_utils import read_json

ADAPTER_BERT, ADAPTERS, PEFT = "adapter_bert", "adapters", "peft"
FORMATS = (ADAPTER_BERT, ADAPTERS, PEFT)
CONFIG_FILE = "adapter_config.json"
# Hub ids look like "owner/name" (an adapter repository always has an owner).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What an adapter repository holds; pickles too, so that their refusal can name them.
_HUB_FILES = ["*.json", "*.safetensors", "*.bin", "*.md"]


def detect(directory: str | os.PathLike) -> str:
    """Which library wrote the adapter in `directory`: "adapter_bert", "adapters" or "peft".

    Raises:
        FileNotFoundError: no `adapter_config.json` there.
        ValueError: a config that carries no format's mark, or that is not a JSON object.
    """
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        pickles = [p.name for p in Path(directory).glob("*.bin")] if Path(directory).is_dir() else []
        raise FileNotFoundError(f"{directory} holds no {CONFIG_FILE}, so no adapter of adapter_bert, "
                                "the adapters library or PEFT"
                                + (f" (it has {', '.join(sorted(pickles))})" if pickles else ""))
    meta = read_json(path, "adapter config")
    if not isinstance(meta, dict):
        raise ValueError(f"{path} is not a JSON object")
    if meta.get("library") == ADAPTER_BERT:
        return ADAPTER_BERT
    if "peft_type" in meta:
        return PEFT
    if "config" in meta and str(meta.get("version", "")).startswith("adapters."):
        return ADAPTERS
    raise ValueError(f"{path} has none of the formats' marks: adapter_bert's "
                     "\"library\": \"adapter_bert\", PEFT's \"peft_type\", or the adapters library's "
                     "\"config\" with \"version\": \"adapters.<version>\"")


def weights_file(directory: Path, safe_name: str, pickle_name: str) -> Path:
    """`directory / safe_name`; a one-line refusal, with the conversion, when only the pickle is there."""
    safe = directory / safe_name
    if safe.is_file():
        return safe
    pickled = directory / pickle_name
    if pickled.is_file():
        raise ValueError(
            f"{pickled} is a PyTorch pickle, which adapter_bert does not load (unpickling can run "
            f"code); convert it once to {safe_name} with: python -c \"import torch; from "
            f"safetensors.torch import save_file; save_file({{k: v.contiguous().clone() for k, v in "
            f"torch.load('{pickled}', weights_only=True).items()}}, '{safe}')\"")
    raise FileNotFoundError(f"{safe} does not exist")


def locate(path_or_id: str | os.PathLike) -> tuple[Path, str]:
    """The local directory of an adapter and the name it goes by when its files name none.

    A path that exists is used as it is; otherwise `"owner/name"` is a Hugging Face Hub repository,
    downloaded into (or, with `HF_HUB_OFFLINE=1`, found in) huggingface_hub's cache.
    """
    path = Path(path_or_id)
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{path} is a file; an adapter is a directory")
        return path, path.resolve().name
    text = os.fspath(path_or_id)
    if not _HUB_ID.match(text) or path.parent.is_dir():  # a typo in a local path stays one
        raise FileNotFoundError(f"adapter directory {text} does not exist")
    return hub_snapshot(text, _HUB_FILES, "adapter"), text.rsplit("/", 1)[1]
