"""The one module that owns the paths of the data bundled with discovery.

Everything under the repository's ``data/`` folder (gene sets, marker genes, assay catalogs,
example configs) is read through here. In an installed wheel the folder ships as
``discovery/_bundled_data``; in a source checkout it is ``data/`` at the repository root.
Callers get fresh copies, so mutating a returned object never changes what the next caller sees.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["GeneSet", "canonical_cell_type", "data_dir", "data_path", "gene_set", "gene_sets", "read_gmt", "read_yaml"]


@functools.cache
def data_dir() -> Path:
    """Folder holding the bundled data files."""
    package = Path(__file__).resolve().parent.parent  # discovery/
    for candidate in (package / "_bundled_data", package.parent / "data"):
        if (candidate / "gene_sets.yaml").is_file():
            return candidate
    msg = (
        "discovery's bundled data folder was not found (looked for discovery/_bundled_data and "
        f"data/ next to {package}). Reinstall the package with `pip install -e .` from the "
        "repository root."
    )
    raise FileNotFoundError(msg)


def data_path(name: str) -> Path:
    """Path of one bundled file, e.g. ``data_path("gene_sets.yaml")``."""
    path = data_dir() / name
    if not path.exists():
        available = sorted(p.name for p in data_dir().iterdir())
        msg = f"no bundled data file {name!r}; available: {', '.join(available)}"
        raise FileNotFoundError(msg)
    return path


@functools.cache
def _read_yaml_cached(name: str) -> Any:
    with data_path(name).open() as fh:
        return yaml.safe_load(fh)


def read_yaml(name: str) -> Any:
    """Parsed content of a bundled YAML file (a deep copy: safe to modify)."""
    return copy.deepcopy(_read_yaml_cached(name))


@dataclass(frozen=True)
class GeneSet:
    """A named gene set with its provenance."""

    name: str
    category: str  # marker | disease | artifact
    genes: tuple[str, ...]
    source: str
    tissue: str | None = None
    cell_type: str | None = None
    direction: str | None = None  # up | down, for disease programs
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


def gene_sets(
    *, category: str | None = None, tissue: str | None = None
) -> list[GeneSet]:
    """Bundled gene sets (``data/gene_sets.yaml``), optionally filtered."""
    raw = read_yaml("gene_sets.yaml")["sets"]
    out = []
    for entry in raw:
        known = {"name", "category", "genes", "source", "tissue", "cell_type", "direction"}
        gs = GeneSet(
            name=entry["name"],
            category=entry["category"],
            genes=tuple(entry["genes"]),
            source=entry["source"],
            tissue=entry.get("tissue"),
            cell_type=entry.get("cell_type"),
            direction=entry.get("direction"),
            extra={k: v for k, v in entry.items() if k not in known},
        )
        if category is not None and gs.category != category:
            continue
        if tissue is not None and gs.tissue not in (tissue, None):
            continue
        out.append(gs)
    return out


def gene_set(name: str) -> GeneSet:
    """One bundled gene set by exact name."""
    sets = {gs.name: gs for gs in gene_sets()}
    if name not in sets:
        msg = f"no bundled gene set {name!r}; available: {', '.join(sorted(sets))}"
        raise KeyError(msg)
    return sets[name]


def _norm_name(name: str) -> str:
    x = "".join(ch for ch in name.lower() if ch.isalnum())
    return x[:-1] if x.endswith("s") else x


@functools.cache
def _cell_type_terms() -> dict[str, tuple[str, str]]:
    """Normalised name -> (Cell Ontology id, label), every label and synonym of
    ``cell_types.yaml``."""
    out: dict[str, tuple[str, str]] = {}
    for t in read_yaml("cell_types.yaml")["cell_types"]:
        for name in (t["label"], *t.get("synonyms", [])):
            out[_norm_name(str(name))] = (str(t["id"]), str(t["label"]))
    return out


def canonical_cell_type(name: Any) -> str | None:
    """One comparable key per cell population: its Cell Ontology id when the name is a label or
    a synonym in ``cell_types.yaml`` ("microglial cell", "Microglia", "Mic" -> ``CL:0000129``),
    else the name lower-cased with non-alphanumerics and a plural 's' dropped. None for a
    missing name (None, NaN)."""
    if not isinstance(name, str) or not name.strip():
        return None
    key = _norm_name(name)
    term = _cell_type_terms().get(key)
    return term[0] if term else key


def read_gmt(path: str | Path) -> list[GeneSet]:
    """Gene sets from a ``.gmt`` file (MSigDB / GO / Enrichr format: one set per line, tab
    separated: name, description or URL, genes).

    Each set gets category ``user`` and ``extra['collection']`` = the file's stem, so an
    enrichment names the collection a hit came from. Refuses, naming the line, a file that is
    missing or empty, a line without genes and a set name used twice.
    """
    from models.errors import InputError

    p = Path(path)
    if not p.is_file():
        msg = f"gene-set file not found: {p}"
        raise InputError(msg)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        msg = f"gene-set file {p} is not UTF-8 text (a .gmt file is tab-separated text)"
        raise InputError(msg) from err
    out: list[GeneSet] = []
    seen: set[str] = set()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.rstrip("\r\n").split("\t")]
        genes = tuple(dict.fromkeys(g for g in fields[2:] if g))
        if len(fields) < 3 or not fields[0] or not genes:
            msg = (f"{p.name} line {n} is not a gene set: a .gmt line is NAME<tab>DESCRIPTION"
                   "<tab>GENE1<tab>GENE2...; is the file tab-separated?")
            raise InputError(msg)
        if fields[0] in seen:
            msg = f"{p.name} line {n}: gene set {fields[0]!r} appears twice"
            raise InputError(msg)
        seen.add(fields[0])
        out.append(GeneSet(name=fields[0], category="user", genes=genes,
                           source=f"{p.name}: {fields[1] or 'no description'}",
                           extra={"collection": p.stem}))
    if not out:
        msg = f"gene-set file {p} holds no gene set"
        raise InputError(msg)
    return out
