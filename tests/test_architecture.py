"""The tree shows the data flow: every module of ``discovery`` sits in its stage's folder, and
imports only flow one way (models <- discovery.io <- pp <- tl <- pl <- get <- pipelines <- app)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: layer of each package / discovery stage; a module may import its own layer or lower ones
LAYERS = {"models": 0, "discovery.io": 1, "discovery.pp": 2, "discovery.tl": 3,
          "discovery.pl": 4, "discovery.get": 5, "discovery": 5, "pipelines": 6, "app_pages": 7}
STAGES = ("io", "pp", "tl", "pl", "get")


def _layer(module: str) -> int | None:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return LAYERS[prefix]
    return None


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every import of a file (module level and inside functions), as (line, module)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            # `from discovery import tl` reaches the tl layer
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names
                    if node.module == "discovery" and a.name in STAGES]
    return out


def _sources() -> list[Path]:
    files = []
    for pkg in ("models", "discovery", "pipelines", "app_pages"):
        files += sorted((ROOT / pkg).rglob("*.py"))
    return files


def _upward_imports(files: list[tuple[Path, str]]) -> list[str]:
    """``(path, module name)`` pairs -> every import of a higher layer, as "path:line ..."."""
    upward = []
    for path, here in files:
        own = _layer(here)
        for line, mod in _imports(path):
            target = _layer(mod)
            if target is not None and own is not None and target > own:
                upward.append(f"{path.name}:{line} ({here}) imports {mod}")
    return upward


def test_no_module_imports_upward():
    upward = _upward_imports([(p, _module_name(p)) for p in _sources()])
    assert not upward, "imports against the data flow:\n" + "\n".join(upward)


def test_every_discovery_module_sits_in_a_stage_folder():
    top = sorted(p.name for p in (ROOT / "discovery").glob("*.py"))
    assert top == ["__init__.py"], f"modules outside a stage folder: {top}"
    folders = sorted(p.name for p in (ROOT / "discovery").iterdir()
                     if p.is_dir() and not p.name.startswith(("_", ".")))
    assert folders == sorted(STAGES)
    for stage in STAGES:
        assert (ROOT / "discovery" / stage / "__init__.py").is_file()


def test_library_code_has_no_quiet_flags_or_prints():
    """The CLI owns the console: library progress follows the logging level."""
    offenders = []
    for pkg in ("models", "discovery"):
        for path in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.arg) and node.arg == "quiet":
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} quiet parameter")
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                        and node.func.id == "print"):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} print")
    assert not offenders, "\n".join(offenders)


def test_the_layering_check_catches_an_upward_import(tmp_path):
    """The checker itself can fail: a tl module importing get, or models importing discovery,
    is reported; an import of a lower layer is not."""
    bad = tmp_path / "probe.py"
    bad.write_text("import numpy\nfrom discovery.io.layout import feature_id\n\n\n"
                   "def f():\n    from discovery.get.run import open_run\n")
    found = _upward_imports([(bad, "discovery.tl.probe")])
    assert found == ["probe.py:6 (discovery.tl.probe) imports discovery.get.run"]
    assert _upward_imports([(bad, "models.probe")]) == [
        "probe.py:2 (models.probe) imports discovery.io.layout",
        "probe.py:6 (models.probe) imports discovery.get.run"]
