"""Reading a run directory back: the annotated data, the model, the SAEs and the result files.

Every reader names the stage that writes a missing file (``run `discovery run` first``), so a
notebook, the CLI and the app get the same clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anndata as ad
import networkx as nx
import pandas as pd
import torch

from discovery.io import files, layout
from discovery.io.contract import InputError
from discovery.io.graph_files import load_graph
from discovery.tl import classifier
from discovery.tl.attribution import SAEHook
from models.sae import load_sae

__all__ = ["OpenRun", "annotate_plans", "annotations", "artifact_warnings", "feature_chain",
           "graph", "graph_files", "graph_index", "open_run", "plans_by_graph", "read_json",
           "require"]


@dataclass
class OpenRun:
    """A finished run loaded back: annotated data, model, SAE hooks and feature labels."""

    path: Path
    adata: ad.AnnData
    model: torch.nn.Module
    saes: list[SAEHook]
    labels: dict[str, str]


def require(run_dir: str | Path, name: str, *, what: str, stage: str) -> Path:
    """``run_dir / name``, or an :class:`InputError` naming the stage that writes it."""
    run_dir = Path(run_dir)
    path = run_dir / name
    if not path.exists():
        msg = (f"{path} not found: {what} is written by the '{stage}' stage; run "
               f"`discovery run --out {run_dir if run_dir.is_absolute() else '<RUN_DIR>'}` "
               "first")
        raise InputError(msg)
    return path


def read_json(run_dir: str | Path, name: str, *, what: str, stage: str) -> Any:
    """A JSON file of the run (``name`` from :mod:`discovery.io.layout`), with clear errors."""
    path = require(run_dir, name, what=what, stage=stage)
    return files.read_json(path)


def open_run(run_dir: str | Path, *, need_features: bool = True) -> OpenRun:
    """Load a run directory's ``adata.h5ad``, ``model/`` and (first-seed) SAE for analysis."""
    path = Path(run_dir)
    if not path.is_dir():
        msg = f"run directory not found: {path}"
        raise InputError(msg)
    require(path, layout.MANIFEST, what="the manifest", stage="input")
    adata = ad.read_h5ad(require(path, layout.ADATA, what="the annotated data",
                                 stage="preprocess"))
    model = classifier.load(require(path, layout.MODEL_DIR, what="the model", stage="model"))
    saes: list[SAEHook] = []
    labels: dict[str, str] = {}
    if need_features:
        require(path, layout.FEATURES_DIR, what="the SAEs", stage="features")
        quality = read_json(path, layout.SAE_QUALITY, what="the SAE metrics", stage="features")
        seed = quality["spec"]["seeds"][0]
        saes = [SAEHook(quality["hook"], load_sae(path / layout.sae_dir(seed)).eval())]
        ann = annotations(path)
        labels = dict(zip(ann["feature"], ann["label"]))
    return OpenRun(path, adata, model, saes, labels)


def annotations(run_dir: str | Path) -> pd.DataFrame:
    """The feature table (one row per SAE feature: label, genes, confounds, stability)."""
    return pd.read_json(require(run_dir, layout.ANNOTATIONS, what="the feature annotations",
                                stage="features"))


def graph_index(run_dir: str | Path) -> dict[str, Any]:
    """``graphs/index.json`` of a run (clear error when the graphs stage has not run). Every
    slug is checked to be a plain name and every file it lists to lie inside the run
    (:func:`discovery.io.layout.inside_run`): the index decides what is read and written."""
    index = read_json(run_dir, layout.GRAPH_INDEX, what="the graph index", stage="graphs")
    for e in index.get("graphs", []):
        layout.safe_name(e.get("slug"), what="graph slug")
        for f in e.get("files", []):
            layout.inside_run(run_dir, f)
    return index


def graph(run_dir: str | Path, slug: str) -> nx.DiGraph:
    """One cohort graph of a run by its index ``slug`` (e.g. ``microglia_case``)."""
    ((_, path),) = graph_files(run_dir, [slug])
    return load_graph(path)


def graph_files(run_dir: str | Path, slugs: list[str] | None = None, *,
                cells: bool = False) -> list[tuple[str, Path]]:
    """``(name, path)`` of a run's graph files: the cohort graphs named by ``slugs`` (all when
    None) and, with ``cells``, their example cell graphs; a clear error for unknown names."""
    run_dir = Path(run_dir)
    known = {e["slug"]: e for e in graph_index(run_dir)["graphs"]}
    wanted = list(known) if slugs is None else slugs
    missing = [w for w in wanted if w not in known]
    if missing:
        msg = f"no graph named {missing} in {run_dir}; available: {', '.join(known) or 'none'}"
        raise InputError(msg)
    out = []
    for slug in wanted:
        out.append((slug, layout.inside_run(run_dir, layout.graph_file(slug))))
        if cells:
            out += [(layout.safe_name(Path(f).stem, what="cell graph name"),
                     layout.inside_run(run_dir, f)) for f in known[slug]["files"]
                    if f.startswith(f"{layout.GRAPHS_DIR}/cells/")]
    return out


def plans_by_graph(run_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """The run's plans grouped by the cohort graph (slug) their hypothesis lives in; empty for a
    run without hypotheses or plans."""
    run_dir = Path(run_dir)
    hpath, ppath = run_dir / layout.HYPOTHESES, run_dir / layout.PLANS
    if not hpath.is_file() or not ppath.is_file():
        return {}
    home = {h["id"]: h.get("population_graph") for h in files.read_json(hpath)["hypotheses"]}
    out: dict[str, list[dict[str, Any]]] = {}
    for p in files.read_json(ppath)["plans"]:
        out.setdefault(home.get(p["hypothesis"]), []).append(p)
    return out


def annotate_plans(g: nx.DiGraph, plans: list[dict[str, Any]]) -> nx.DiGraph:
    """Mark on a cohort graph the ``plans`` that rest on it (for exports; one entry of
    :func:`plans_by_graph`): the graph gets ``plans`` (id, tier, hypothesis, title of each),
    each node named in a plan's rationale gets ``plans`` ("P1 (recommended); P4 (exploratory)")
    and ``best_tier``, so Cytoscape or Gephi can filter the nodes a recommended plan stands on."""
    from discovery.tl.plans import TIERS

    g.graph["plans"] = [{"id": p["id"], "tier": p.get("tier"), "hypothesis": p["hypothesis"],
                         "title": p["title"]} for p in plans]
    on_node: dict[str, list[tuple[str, str]]] = {}
    for p in plans:
        nodes = {n for step in p.get("rationale", []) for n in step["refs"]["nodes"]}
        for n in nodes:
            on_node.setdefault(n, []).append((p["id"], p.get("tier") or ""))
    for n, ps in on_node.items():
        if n in g:
            g.nodes[n]["plans"] = "; ".join(f"{i} ({t})" for i, t in ps)
            g.nodes[n]["best_tier"] = min((t for _, t in ps),
                                          key=lambda t: TIERS.index(t) if t in TIERS else 9)
    return g


# ------------------------------------------------------------------------------ the why chain
def _present(row: pd.Series, col: str) -> Any:
    """``row[col]``, with a missing column or a NaN as None (older runs lack some columns)."""
    v = row.get(col)
    return None if v is None or (isinstance(v, float) and v != v) else v


def feature_status(role: dict[str, Any]) -> str:
    """``<covariate>-explained`` (a covariate explains the feature better than the label in the
    cell type it acts in), ``artifact`` (annotated as an artifact) or ``clean``."""
    if role.get("confounded_by"):
        return f"{role['confounded_by']}-explained"
    return "artifact" if role.get("artifact") else "clean"


def feature_chain(hypothesis: dict[str, Any],
                  annotations: pd.DataFrame | None = None) -> list[dict[str, Any]]:
    """The features behind a hypothesis, largest share of its attribution first: id, share,
    status (:func:`feature_status`), where it acts, label, and from ``annotations`` (the feature
    table) the covariate partial R² beside the label's, the donor effect and q, its top genes.
    """
    roles = sorted(hypothesis.get("evidence", {}).get("feature_roles") or [],
                   key=lambda r: -r["share"])
    total = sum(r["share"] for r in roles) or 1.0
    ann = (annotations.set_index("feature") if annotations is not None
           and "feature" in annotations else None)
    out = []
    for i, r in enumerate(roles):
        row: dict[str, Any] = {"feature": r["feature"], "share": r["share"] / total,
                               "status": feature_status(r), "leading": i == 0,
                               "label": r.get("label", "")}
        if ann is not None and r["feature"] in ann.index:
            a = ann.loc[r["feature"]]
            value = partial(_present, a)

            row.update({
                "acts in": value("cell_type") or value("home_cell_type"),
                "r2 label": value("r2_label"),
                **{f"r2 {c[3:]}": value(c) for c in a.index
                   if c.startswith("r2_") and c != "r2_label"},
                "donor effect": value("donor_effect"), "donor q": value("donor_q"),
                "top genes": list(value("signature") or [])[:5]})
        out.append(row)
    return out


def artifact_warnings(hypothesis: dict[str, Any]) -> list[str]:
    """Plain sentences for what a plan resting on ``hypothesis`` must show first: its flags, and
    every feature behind it that is artifact- or covariate-explained (with its share, and whether
    it leads). Empty when nothing technical stands behind it."""
    out = [f"Flagged ({f['kind']}" + (f", {f['by']}" if f.get("by") else "") + f"): {f['detail']}"
           for f in hypothesis.get("flags", [])]
    for r in feature_chain(hypothesis):
        if r["status"] != "clean":
            out.append(f"{r['feature']} is {r['status']} and carries {r['share']:.0%} of this "
                       f"hypothesis's attribution" + (" — it is the leading feature, so the "
                                                      "model's reason may be technical"
                                                      if r["leading"] else "")
                       + (f" ({r['label']})" if r["label"] else ""))
    return out
