"""Lazy package exports (PEP 562): a name is imported from its submodule on first use, so
importing the package stays cheap."""
import importlib


def lazy_exports(package: str, namespace: dict, exports: dict):
    """(__getattr__, __dir__) for a package whose ``exports`` map each public name to the
    submodule defining it; a loaded name is cached in the package's ``namespace``."""

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
