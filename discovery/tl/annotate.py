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
from collections.abc import Iterable, Sequence
from typing import Any

import anndata as ad
import networkx as nx
import numpy as np
import pandas as pd
import torch
from scipy import stats

from discovery.io import bundled
from discovery.io.contract import Keys, case_mask, get_keys
from discovery.io.layout import feature_id
from discovery.tl.classifier import encode
from discovery.tl.cohorts import same_cell_type
from discovery.tl.graphs import logit_shares
from discovery.tl.stats import bh_fdr, donor_test, r_squared
from models.sae import SparseAutoencoder

log = logging.getLogger(__name__)

__all__ = [
    "annotate_features",
    "acting_cell_type",
    "feature_roles",
    "relabel_by_roles",
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
    features: np.ndarray | None = None,
) -> np.ndarray:
    """Gradient x (input - reference) attribution of each feature to each gene.

    For feature f: mean over its ``n_cells`` top-activating cells (of its ``home`` cell type
    when given and it fires there) of
    (expr_g - ref_g) * d pre_f / d expr_g, the pre-activation taken through the model and the SAE
    encoder; ref = mean expression of the cells of f's home cell type where f is silent (all cells
    when ``home`` is None). Reads log-normalised ``X`` (unless ``expr``, its encoding over the
    model's genes, is given) and the cell-type column. Returns ``(features, genes)`` (rows of
    features not in ``features``, when given, stay zero).
    """
    genes = list(model.config.gene_names)
    x_all = encode(adata, genes) if expr is None else expr
    ct = adata.obs[get_keys(adata).cell_type_key].astype(str).to_numpy()
    out = np.zeros((acts.shape[1], len(genes)), dtype=np.float32)
    model.eval()
    for f in (range(acts.shape[1]) if features is None else features):
        # its top-activating cells of the cell type it is described in (when it fires there)
        pool = np.arange(acts.shape[0])
        if home is not None and (acts[ct == home[f], f] > 0).any():
            pool = np.flatnonzero(ct == home[f])
        top = pool[np.argsort(-acts[pool, f], kind="stable")[:n_cells]]
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
def enrichment(genes: list[str], universe: list[str], *, tissue: str | None = None,
               gene_sets: Sequence[bundled.GeneSet] = ()) -> pd.DataFrame:
    """Hypergeometric enrichment of ``genes`` in the bundled gene sets and ``gene_sets`` (e.g.
    a user's ``.gmt`` collection, :func:`discovery.io.read_gmt`), within ``universe``.

    Returns one row per set with overlap, p, q, sorted by p; ``collection`` names where the set
    came from (``bundled`` or the user file's stem). q is BH within each collection, so a large
    user collection does not change the q-values of the bundled sets.
    """
    uni = set(universe)
    hits = set(genes) & uni
    rows = []
    for gs in [*bundled.gene_sets(tissue=tissue), *gene_sets]:
        members = set(gs.genes) & uni
        if not members:
            continue
        overlap = hits & members
        # P(X >= k), X ~ Hypergeom(N=|universe|, K=|set|, n=|genes|)
        p = stats.hypergeom.sf(len(overlap) - 1, len(uni), len(members), len(hits))
        rows.append({"set": gs.name, "collection": gs.extra.get("collection", "bundled"),
                     "category": gs.category, "cell_type": gs.cell_type,
                     "direction": gs.direction, "overlap": sorted(overlap),
                     "n_overlap": len(overlap), "set_size": len(members), "p": float(p)})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["q"] = df.groupby("collection")["p"].transform(lambda p: bh_fdr(p.to_numpy()))
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
    where: np.ndarray | None = None,
    features: np.ndarray | None = None,
    gene_sets: Sequence[bundled.GeneSet] = (),
    signature_key: str | None = None,
) -> pd.DataFrame:
    """Annotate every SAE feature; see the module docstring for the steps.

    ``where``: the cell type in which to describe each feature (donor association, confounds,
    signature reference, label); its home cell type when None. ``features``: annotate only these
    feature indices (all when None). ``gene_sets``: sets tested for enrichment beside the
    bundled ones (a user's ``.gmt`` collection). Reads ``uns['discovery']['keys']``, the label / donor /
    cell-type / batch columns, ``obs['pct_counts_mt', 'total_counts']``, log-normalised ``X``.
    Writes ``varm[signature_key]`` when given: (genes, features) float32, each annotated
    feature's gradient x input signature over every gene (0 for genes the model does not read;
    the columns of other features are kept, or 0 when new); the caller stores the table.
    Returns one row per feature with JSON-safe values.
    """
    keys = get_keys(adata)
    ct = adata.obs[keys.cell_type_key].astype(str).to_numpy()
    genes = np.asarray(model.config.gene_names)
    home, share = _home_cell_types(acts, ct)
    where = home if where is None else np.asarray(where)
    idx = np.arange(acts.shape[1]) if features is None else np.asarray(features, dtype=int)
    donors = donor_association(adata, acts[:, idx], where[idx], keys=keys)
    conf = confound_scores(adata, acts[:, idx], where[idx], keys=keys)
    log.info("gene signatures for %d features", len(idx))
    expr = encode(adata, list(genes))
    attrib = gene_signature(adata, model, sae, acts=acts, hook=hook, home=where, expr=expr,
                            features=idx)
    if signature_key is not None:  # only the annotated features' columns change
        shape = (adata.n_vars, acts.shape[1])
        old = adata.varm[signature_key] if signature_key in adata.varm else None
        loadings = (np.array(old, dtype=np.float32) if old is not None and old.shape == shape
                    else np.zeros(shape, dtype=np.float32))
        pos = adata.var_names.get_indexer(genes)
        loadings[:, idx] = 0.0
        loadings[np.ix_(pos[pos >= 0], idx)] = attrib[np.ix_(idx, np.flatnonzero(pos >= 0))].T
        adata.varm[signature_key] = loadings
    x = expr.numpy()
    in_type = {c: ct == c for c in np.unique(where[idx])}
    x_by_type = {c: x[m] for c, m in in_type.items()}  # sliced once per cell type, not per feature
    rows = []
    is_case = case_mask(adata, keys)
    for i, f in enumerate(idx):
        a = acts[:, f]
        active = a > 0
        order = np.argsort(-attrib[f], kind="stable")
        sig = genes[order[:SIGNATURE_TOP]].tolist()
        corr = (_expr_correlation(x_by_type[where[f]], a[in_type[where[f]]]) if active.any()
                else np.zeros(len(genes)))
        enr = (enrichment(sig, list(genes), gene_sets=gene_sets) if active.any()
               else pd.DataFrame())
        # the label, the hypotheses' grouping and the artifact caveat read the bundled (cited)
        # sets only; a user's collection is reported beside them and changes none of those
        user = enr[enr["collection"] != "bundled"] if not enr.empty else enr
        enr = enr[enr["collection"] == "bundled"] if not enr.empty else enr
        top_set = None
        if not enr.empty and enr.iloc[0]["q"] < 0.05:
            top_set = enr.iloc[0].to_dict()
        user_top = (user.iloc[0].to_dict() if not user.empty and user.iloc[0]["q"] < 0.05
                    else None)
        sig_corr = float(np.mean(corr[order[:10]])) if active.any() else 0.0
        d = donors.iloc[i]
        c = conf.iloc[i]
        row = {
            "feature": feature_id(hook, f),
            "index": int(f),
            "frac_active": float(active.mean()),
            "mean_activation": float(a.mean()),
            "max_activation": float(a.max()),
            "top_cells": adata.obs_names[np.argsort(-a, kind="stable")[:10]].tolist(),
            "home_cell_type": str(home[f]),
            "cell_type_share": float(share[f]),
            # the cell type the statistics and the label describe (see relabel_by_roles)
            "cell_type": str(where[f]),
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
            "signature_weights": [float(attrib[f, j]) for j in order[:SIGNATURE_TOP]],
            "correlated_genes": genes[np.argsort(-corr, kind="stable")[:10]].tolist(),
            # +1: the feature fires where its signature genes are high; -1: where they are low
            "signature_sign": 1 if sig_corr >= 0 else -1,
            "enrichment": [] if enr.empty else enr.head(5).to_dict("records"),
            "top_set": None if top_set is None else top_set["set"],
            "top_set_category": None if top_set is None else top_set["category"],
            "top_set_cell_type": None if top_set is None else top_set["cell_type"],
            "stability": None if stability is None else float(stability[f]),
            **({"user_enrichment": [] if user.empty else user.head(5).to_dict("records"),
                "user_top_set": None if user_top is None else user_top["set"],
                "user_top_set_collection": None if user_top is None
                else user_top["collection"]} if gene_sets else {}),
        }
        row["label"] = auto_label(row, case=str(keys.case))
        rows.append(row)
    return pd.DataFrame(rows)


def feature_roles(graphs: Iterable[nx.DiGraph]) -> dict[str, dict[str, float]]:
    """Where each feature acts: feature id -> {cell type: its share of the |attribution| into
    the case logit in that cell type's cohort graph(s)} (features with a direct edge to the
    output only; shares of several graphs of one cell type add up)."""
    roles: dict[str, dict[str, float]] = {}
    for g in graphs:
        ct = g.graph.get("cell_type")
        if ct is None:
            continue
        for u, (share, _) in logit_shares(g).items():
            if share > 0:
                by_ct = roles.setdefault(u, {})
                by_ct[str(ct)] = by_ct.get(str(ct), 0.0) + share
    return roles


def acting_cell_type(shares: dict[str, float]) -> str:
    """The cell type a feature carries the most attribution in (ties: the later name), from its
    :func:`feature_roles` entry."""
    return max(shares, key=lambda c: (shares[c], c))


def relabel_by_roles(
    adata: ad.AnnData,
    model: torch.nn.Module,
    sae: SparseAutoencoder,
    *,
    table: pd.DataFrame,
    roles: dict[str, dict[str, float]],
    acts: np.ndarray,
    hook: str = "pooled",
    gene_sets: Sequence[bundled.GeneSet] = (),
    signature_key: str | None = None,
) -> pd.DataFrame:
    """Describe every feature where it acts: a feature that carries attribution in some cell
    type's graph is annotated (donor association, confounds, signature, label) in the cell type
    where it carries the most; others keep their home cell type. Adds ``acts_in`` (the
    :func:`feature_roles` shares, largest first). Returns a new table; donor q-values are BH
    over all features again. ``signature_key``: the moved features' columns of that ``varm``
    entry are rewritten (see :func:`annotate_features`)."""
    out = table.copy().set_index("index")
    if "cell_type" not in out:
        out["cell_type"] = out["home_cell_type"]
    # where each feature is to be described: where it acts, else its home (a table relabelled
    # by earlier graphs goes back home for features that no longer act anywhere)
    target = pd.Series([acting_cell_type(roles[f]) if roles.get(f) else home
                        for f, home in zip(out["feature"], out["home_cell_type"])],
                       index=out.index)
    moved = out.index[target != out["cell_type"]].to_numpy(int)
    if len(moved):
        stability = out["stability"].reindex(range(acts.shape[1]))
        fresh = annotate_features(
            adata, model, sae, acts=acts, hook=hook,
            stability=None if stability.isna().all() else stability.to_numpy(float),
            where=target.reindex(range(acts.shape[1])).to_numpy(object),
            features=moved, gene_sets=gene_sets,
            signature_key=signature_key).set_index("index")
        for c in fresh.columns.difference(out.columns):
            out[c] = None
        out.loc[moved, fresh.columns] = fresh.loc[moved]
        out["donor_q"] = bh_fdr(out["donor_p"].to_numpy(float))
    out["acts_in"] = [dict(sorted(roles.get(f, {}).items(), key=lambda t: -t[1]))
                      for f in out["feature"]]
    out = out.reset_index()
    case = str(get_keys(adata).case)
    out["label"] = [auto_label(r, case=case) for r in out.to_dict("records")]
    return out


def auto_label(row: dict[str, Any], *, case: str = "AD") -> str:
    """A short name from measured facts only, about the cell type the row describes
    (``cell_type``: where the feature acts): cell type, gene set, genes, direction; ``artifact``
    only with evidence (batch or a QC covariate explains the activation better than the label
    there). Enrichment for an artifact gene set is named, not concluded from; a marker or
    disease set of another cell type reads "expresses <that cell type> genes in <this one>"."""
    genes = ", ".join(row["signature"][:3])
    if row["frac_active"] == 0:
        return "dead"
    where = row.get("cell_type") or row["home_cell_type"]
    conf = row.get("confounded_by")
    if conf:
        what = {"batch": "batch-explained", "pct_counts_mt": "mitochondrial-fraction-explained",
                "total_counts": "library-size-explained"}.get(conf, f"{conf}-explained")
        return f"artifact · {what} in {where} ({genes})"
    parts = [where]
    low = "low " if row.get("signature_sign", 1) < 0 else ""
    other = row.get("top_set_cell_type")
    if row.get("top_set") and other and not same_cell_type(other, where):
        parts.append(f"expresses {other} genes ({row['top_set']}: {genes}) in {where}: "
                     "possible doublets / ambient RNA")
    elif row.get("top_set_category") == "artifact":
        parts.append(f"{low}{row['top_set']} ({genes}; a technical gene set, not confirmed "
                     "as technical here)")
    elif row.get("top_set"):
        parts.append(f"{low}{row['top_set']} ({genes})")
    else:
        parts.append(f"{low}program ({genes})")
    q = row.get("donor_q")
    if q is not None and np.isfinite(q) and q < 0.05:
        parts.append(f"{'up' if row['donor_effect'] > 0 else 'down'} in {case}")
    return " · ".join(parts)


def donor_means(adata: ad.AnnData, values: np.ndarray, *, cell_type: str) -> pd.DataFrame:
    """Mean of ``values: (cells,)`` (e.g. one feature's activation) per donor within one cell
    type, with each donor's label: the donor-level view the app and report show of a feature.

    Reads the donor, label and cell-type columns, and the batch column and ``obs['split']``
    where present. Writes nothing. Returns columns ``donor``, ``label``, ``value`` (one row per
    donor with cells of that type), plus ``batch`` and ``split`` (each donor's own) when the
    data hold them.
    """
    keys = get_keys(adata)
    m = (adata.obs[keys.cell_type_key].astype(str) == cell_type).to_numpy()
    d = pd.DataFrame({"donor": adata.obs[keys.donor_key].astype(str).to_numpy()[m],
                      "label": adata.obs[keys.label_key].astype(str).to_numpy()[m],
                      "value": np.asarray(values)[m]})
    extra = {"batch": keys.batch_key, "split": "split"}
    for name, col in extra.items():
        if col and col in adata.obs:
            d[name] = adata.obs[col].astype("string").to_numpy()[m]  # a gap stays missing
    out = d.groupby(["donor", "label"], observed=True)["value"].mean().reset_index()
    for name in (n for n in extra if n in d):
        # a donor's own value: its most common one (a donor split over batches is rare)
        most = d.dropna(subset=[name]).groupby("donor")[name].agg(lambda v: v.mode().iat[0])
        out[name] = out["donor"].map(most)
    return out
