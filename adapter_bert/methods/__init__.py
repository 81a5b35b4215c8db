"""Adapter methods: one module per method family, each registering itself (see registry.py).

Importing this package imports every module in it, so every method's `register_method` call has
run before any config is parsed; a new method needs no line here.
"""

import importlib as _importlib
import pkgutil as _pkgutil

for _module in sorted(m.name for m in _pkgutil.iter_modules(__path__)):
    _importlib.import_module(f"{__name__}.{_module}")
