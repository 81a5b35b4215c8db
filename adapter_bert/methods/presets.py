"""The `--method` presets of the training command: a name -> a config string for a given base.

`houlsby` is the paper's setup (Houlsby et al. 2019): adapters after attention and feed-forward,
near-identity init with std 1e-2, and per-task LayerNorm copies; `--bottleneck_size` sets its
width. The other presets are the table's defaults, plus the two baselines.

Example:
>>> preset_config("houlsby", hidden_size=768, bottleneck_size=64, non_linearity="gelu")
"double_seq_bn[reduction_factor=12.0, non_linearity='gelu', init_weights='houlsby', task_layer_norm=True]"
>>> preset_config("lora", hidden_size=768)
'lora'
"""

from __future__ import annotations

PRESETS = ("houlsby", "pfeiffer", "parallel", "lora", "ia3", "prefix", "bitfit", "full")
_TABLE_DEFAULTS = {"parallel": "par_bn", "lora": "lora", "ia3": "ia3", "prefix": "prefix_tuning",
                   "bitfit": "bitfit", "full": "full"}
DEFAULT_BOTTLENECK = {"houlsby": 64, "pfeiffer": None}


def _reduction_factor(hidden_size: int, bottleneck_size: int) -> float:
    if bottleneck_size <= 0 or bottleneck_size > hidden_size:
        raise ValueError(f"bottleneck_size must be in 1..{hidden_size} (the hidden size), "
                         f"got {bottleneck_size}")
    return hidden_size / bottleneck_size


def preset_config(method: str, hidden_size: int, bottleneck_size: int | None = None,
                  non_linearity: str | None = None) -> str:
    """The config string of preset `method` for a base of width `hidden_size`."""
    if method not in PRESETS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(PRESETS)}")
    if method == "houlsby":
        size = bottleneck_size or DEFAULT_BOTTLENECK["houlsby"]
        return (f"double_seq_bn[reduction_factor={_reduction_factor(hidden_size, size)}, "
                f"non_linearity={non_linearity or 'gelu'!r}, init_weights='houlsby', "
                "task_layer_norm=True]")
    if method == "pfeiffer":
        options = []
        if bottleneck_size:
            options.append(f"reduction_factor={_reduction_factor(hidden_size, bottleneck_size)}")
        if non_linearity:
            options.append(f"non_linearity={non_linearity!r}")
        return "seq_bn" + (f"[{', '.join(options)}]" if options else "")
    return _TABLE_DEFAULTS[method]
