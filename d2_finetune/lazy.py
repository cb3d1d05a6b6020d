"""Packages whose names are imported when first used (PEP 562), so that importing the package
loads none of its heavy dependencies (cityscapesscripts, onnx) until a name needs them."""

import importlib

__all__ = ["lazy_exports"]


def lazy_exports(package, exports):
    """The ``__getattr__`` and ``__dir__`` of ``package``, which gives each name of ``exports``
    (name -> relative module holding it) from its module, imported on first use."""

    def __getattr__(name):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name], package), name)

    def __dir__():
        return sorted(exports)

    return __getattr__, __dir__
