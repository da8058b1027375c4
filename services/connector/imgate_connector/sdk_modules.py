"""One module of a platform SDK, loaded without the rest of the SDK.

An SDK's package `__init__` usually imports its whole client (HTTP libraries, every API
model): several megabytes of memory in every connector, and seconds of start-up, for the
few frame or event classes the connector uses. `load_alone` runs just the named module's file,
so that the ordinary `from sdk.module import Name` after it finds the module already loaded.
It fits modules that import nothing of their own package (plain frame classes, generated
protobuf code).
"""

import importlib.util
import sys
from importlib.machinery import PathFinder


def load_alone(*names: str) -> None:
    """Load each dotted module name (`package.module`, any depth) without importing its parent
    packages; a name already loaded is left as it is."""
    for name in names:
        if name in sys.modules:
            continue
        parts = name.split(".")
        path: list[str] | None = None
        spec = None
        for depth in range(1, len(parts) + 1):
            spec = PathFinder.find_spec(".".join(parts[:depth]), path)
            if spec is None:
                raise ModuleNotFoundError(f"no module named {name!r}", name=name)
            path = list(spec.submodule_search_locations or [])
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        parent = sys.modules.get(name.rpartition(".")[0])
        if parent is not None:  # the package already imported: as its attribute too
            setattr(parent, parts[-1], module)
