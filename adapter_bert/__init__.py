"""adapter_bert: parameter-efficient fine-tuning of BERT in TensorFlow / Keras 3.

Example:
>>> from adapter_bert import AdapterBertModel, BertConfig
>>> model = AdapterBertModel.from_config(BertConfig(hidden_size=32, num_hidden_layers=2,
...     num_attention_heads=4, intermediate_size=64, vocab_size=100))
>>> model.add_adapter("task", config="lora")
"""

import os as _os
import sys as _sys

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TensorFlow turns its oneDNN kernels on by default only for some x86 processors (not, e.g., the
# AMD EPYC this project is benchmarked on); with them, training runs about 1.3x faster there
# (bench/onednn.py). It only takes effect if set before TensorFlow is first imported.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# The package's own commands (`python -m adapter_bert.sweep`) keep TensorFlow's start-up notices
# off their stderr, as run_tf_adapter_bert.py does: the filter must be in place before the
# imports below, which run before the command's module does.
if (getattr(_sys, "orig_argv", [])[1:3] == ["-m", "adapter_bert.sweep"]
        and "--verbose" not in _sys.orig_argv):
    from adapter_bert.console import install_stderr_filter as _install_stderr_filter

    _install_stderr_filter()

from adapter_bert.bert.config import BertConfig  # noqa: E402
from adapter_bert.bert.tokenizer import load_tokenizer  # noqa: E402
from adapter_bert.composition import (Average, BatchSplit, Fuse, MultiTask, Parallel,  # noqa: E402
                                      Split, Stack)
from adapter_bert.fusion import AdapterFusionConfig  # noqa: E402
from adapter_bert.configuration import AdapterConfig, ConfigUnion  # noqa: E402
import adapter_bert.methods  # noqa: E402,F401  (every method registers itself)
from adapter_bert.methods.bitfit import BitFitConfig  # noqa: E402
from adapter_bert.methods.bottleneck import (BnConfig, DoubleSeqBnConfig, ParBnConfig,  # noqa: E402
                                             SeqBnConfig)
from adapter_bert.methods.invertible import DoubleSeqBnInvConfig, SeqBnInvConfig  # noqa: E402
from adapter_bert.methods.full import FullFinetuningConfig  # noqa: E402
from adapter_bert.methods.ia3 import IA3Config  # noqa: E402
from adapter_bert.methods.lora import LoRAConfig  # noqa: E402
from adapter_bert.methods.mam import MAMConfig  # noqa: E402
from adapter_bert.methods.compacter import CompacterConfig, CompacterPlusPlusConfig  # noqa: E402
from adapter_bert.methods.dora import DoRAConfig  # noqa: E402
from adapter_bert.methods.prefix import PrefixTuningConfig  # noqa: E402
from adapter_bert.methods.prompt import PromptTuningConfig  # noqa: E402
from adapter_bert.methods.reft import DiReftConfig, LoReftConfig, NoReftConfig, ReftConfig  # noqa: E402
from adapter_bert.methods.unipelt import UniPELTConfig  # noqa: E402
from adapter_bert.methods.vera import VeraConfig  # noqa: E402
from adapter_bert.heads import ClassificationHead, MaskedLMHead  # noqa: E402
from adapter_bert.model import AdapterBertModel  # noqa: E402
import adapter_bert.formats  # noqa: E402,F401  (the other libraries' files register their readers)

__version__ = "0.1.0"

__all__ = ["AdapterBertModel", "BertConfig", "load_tokenizer", "AdapterConfig", "ConfigUnion",
           "BnConfig", "SeqBnConfig", "DoubleSeqBnConfig", "ParBnConfig", "LoRAConfig", "IA3Config",
           "PrefixTuningConfig", "MAMConfig", "BitFitConfig", "FullFinetuningConfig",
           "Stack", "Parallel", "BatchSplit", "Average", "Split", "Fuse", "MultiTask",
           "AdapterFusionConfig", "CompacterConfig", "CompacterPlusPlusConfig", "DoRAConfig",
           "VeraConfig", "PromptTuningConfig", "UniPELTConfig", "ReftConfig", "LoReftConfig",
           "NoReftConfig", "DiReftConfig", "SeqBnInvConfig", "DoubleSeqBnInvConfig",
           "ClassificationHead", "MaskedLMHead"]
