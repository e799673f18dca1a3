"""A run's results put back into its AnnData, scanpy-style, so that a notebook works on one object.

:func:`attach_results` writes (every key is listed in the README):

- ``uns['discovery']['features']``: the feature table (one row per SAE feature: label, cell
  type, donor-level statistics, partial R² of label and covariates, signature genes);
- ``uns['discovery']['hypotheses']``: the ranked hypotheses (id, status, score, cell type,
  direction, genes, features, flags);
- ``uns['rank_genes_groups_<method>']``: each baseline ranking in scanpy's structure
  (:func:`discovery.tl.baselines.to_rank_genes_groups`);
- ``obs['discovery_<id>']``: a per-cell score of each of the top hypotheses: the summed
  activation of its SAE features (what its donor-level test averages per donor), or, for a
  hypothesis with no features (found by pseudobulk alone), ``sc.tl.score_genes`` of its top
  genes signed by direction.

The SAE features' gene signatures (``varm['X_sae_<hook>_signature']``) are written by the
features stage (:func:`discovery.tl.annotate.annotate_features`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from discovery.io import files, layout
from discovery.tl.baselines import to_rank_genes_groups

log = logging.getLogger(__name__)

__all__ = ["N_SCORED_HYPOTHESES", "attach_results", "hypothesis_table"]

#: hypotheses that get a per-cell score in ``obs`` (the top of the ranking)
N_SCORED_HYPOTHESES = 10


def _flat(value: Any) -> Any:
    """One h5ad-writable cell: lists of strings joined by '; ', other containers as JSON."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return "; ".join(value)
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, default=float)
    return value


def _writable(df: pd.DataFrame) -> pd.DataFrame:
    """A table anndata can write into ``uns``: containers flattened, object columns as
    strings (missing = ''), numbers as numbers."""
    out = pd.DataFrame(index=pd.RangeIndex(len(df)).astype(str))
    for col in df.columns:
        values = [_flat(v) for v in df[col].tolist()]
        numeric = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce")
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, bool | np.bool_) for v in present):
            if len(present) == len(values):
                out[str(col)] = np.asarray(values, dtype=bool)
            else:  # "not computed" is not False: text, '' where missing
                out[str(col)] = ["" if v is None else str(bool(v)) for v in values]
        elif present and all(isinstance(v, int | float | np.number) and not isinstance(v, bool)
                             for v in present):
            whole = len(present) == len(values) and all(float(v).is_integer() for v in present)
            out[str(col)] = numeric.to_numpy(dtype=np.int64 if whole else float)
        else:
            out[str(col)] = ["" if v is None else str(v) for v in values]
    return out


def hypothesis_table(hypotheses: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per hypothesis: id, rank, kind, status, score, cell type, direction, statement,
    top genes, features, flags, donor-level effect and q, replication."""
    rows = []
    for h in hypotheses:
        ev = h.get("evidence", {})
        donor = ev.get("donor_level") or {}
        rep = ev.get("replication") or {}
        rows.append({
            "id": h["id"], "rank": h.get("rank"), "kind": h.get("kind", "model"),
            "status": h.get("status"), "score": h.get("score"),
            "cell_type": h.get("cell_type"), "direction": h.get("direction"),
            "statement": h.get("statement"),
            "genes": [g["symbol"] for g in h.get("genes", [])[:10]],
            "features": list(h.get("features", [])),
            "flags": [f.get("kind", str(f)) if isinstance(f, dict) else str(f)
                      for f in h.get("flags", [])],
            "donor_effect": donor.get("effect"), "donor_q": donor.get("q"),
            "replicated": rep.get("replicated"),
        })
    return pd.DataFrame(rows)


def attach_results(adata: ad.AnnData, run_dir: str | Path, *,
                   n_hypotheses: int = N_SCORED_HYPOTHESES) -> list[str]:
    """Write a run's features, hypotheses, baseline rankings and hypothesis scores into
    ``adata`` (the run's own preprocessed AnnData; see the module docstring for the keys).

    Reads ``features/annotations.json``, ``hypotheses.json``, ``baselines/rankings.csv.gz``
    (each when present), ``obsm['X_sae_<hook>']``, log-normalised ``X``. Returns the keys
    written (``uns[...]``, ``obs[...]``).
    """
    import scanpy as sc

    run_dir = Path(run_dir)
    written: list[str] = []
    disc = dict(adata.uns.get("discovery", {}))
    ann_path = run_dir / layout.ANNOTATIONS
    if ann_path.exists():
        disc["features"] = _writable(pd.DataFrame(files.read_json(ann_path)))
        written.append("uns['discovery']['features']")
    hyps: list[dict[str, Any]] = []
    hyp_path = run_dir / layout.HYPOTHESES
    if hyp_path.exists():
        hyps = files.read_json(hyp_path).get("hypotheses", [])
        disc["hypotheses"] = _writable(hypothesis_table(hyps))
        written.append("uns['discovery']['hypotheses']")
    adata.uns["discovery"] = disc

    rank_path = run_dir / layout.RANKINGS
    if rank_path.exists():
        rankings = pd.read_csv(rank_path, dtype={"cell_type": str, "gene": str},
                               keep_default_na=False, na_values={"score": [""], "pval": [""],
                                                                 "qval": [""]})
        for _, r in rankings.groupby("method", sort=True):
            written.append(f"uns[{to_rank_genes_groups(adata, r)!r}]")

    for col in [c for c in adata.obs.columns if str(c).startswith("discovery_H")]:
        del adata.obs[col]  # scores of an earlier hypothesis list
    for h in hyps[:n_hypotheses]:
        col = f"discovery_{h['id']}"
        cols = [_feature_column(adata, f) for f in h.get("features", [])]
        cols = [c for c in cols if c is not None]
        if cols:
            adata.obs[col] = np.sum([np.asarray(adata.obsm[k][:, j], dtype=np.float32)
                                     for k, j in cols], axis=0)
        else:
            genes = [g["symbol"] for g in h.get("genes", [])[:10]
                     if g["symbol"] in adata.var_names]
            if not genes:
                continue
            sc.tl.score_genes(adata, genes, score_name=col, random_state=0, use_raw=False,
                              ctrl_size=min(50, adata.n_vars - len(genes)))
            if h.get("direction") == "down":
                adata.obs[col] = -adata.obs[col]
        written.append(f"obs[{col!r}]")
    log.info("results attached to the AnnData: %s", ", ".join(written))
    return written


def _feature_column(adata: ad.AnnData, fid: str) -> tuple[str, int] | None:
    """Where feature ``fid`` (``pooled:F12``) lives: its obsm key and column, or None."""
    hook, j = layout.parse_feature_id(fid)
    key = layout.sae_key(hook)
    if key not in adata.obsm or j >= adata.obsm[key].shape[1]:
        return None
    return key, j
