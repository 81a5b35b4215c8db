"""Other libraries' adapter files: the adapters library's (`adapters_library`) and PEFT's
(`peft`), told apart from adapter_bert's own by `files.detect`.

Importing this package registers their readers and writers with the model
(`adapter_bert.model.ADAPTER_FORMATS`), which `AdapterBertModel.load_adapter` and
`save_adapter(..., format=...)` use; `import adapter_bert` does it.
"""

from adapter_bert.formats import adapters_library, peft
from adapter_bert.formats.files import ADAPTERS, FORMATS, PEFT, detect, locate, weights_file
from adapter_bert.model import ADAPTER_FORMATS

__all__ = ["ADAPTERS", "FORMATS", "PEFT", "detect", "locate", "weights_file"]

ADAPTER_FORMATS.locate, ADAPTER_FORMATS.detect = locate, detect
ADAPTER_FORMATS.register(ADAPTERS, adapters_library.read_adapter, adapters_library.write_adapter)
ADAPTER_FORMATS.register(PEFT, peft.read_adapter, peft.write_adapter)
