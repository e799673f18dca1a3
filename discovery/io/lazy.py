"""Subpackages that load their modules on first use (PEP 562), so that importing one light
module (``discovery.tl.shortcuts``, ``discovery.get.run``'s names) does not import every
sibling, and with them PyTorch, scanpy and matplotlib. Used by ``dc.tl``, ``dc.get`` and
``dc.pl``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def attach(package: str, names: dict[str, tuple[str, str | None]]
           ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module ``__getattr__`` and ``__dir__`` for ``package`` whose public ``names`` map to
    (module that defines it, its name there when it differs; a name that is the module's own
    last part, with no second entry, is the module itself). A lazy name that the package
    already defines would never be looked up (``from __future__ import annotations`` defines
    ``annotations``): refused at import."""
    shadowed = sorted(set(names) & set(vars(sys.modules[package])))
    if shadowed:
        msg = f"{package} defines {shadowed} itself, which hides the lazy names of the same name"
        raise ImportError(msg)

    def __getattr__(name: str) -> Any:
        try:
            module, attr = names[name]
        except KeyError:
            msg = f"module {package!r} has no attribute {name!r}"
            raise AttributeError(msg) from None
        mod = importlib.import_module(module)
        value = mod if attr is None and module.endswith(f".{name}") else getattr(mod, attr or name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *names})

    return __getattr__, __dir__
