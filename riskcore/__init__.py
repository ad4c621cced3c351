"""riskcore: a vectorised risk engine for large crypto-futures books."""

import importlib
import sys
import types

# The public API, each name imported from its module on first use, so a command loads only
# what it runs (`riskcore scan` never imports the engine, settlement or margin operations;
# `riskcore --help` not even numba).
_PUBLIC = {"Book": "book", "BookError": "errors", "Engine": "engine", "MoneyOverflowError": "errors",
           "OutputError": "output", "ScanResult": "scan", "Settlement": "settle", "SnapshotError": "engine",
           "TickError": "engine",
           "apply_requests": "ops", "load_book": "io", "scan": "scan", "settle": "settle", "stress": "stress"}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version
        try:
            value = version("riskcore")
        except PackageNotFoundError:  # run from a source tree that was never installed
            value = "unknown"
    elif name in _PUBLIC:
        value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """`scan`, `settle` and `stress` are functions of the API and modules too: importing the module
    riskcore.scan would set the package's `scan` to it. Setting a public name to a module is
    dropped, so the name stays the function (__getattr__ above)."""

    def __setattr__(self, name, value):
        if not (name in _PUBLIC and isinstance(value, types.ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
