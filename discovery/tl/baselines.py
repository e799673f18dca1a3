"""What a computational biologist would run anyway: the baselines every ranking is compared with.

Every method here, and every method plugged into the benchmark later, has one interface: it takes
a preprocessed AnnData and returns a :data:`RANKING_COLUMNS` table of genes ranked per
``(cell_type, direction)``, rank 1 being the strongest candidate disease gene in that direction.

- ``wilcoxon``: scanpy's Wilcoxon rank-sum test, case vs control cells, per cell type (cell
  level: its p-values treat cells as independent, so they are not donor-level evidence).
- ``pseudobulk``: counts summed per donor x cell type, log2 CPM, Welch t-test between case and
  control donors, Benjamini-Hochberg q-values (donor level).
- ``logreg_l1``: L1-penalised logistic regression of the label on standardised log expression,
  per cell type, ranked by coefficient.
- ``pydeseq2`` (optional extra): PyDESeq2 on the same donor pseudobulk counts, with the batch
  and donor-level covariates in the design when estimable (``~ batch + covariates +
  condition``), Wald test of case vs control, DESeq2's BH q-values.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from discovery.io.contract import (
    MIN_CELLS_PER_DONOR,
    InputError,
    Keys,
    case_mask,
    counts_matrix,
    get_keys,
)
from discovery.tl.stats import aggregate_by, bh_fdr, welch_t

log = logging.getLogger(__name__)

__all__ = ["BASELINES", "RANKING_COLUMNS", "rank_genes", "ranking_from_scores", "to_rank_genes_groups"]

RANKING_COLUMNS = ["method", "cell_type", "direction", "rank", "gene", "score", "pval", "qval"]

#: minimum cells of a donor in a cell type for its pseudobulk to count
MIN_CELLS_PSEUDOBULK = MIN_CELLS_PER_DONOR


def ranking_from_scores(
    genes: np.ndarray,
    score: np.ndarray,
    *,
    method: str,
    cell_type: str,
    pval: np.ndarray | None = None,
    qval: np.ndarray | None = None,
) -> pd.DataFrame:
    """Turn signed scores (positive = higher in cases) into up and down rankings.

    Ties are broken by gene order (stable), so rankings are deterministic.
    """
    score = np.asarray(score, float)
    pval = np.full(len(genes), np.nan) if pval is None else np.asarray(pval, float)
    qval = np.full(len(genes), np.nan) if qval is None else np.asarray(qval, float)
    frames = []
    for direction, sign in (("up", 1.0), ("down", -1.0)):
        s = np.nan_to_num(sign * score, nan=-np.inf)
        order = np.argsort(-s, kind="mergesort")
        frames.append(pd.DataFrame({
            "method": method,
            "cell_type": cell_type,
            "direction": direction,
            "rank": np.arange(1, len(genes) + 1),
            "gene": np.asarray(genes)[order],
            "score": sign * score[order],
            "pval": pval[order],
            "qval": qval[order],
        }))
    return pd.concat(frames, ignore_index=True)


def _stack(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The rankings of every cell type; an empty ranking (with its columns) when no cell type
    had enough cells and donors of both classes to be ranked."""
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=float if c in ("score", "pval", "qval")
                                          else int if c == "rank" else object)
                             for c in RANKING_COLUMNS})
    return pd.concat(frames, ignore_index=True)


def _cell_types(adata: ad.AnnData, keys: Keys, min_cells: int = 20) -> list[str]:
    counts = adata.obs[keys.cell_type_key].astype(str).value_counts()
    return sorted(counts.index[counts >= min_cells])


def _wilcoxon(adata: ad.AnnData, keys: Keys, *, seed: int = 0) -> pd.DataFrame:
    frames = []
    is_case = case_mask(adata, keys)
    ct_col = adata.obs[keys.cell_type_key].astype(str).to_numpy()
    for ct in _cell_types(adata, keys):
        sub = adata[ct_col == ct]
        grp = np.where(is_case[ct_col == ct], "case", "control")
        if len(set(grp)) < 2:
            continue
        tmp = ad.AnnData(X=sub.X, obs=pd.DataFrame({"g": pd.Categorical(grp)}, index=sub.obs_names),
                         var=pd.DataFrame(index=sub.var_names))
        tmp.uns["log1p"] = {"base": None}
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # genes with no counts: NaN score
            sc.tl.rank_genes_groups(tmp, "g", groups=["case"], reference="control",
                                    method="wilcoxon", tie_correct=True)
        res = sc.get.rank_genes_groups_df(tmp, group="case").set_index("names")
        res = res.loc[sub.var_names]
        frames.append(ranking_from_scores(sub.var_names.to_numpy(), res["scores"].to_numpy(),
                                          method="wilcoxon", cell_type=ct,
                                          pval=res["pvals"].to_numpy(),
                                          qval=res["pvals_adj"].to_numpy()))
    return _stack(frames)


def pseudobulk_matrix(
    adata: ad.AnnData, keys: Keys, cell_type: str, *, min_cells: int = MIN_CELLS_PSEUDOBULK
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Summed raw counts per donor in one cell type.

    Returns ``(donors, counts: (donors, genes), donor_is_case)`` over donors with at least
    ``min_cells`` cells of that type.
    """
    mask = (adata.obs[keys.cell_type_key].astype(str) == cell_type).to_numpy()
    donors = adata.obs[keys.donor_key].astype(str).to_numpy()[mask]
    counts = counts_matrix(adata)[mask]
    names, summed, n = aggregate_by(counts, donors)
    is_case = pd.Series(case_mask(adata, keys)[mask]).groupby(donors).first()
    keep = n >= min_cells
    return names[keep], summed[keep], is_case.loc[names[keep]].to_numpy()


def _expressed(summed: np.ndarray, is_case: np.ndarray) -> np.ndarray:
    """The genes a pseudobulk test looks at (edgeR's filterByExpr, simplified): at least 10
    counts' worth of CPM (at the median library size) in as many donors as the smaller group."""
    lib = summed.sum(1, keepdims=True)
    cpm = summed / lib * 1e6
    min_group = int(min(is_case.sum(), (~is_case).sum()))
    return (cpm >= 10.0 / np.median(lib) * 1e6).sum(0) >= min_group


def _pseudobulk(adata: ad.AnnData, keys: Keys, *, seed: int = 0) -> pd.DataFrame:
    frames = []
    genes = adata.var_names.to_numpy()
    for ct in _cell_types(adata, keys):
        _, summed, is_case = pseudobulk_matrix(adata, keys, ct)
        if is_case.sum() < 2 or (~is_case).sum() < 2:
            log.warning("pseudobulk: %s has fewer than 2 donors per class; skipped", ct)
            continue
        cpm = summed / summed.sum(1, keepdims=True) * 1e6
        logcpm = np.log2(cpm + 1.0)
        tested = _expressed(summed, is_case)
        res = welch_t(logcpm[is_case][:, tested], logcpm[~is_case][:, tested])
        t = np.zeros(len(genes))
        p = np.ones(len(genes))
        q = np.full(len(genes), np.nan)
        t[tested] = res.t
        p[tested] = res.p
        q[tested] = bh_fdr(res.p)
        signed = np.sign(t) * -np.log10(np.clip(p, 1e-300, 1.0))
        frames.append(ranking_from_scores(genes, signed, method="pseudobulk", cell_type=ct,
                                          pval=p, qval=q))
    return _stack(frames)


def _logreg_l1(adata: ad.AnnData, keys: Keys, *, seed: int = 0, C: float = 0.05) -> pd.DataFrame:
    frames = []
    is_case = case_mask(adata, keys)
    ct_col = adata.obs[keys.cell_type_key].astype(str).to_numpy()
    genes = adata.var_names.to_numpy()
    for ct in _cell_types(adata, keys):
        m = ct_col == ct
        y = is_case[m]
        if y.all() or not y.any():
            continue
        X = adata.X[m]
        X = X.toarray() if sp.issparse(X) else np.asarray(X, float)
        sd = X.std(0)
        Xs = (X - X.mean(0)) / np.where(sd > 0, sd, 1.0)
        model = LogisticRegression(l1_ratio=1.0, C=C, solver="liblinear",
                                   class_weight="balanced", random_state=seed, max_iter=200)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            model.fit(Xs, y)
        frames.append(ranking_from_scores(genes, model.coef_[0], method="logreg_l1",
                                          cell_type=ct))
    return _stack(frames)


def _donor_design(adata: ad.AnnData, keys: Keys, donors: np.ndarray,
                  is_case: np.ndarray) -> tuple[pd.DataFrame, list[str]]:
    """One row per donor: ``condition`` (case / control) and every batch / covariate column that
    is constant within donors and leaves the design full rank (a batch that holds all cases
    would make the condition inestimable: dropped, with a warning)."""
    meta = pd.DataFrame({"condition": np.where(is_case, "case", "control")},
                        index=pd.Index(donors, name="donor"))
    terms: list[str] = []
    obs = adata.obs.assign(_donor=adata.obs[keys.donor_key].astype(str))
    for i, col in enumerate([keys.batch_key, *keys.covariate_keys]):
        if col is None or col not in obs:
            continue
        per = obs.groupby("_donor", observed=True)[col]
        if (per.nunique() > 1).any():
            log.info("pydeseq2: %r varies within donors; not a donor-level design term", col)
            continue
        values = per.first().reindex(donors)
        if values.isna().any():
            log.warning("pydeseq2: %r is missing for %d donor(s); left out of the design", col,
                        int(values.isna().sum()))
            continue
        # the batch is a factor whatever its codes look like; a covariate with > 2 numeric
        # values (age, PMI) enters as a trend
        numeric = (i > 0 and pd.api.types.is_numeric_dtype(values)
                   and values.nunique() > 2)
        name = f"term{i}"
        meta[name] = values.astype(float) if numeric else values.astype(str)
        if not numeric and meta[name].nunique() < 2:
            meta = meta.drop(columns=name)
            continue
        design = pd.get_dummies(meta[["condition", *terms, name]], drop_first=True, dtype=float)
        design.insert(0, "intercept", 1.0)
        if np.linalg.matrix_rank(design.to_numpy()) < design.shape[1] \
                or design.shape[1] >= len(meta):
            log.warning("pydeseq2: %r is confounded with the condition (or leaves no residual "
                        "degrees of freedom) among these donors; left out of the design", col)
            meta = meta.drop(columns=name)
            continue
        terms.append(name)
    return meta, terms


def _pydeseq2(adata: ad.AnnData, keys: Keys, *, seed: int = 0) -> pd.DataFrame:
    try:
        from pydeseq2.dds import DeseqDataSet
        from pydeseq2.default_inference import DefaultInference
        from pydeseq2.ds import DeseqStats
    except ImportError as err:
        msg = ("the pydeseq2 baseline needs PyDESeq2, an optional extra: "
               'pip install "discovery[deseq]" (or leave pydeseq2 out of `baselines`)')
        raise InputError(msg) from err
    frames = []
    genes = adata.var_names.to_numpy()
    inference = DefaultInference(n_cpus=1)
    for ct in _cell_types(adata, keys):
        donors, summed, is_case = pseudobulk_matrix(adata, keys, ct)
        if is_case.sum() < 2 or (~is_case).sum() < 2:
            log.warning("pydeseq2: %s has fewer than 2 donors per class; skipped", ct)
            continue
        meta, terms = _donor_design(adata, keys, donors, is_case)
        tested = _expressed(summed, is_case)
        counts = pd.DataFrame(np.round(summed[:, tested]).astype(np.int64), index=meta.index,
                              columns=genes[tested])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dds = DeseqDataSet(counts=counts, metadata=meta, inference=inference, quiet=True,
                               design="~" + " + ".join([*terms, "condition"]))
            dds.deseq2()
            ds = DeseqStats(dds, contrast=["condition", "case", "control"],
                            inference=inference, quiet=True)
            ds.summary()
        res = ds.results_df.reindex(genes[tested])
        stat = np.zeros(len(genes))
        p = np.ones(len(genes))
        q = np.full(len(genes), np.nan)
        ok = np.flatnonzero(tested)
        stat[ok] = np.nan_to_num(res["stat"].to_numpy(float))
        p[ok] = np.nan_to_num(res["pvalue"].to_numpy(float), nan=1.0)
        q[ok] = res["padj"].to_numpy(float)
        signed = np.sign(stat) * -np.log10(np.clip(p, 1e-300, 1.0))
        frames.append(ranking_from_scores(genes, signed, method="pydeseq2", cell_type=ct,
                                          pval=p, qval=q))
        log.info("pydeseq2: %s, %d donors, design ~%s", ct, len(donors),
                 " + ".join([*terms, "condition"]))
    return _stack(frames)


#: name -> function(adata, keys, *, seed) returning a ranking table
BASELINES: dict[str, Callable[..., pd.DataFrame]] = {
    "wilcoxon": _wilcoxon,
    "pseudobulk": _pseudobulk,
    "logreg_l1": _logreg_l1,
    # optional (pip install "discovery[deseq]"): DESeq2's negative-binomial GLM on donor
    # pseudobulk (Love et al. 2014, Genome Biol 15:550; PyDESeq2: Muzellec et al. 2023,
    # Bioinformatics 39:btad547) with batch and donor-level covariates in the design
    "pydeseq2": _pydeseq2,
}


def rank_genes(adata: ad.AnnData, method: str, *, seed: int = 0) -> pd.DataFrame:
    """Rank genes per (cell type, direction) with a baseline method.

    Reads ``uns['discovery']['keys']`` (run :func:`discovery.pp.preprocess` first),
    log-normalised ``X``, ``layers['counts']`` and the label / donor / cell-type obs columns.
    Writes nothing. Returns a table with :data:`RANKING_COLUMNS`.
    """
    if method not in BASELINES:
        msg = f"unknown baseline {method!r}; choose one of {', '.join(BASELINES)}"
        raise InputError(msg)
    keys = get_keys(adata)
    if method in ("pseudobulk", "pydeseq2") and "counts" not in adata.layers:
        msg = ("the pseudobulk baseline sums raw counts per donor, and this data has none "
               "(log-normalised input); leave it out of `baselines` in the config")
        raise InputError(msg)
    log.info("baseline %s on %d cells", method, adata.n_obs)
    return BASELINES[method](adata, keys, seed=seed)[RANKING_COLUMNS]


def to_rank_genes_groups(adata: ad.AnnData, rankings: pd.DataFrame, *,
                         key_added: str | None = None) -> str:
    """Store one baseline's ranking in scanpy's ``rank_genes_groups`` structure.

    ``rankings``: one method's :data:`RANKING_COLUMNS` table (from :func:`rank_genes`). The
    groups are the cell types; each group's genes are ordered by its ``up`` ranking (case vs
    control within that cell type, most case-high first, as scanpy orders them).
    ``logfoldchanges`` are scanpy's: log2 of expm1(mean log-normalised ``X``) in case cells over
    control cells of the cell type (``uns['log1p']['base']`` respected). Reads the label and
    cell-type columns and ``X``. Writes ``uns[key_added]`` (default
    ``rank_genes_groups_<method>``), so ``sc.get.rank_genes_groups_df(adata, group, key=...)``
    and ``sc.pl.rank_genes_groups_dotplot(adata, key=..., groupby=<label key>)`` read it.
    Returns the key.
    """
    methods = rankings["method"].unique().tolist() if len(rankings) else []
    if len(methods) != 1:
        msg = f"pass one method's ranking (found methods {methods})"
        raise InputError(msg)
    method = str(methods[0])
    key = key_added or f"rank_genes_groups_{method}"
    keys = get_keys(adata)
    up = rankings[rankings["direction"] == "up"].astype({"cell_type": str, "gene": str})
    up = up.sort_values(["cell_type", "rank"])
    groups = sorted(up["cell_type"].astype(str).unique())
    n = int(up.groupby("cell_type").size().min()) if groups else 0
    ct_col = adata.obs[keys.cell_type_key].astype(str).to_numpy()
    is_case = case_mask(adata, keys)
    base = (adata.uns.get("log1p") or {}).get("base")
    scale = 1.0 if base is None else float(np.log(base))
    columns: dict[str, list[np.ndarray]] = {c: [] for c in
                                            ("names", "scores", "pvals", "pvals_adj",
                                             "logfoldchanges")}

    def mean_of(mask: np.ndarray) -> np.ndarray:  # sparse-aware: no densified cell type
        if not mask.any():
            return np.zeros(adata.n_vars)
        return np.asarray(adata.X[mask].mean(0), dtype=float).ravel()

    for ct in groups:
        r = up[up["cell_type"] == ct].head(n)
        idx = adata.var_names.get_indexer(r["gene"].astype(str))
        in_ct = ct_col == ct
        # scanpy's fold change: expm1 of the mean log expression of each group
        lfc = np.log2((np.expm1(mean_of(in_ct & is_case) * scale) + 1e-9)
                      / (np.expm1(mean_of(in_ct & ~is_case) * scale) + 1e-9))
        lfc = np.where(idx >= 0, lfc[np.clip(idx, 0, None)], np.nan)  # a gene not in var: NaN
        columns["names"].append(r["gene"].astype(str).to_numpy(dtype=object))
        columns["scores"].append(r["score"].to_numpy(np.float32))
        columns["pvals"].append(r["pval"].to_numpy(np.float64))
        columns["pvals_adj"].append(r["qval"].to_numpy(np.float64))
        columns["logfoldchanges"].append(lfc.astype(np.float32))
    # scanpy reads names and scores only for its 'logreg' method (a coefficient, no p-value)
    coefficient = bool(rankings["pval"].isna().all())
    adata.uns[key] = {
        "params": {"groupby": keys.cell_type_key, "reference": ", ".join(keys.controls),
                   "method": "logreg" if coefficient else method, "use_raw": False,
                   "corr_method": "benjamini-hochberg", "discovery_method": method,
                   "contrast": f"{keys.case} vs {', '.join(keys.controls) or 'rest'} within "
                               f"each {keys.cell_type_key}"},
        **{c: np.rec.fromarrays(v, names=groups) for c, v in columns.items()
           if not (coefficient and c in ("pvals", "pvals_adj", "logfoldchanges"))},
    }
    return key
