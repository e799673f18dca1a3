"""scverse conventions across the public API: adata first, at most 3 positional parameters."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import discovery

MAX_POSITIONAL = 3


def _public_functions():
    for mod_info in pkgutil.walk_packages(discovery.__path__, prefix="discovery."):
        mod = importlib.import_module(mod_info.name)
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if inspect.isfunction(obj):
                yield f"{mod.__name__}.{name}", obj


def test_public_functions_follow_conventions():
    seen = 0
    for qualname, fn in _public_functions():
        seen += 1
        params = list(inspect.signature(fn).parameters.values())
        positional = [p for p in params
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        assert len(positional) <= MAX_POSITIONAL, f"{qualname}: too many positional parameters"
        names = [p.name for p in params]
        if "adata" in names:
            assert names[0] == "adata", f"{qualname}: adata must come first"
        assert fn.__doc__, f"{qualname}: missing docstring"
    assert seen > 10


def test_copy_convention():
    for qualname, fn in _public_functions():
        sig = inspect.signature(fn)
        if "copy" in sig.parameters:
            assert sig.parameters["copy"].kind == inspect.Parameter.KEYWORD_ONLY, qualname
            assert sig.parameters["copy"].default is False, qualname


def test_every_lazy_name_resolves_to_what_it_names():
    """dc, dc.tl, dc.get and dc.pl load on first use: every public name resolves, to an object
    of the module the table names (a name the package defines itself would hide it)."""
    import importlib
    import types

    for pkg in ("discovery.tl", "discovery.get", "discovery.pl"):
        mod = importlib.import_module(pkg)
        for name, (module, attr) in mod._LAZY.items():
            value = getattr(mod, name)
            if isinstance(value, types.ModuleType):
                assert value.__name__ == module, (pkg, name)
            else:
                assert value is getattr(importlib.import_module(module), attr or name), (pkg, name)
        assert set(mod._LAZY) <= set(dir(mod)) and set(mod._LAZY) <= set(mod.__all__)
