"""Feature annotation: turning SAE latents into features a biologist can name and check.

For each feature (:func:`annotate_features` runs the steps and returns one table row per feature):

1. Activation statistics: share of cells where it fires, mean and max activation, top cells.
2. Cell-type specificity: its "home" cell type (largest mean activation) and the share of its
   activation mass there.
3. Donor-level association with the label, in the home cell type: mean activation per donor
   (pseudobulk; donors with >= 5 cells of that type), Welch t-test case vs control donors,
   Benjamini-Hochberg q over features.
4. Confound scores, in the home cell type: partial R² of the label, the batch and each QC
   covariate (mitochondrial fraction, library size) in a linear model of the activation on all of
   them (R²_full - R²_without_term); ``confounded_by`` names a covariate whose partial R²
   exceeds the label's (and 0.02).
5. Gene signature: gradient x (input - reference) of the feature's pre-activation with respect
   to each gene's expression, averaged over its top-activating cells, where the reference is
   the mean expression of the home cell type's cells in which the feature is silent — the genes
   that drive the feature through the model, relative to its cell type (plain gradient x input
   would rank housekeeping genes first because they are highest everywhere); and the expression
   correlation of each gene with the activation across cells of the home cell type.
6. Enrichment of the top-20 signature genes in the bundled gene sets (hypergeometric test
   against the model's gene panel, BH over sets).
7. An auto-label built only from the above, e.g. ``Microglia · Disease-associated microglia
   (TREM2, APOE, TYROBP) · up in AD`` or ``artifact · batch-explained (FOS, JUN, EGR1)``.
"""

from __future__ import annotations

import logging
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch
from scipy import stats

from discovery.io import bundled
from discovery.io.contract import Keys, case_mask, get_keys
from discovery.io.layout import feature_id
from discovery.tl.classifier import encode
from discovery.tl.stats import bh_fdr, donor_test, r_squared
from models.sae import SparseAutoencoder

log = logging.getLogger(__name__)

__all__ = [
    "annotate_features",
    "donor_means",
    "confound_scores",
    "donor_association",
    "enrichment",
    "gene_signature",
]

MIN_CELLS_PER_DONOR = 5
SIGNATURE_TOP = 20
CONFOUND_MIN_R2 = 0.02


# --------------------------------------------------------------------------- 1-2 statistics
def _home_cell_types(acts: np.ndarray, cell_types: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cts = np.unique(cell_types)
    means = np.stack([acts[cell_types == c].mean(0) for c in cts])  # (types, features)
    home = cts[means.argmax(0)]
    share = means.max(0) / np.clip(means.sum(0), 1e-12, None)
    return home, share


# ------------------------------------------------------------------------------ 3 donors
def donor_association(
    adata: ad.AnnData, acts: np.ndarray, home: np.ndarray, *, keys: Keys | None = None
) -> pd.DataFrame:
    """Pseudobulk (mean activation per donor in the feature's home cell type) case vs control.

    Reads the label, donor and cell-type columns. Writes nothing. Returns effect (case - control
    mean), t, p, q (BH over features), n donors per class.
    """
    keys = keys or get_keys(adata)
    donors = adata.obs[keys.donor_key].astype(str).to_numpy()
    ct = adata.obs[keys.cell_type_key].astype(str).to_numpy()
    is_case = case_mask(adata, keys)
    rows = []
    for f in range(acts.shape[1]):
        m = ct == home[f]
        df = pd.DataFrame({"d": donors[m], "a": acts[m, f], "y": is_case[m]})
        g = df.groupby("d").agg(a=("a", "mean"), y=("y", "first"), n=("a", "size"))
        g = g[g["n"] >= MIN_CELLS_PER_DONOR]
        res = donor_test(g["a"].to_numpy(), g["y"].to_numpy())
        rows.append({"effect": float(res.effect[0]), "t": float(res.t[0]), "p": float(res.p[0]),
                     "n_case_donors": res.n_case, "n_control_donors": res.n_control})
    out = pd.DataFrame(rows)
    out["q"] = bh_fdr(out["p"].to_numpy())
    return out


# ------------------------------------------------------------------------------ 4 confounds
def confound_scores(
    adata: ad.AnnData,
    acts: np.ndarray,
    home: np.ndarray,
    *,
    keys: Keys | None = None,
    covariates: tuple[str, ...] = ("pct_counts_mt", "total_counts"),
) -> pd.DataFrame:
    """Partial R² of label, batch and QC covariates for each feature within its home cell type.

    Reads the label, cell-type and batch columns and ``obs[covariates]``. Writes nothing.
    """
    keys = keys or get_keys(adata)
    ct = adata.obs[keys.cell_type_key].astype(str).to_numpy()
    is_case = case_mask(adata, keys).astype(float)
    terms: dict[str, np.ndarray] = {"label": is_case[:, None]}
    if keys.batch_key:
        dummies = pd.get_dummies(adata.obs[keys.batch_key].astype(str), drop_first=True)
        if dummies.shape[1]:
            terms["batch"] = dummies.to_numpy(float)
    for c in covariates:
        if c in adata.obs:
            v = adata.obs[c].to_numpy(float)
            terms[c] = np.log1p(v)[:, None] if c == "total_counts" else v[:, None]
    rows = []
    for f in range(acts.shape[1]):
        m = ct == home[f]
        y = acts[m, f].astype(float)
        row: dict[str, Any] = {}
        if y.std() == 0:
            rows.append({f"r2_{t}": 0.0 for t in terms} | {"confounded_by": None,
                                                           "confound_strength": 0.0})
            continue
        X = {t: v[m] for t, v in terms.items()}
        full = r_squared(y, np.column_stack(list(X.values())))
        for t in terms:
            rest = [v for u, v in X.items() if u != t]
            row[f"r2_{t}"] = max(0.0, full - r_squared(y, np.column_stack(rest) if rest else np.empty(0)))
        label_r2 = row["r2_label"]
        worst = max((t for t in terms if t != "label"), key=lambda t: row[f"r2_{t}"], default=None)
        conf = (worst is not None and row[f"r2_{worst}"] > label_r2
                and row[f"r2_{worst}"] > CONFOUND_MIN_R2)
        row["confounded_by"] = worst if conf else None
        row["confound_strength"] = (row[f"r2_{worst}"] / (row[f"r2_{worst}"] + label_r2 + 1e-12)
                                    if worst else 0.0)
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ 5 genes
def gene_signature(
    adata: ad.AnnData,
    model: torch.nn.Module,
    sae: SparseAutoencoder,
    *,
    acts: np.ndarray,
    hook: str = "pooled",
    home: np.ndarray | None = None,
    n_cells: int = 64,
    expr: torch.Tensor | None = None,
) -> np.ndarray:
    """Gradient x (input - reference) attribution of each feature to each gene.

    For feature f: mean over its ``n_cells`` top-activating cells of
    (expr_g - ref_g) * d pre_f / d expr_g, the pre-activation taken through the model and the SAE
    encoder; ref = mean expression of the cells of f's home cell type where f is silent (all cells
    when ``home`` is None). Reads log-normalised ``X`` (unless ``expr``, its encoding over the
    model's genes, is given) and the cell-type column. Returns ``(features, genes)``.
    """
    genes = list(model.config.gene_names)
    x_all = encode(adata, genes) if expr is None else expr
    ct = adata.obs[get_keys(adata).cell_type_key].astype(str).to_numpy()
    out = np.zeros((acts.shape[1], len(genes)), dtype=np.float32)
    model.eval()
    for f in range(acts.shape[1]):
        top = np.argsort(-acts[:, f], kind="stable")[:n_cells]
        top = top[acts[top, f] > 0]
        if len(top) == 0:
            continue
        ref_mask = acts[:, f] <= 0
        if home is not None:
            ref_mask &= ct == home[f]
        if not ref_mask.any():
            ref_mask = acts[:, f] <= acts[:, f].max()
        ref = x_all[torch.from_numpy(np.flatnonzero(ref_mask))].mean(0)
        x = x_all[torch.from_numpy(top)].clone().requires_grad_(True)
        _, cache = model.run_with_cache(x, [hook], detach=False)
        a = cache[hook]
        a = a[:, 0] if a.ndim == 3 else a
        pre = sae.pre_acts(a)[:, f]
        (grad,) = torch.autograd.grad(pre.sum(), x)
        out[f] = (grad * (x - ref)).mean(0).detach().numpy()
    return out


def _expr_correlation(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    xc = x - x.mean(0)
    ac = a - a.mean()
    denom = np.sqrt((xc**2).sum(0) * (ac**2).sum()) + 1e-12
    return (xc * ac[:, None]).sum(0) / denom


# ------------------------------------------------------------------------------ 6 enrichment
def enrichment(genes: list[str], universe: list[str], *, tissue: str | None = None) -> pd.DataFrame:
    """Hypergeometric enrichment of ``genes`` in the bundled gene sets, within ``universe``.

    Returns one row per set with overlap, p, q (BH over sets), sorted by p.
    """
    uni = set(universe)
    hits = set(genes) & uni
    rows = []
    for gs in bundled.gene_sets(tissue=tissue):
        members = set(gs.genes) & uni
        if not members:
            continue
        overlap = hits & members
        # P(X >= k), X ~ Hypergeom(N=|universe|, K=|set|, n=|genes|)
        p = stats.hypergeom.sf(len(overlap) - 1, len(uni), len(members), len(hits))
        rows.append({"set": gs.name, "category": gs.category, "cell_type": gs.cell_type,
                     "direction": gs.direction, "overlap": sorted(overlap),
                     "n_overlap": len(overlap), "set_size": len(members), "p": float(p)})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["q"] = bh_fdr(df["p"].to_numpy())
    return df.sort_values(["p", "set"]).reset_index(drop=True)


# ------------------------------------------------------------------------------ all steps
def annotate_features(
    adata: ad.AnnData,
    model: torch.nn.Module,
    sae: SparseAutoencoder,
    *,
    acts: np.ndarray,
    hook: str = "pooled",
    stability: np.ndarray | None = None,
) -> pd.DataFrame:
    """Annotate every SAE feature; see the module docstring for the steps.

    Reads ``uns['discovery']['keys']``, the label / donor / cell-type / batch columns,
    ``obs['pct_counts_mt', 'total_counts']``, log-normalised ``X``. Writes nothing (the caller
    stores the table in the run directory). Returns one row per feature with JSON-safe values.
    """
    keys = get_keys(adata)
    ct = adata.obs[keys.cell_type_key].astype(str).to_numpy()
    genes = np.asarray(model.config.gene_names)
    home, share = _home_cell_types(acts, ct)
    donors = donor_association(adata, acts, home, keys=keys)
    conf = confound_scores(adata, acts, home, keys=keys)
    log.info("gene signatures for %d features", acts.shape[1])
    expr = encode(adata, list(genes))
    attrib = gene_signature(adata, model, sae, acts=acts, hook=hook, home=home, expr=expr)
    x = expr.numpy()
    in_type = {c: ct == c for c in np.unique(home)}
    x_by_type = {c: x[m] for c, m in in_type.items()}  # sliced once per cell type, not per feature
    rows = []
    is_case = case_mask(adata, keys)
    for f in range(acts.shape[1]):
        a = acts[:, f]
        active = a > 0
        order = np.argsort(-attrib[f], kind="stable")
        sig = genes[order[:SIGNATURE_TOP]].tolist()
        corr = (_expr_correlation(x_by_type[home[f]], a[in_type[home[f]]]) if active.any()
                else np.zeros(len(genes)))
        enr = enrichment(sig, list(genes)) if active.any() else pd.DataFrame()
        top_set = None
        if not enr.empty and enr.iloc[0]["q"] < 0.05:
            top_set = enr.iloc[0].to_dict()
        sig_corr = float(np.mean(corr[order[:10]])) if active.any() else 0.0
        d = donors.iloc[f]
        c = conf.iloc[f]
        row = {
            "feature": feature_id(hook, f),
            "index": f,
            "frac_active": float(active.mean()),
            "mean_activation": float(a.mean()),
            "max_activation": float(a.max()),
            "top_cells": adata.obs_names[np.argsort(-a, kind="stable")[:10]].tolist(),
            "home_cell_type": str(home[f]),
            "cell_type_share": float(share[f]),
            "frac_active_case": float(active[is_case].mean()),
            "frac_active_control": float(active[~is_case].mean()),
            "donor_effect": float(d["effect"]),
            "donor_t": float(d["t"]),
            "donor_p": float(d["p"]),
            "donor_q": float(d["q"]),
            "n_case_donors": int(d["n_case_donors"]),
            "n_control_donors": int(d["n_control_donors"]),
            **{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in c.items()},
            "signature": sig,
            "signature_weights": [float(attrib[f, i]) for i in order[:SIGNATURE_TOP]],
            "correlated_genes": genes[np.argsort(-corr, kind="stable")[:10]].tolist(),
            # +1: the feature fires where its signature genes are high; -1: where they are low
            "signature_sign": 1 if sig_corr >= 0 else -1,
            "enrichment": [] if enr.empty else enr.head(5).to_dict("records"),
            "top_set": None if top_set is None else top_set["set"],
            "top_set_category": None if top_set is None else top_set["category"],
            "stability": None if stability is None else float(stability[f]),
        }
        row["label"] = auto_label(row, case=str(keys.case))
        rows.append(row)
    return pd.DataFrame(rows)


def auto_label(row: dict[str, Any], *, case: str = "AD") -> str:
    """A short name from measured facts only: cell type, gene set, genes, direction or artifact."""
    genes = ", ".join(row["signature"][:3])
    if row["frac_active"] == 0:
        return "dead"
    conf = row.get("confounded_by")
    if conf or row.get("top_set_category") == "artifact":
        what = {"batch": "batch-explained", "pct_counts_mt": "mitochondrial-fraction-explained",
                "total_counts": "library-size-explained"}.get(conf or "", "artifact gene set")
        return f"artifact · {what} ({genes})"
    parts = [row["home_cell_type"]]
    low = "low " if row.get("signature_sign", 1) < 0 else ""
    if row.get("top_set"):
        parts.append(f"{low}{row['top_set']} ({genes})")
    else:
        parts.append(f"{low}program ({genes})")
    if row["donor_q"] is not None and row["donor_q"] < 0.05:
        parts.append(f"{'up' if row['donor_effect'] > 0 else 'down'} in {case}")
    return " · ".join(parts)


def donor_means(adata: ad.AnnData, values: np.ndarray, *, cell_type: str) -> pd.DataFrame:
    """Mean of ``values: (cells,)`` (e.g. one feature's activation) per donor within one cell
    type, with each donor's label: the donor-level view the app and report show of a feature.

    Reads the donor, label and cell-type columns. Writes nothing. Returns columns ``donor``,
    ``label``, ``value`` (one row per donor with cells of that type).
    """
    keys = get_keys(adata)
    m = (adata.obs[keys.cell_type_key].astype(str) == cell_type).to_numpy()
    d = pd.DataFrame({"donor": adata.obs[keys.donor_key].astype(str).to_numpy()[m],
                      "label": adata.obs[keys.label_key].astype(str).to_numpy()[m],
                      "value": np.asarray(values)[m]})
    return d.groupby(["donor", "label"], observed=True)["value"].mean().reset_index()
