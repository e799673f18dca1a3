"""Donor-level gene tests that account for the technical covariates: what discovery sees without
the model, and the evidence every gene claim rests on.

Per cell type, counts are summed per donor (donors with at least ``min_cells`` cells of the
type), turned into log2 CPM, and each expressed gene is fitted with ordinary least squares

    logCPM ~ 1 + label + batch + mitochondrial fraction + log library size

(donor level: the batch of the donor, the mean mitochondrial fraction and the log mean library
size of its cells of that type). The label's coefficient is the case effect *beyond* the
technical axes; p-values are two-sided moderated t-tests (the gene-wise residual variances are
shrunk towards their common distribution, limma's empirical Bayes, because a cell type holds many
genes and few donors), q-values Benjamini-Hochberg within the cell type.

A donor mean misses a disease state that only some of a donor's cells enter (a rare state, or a
state whose genes rise in some cells while the rest barely move). So each gene also gets two
donor-level *tail* tests: per donor, the share of its cells of the type above the cell type's
pooled 90th percentile of the gene (log-normalised counts; above zero for a gene detected in
fewer than 10% of cells), and the share at or below the pooled 10th percentile; each share is
arcsine-square-root transformed and tested like the mean, with the same covariates. The evidence
of a change in a direction, ``p_up`` / ``p_down``, combines the one-sided mean test with the
tail test of that direction by the Cauchy combination (valid for dependent tests), q-values
Benjamini-Hochberg within the cell type and direction. Donors are still the unit: cells only
estimate each donor's share. A covariate that would alias the label (a batch that holds every case) or leave fewer than
3 residual degrees of freedom is dropped, and the table says which covariates were used.

Each gene also gets the partial R² of the technical covariates (given the label) and of the
label (given them): a gene is ``technical`` when the covariates explain more of its donor-level
variance than the label does and more than 10% of it. That is evidence that the gene's signal is
an artifact, not a gene-set membership.
"""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd

from discovery.io.contract import Keys, case_mask, counts_matrix, get_keys
from discovery.tl.stats import aggregate_by, bh_fdr, cauchy_combination, label_test

log = logging.getLogger(__name__)

__all__ = ["DONOR_TEST_COLUMNS", "MIN_TECHNICAL_R2", "donor_gene_tests", "usable_covariates"]

DONOR_TEST_COLUMNS = ["cell_type", "gene", "effect", "t", "p", "q", "t_tail_up", "t_tail_down",
                      "p_up", "q_up", "p_down", "q_down", "r2_technical", "r2_label",
                      "technical", "n_case", "n_control", "covariates"]
#: quantiles of a gene's pooled expression in a cell type that bound its upper and lower tails
TAIL_QUANTILES = (0.9, 0.1)
#: genes per block when the tails are computed (bounds the dense working memory)
_BLOCK = 256
#: a gene is technical when its covariates' partial R² beats the label's and exceeds this
MIN_TECHNICAL_R2 = 0.1
#: fewest residual degrees of freedom the adjusted model keeps (covariates are dropped before)
MIN_DF = 3


def _covariates(obs: pd.DataFrame, donors: np.ndarray, keys: Keys, names: np.ndarray,
                lib: np.ndarray) -> dict[str, np.ndarray]:
    """Donor-level technical covariates in one cell type, in the order they are dropped last."""
    out: dict[str, np.ndarray] = {}
    if keys.batch_key and keys.batch_key in obs:
        b = obs[keys.batch_key].astype(str).groupby(donors).agg(lambda s: s.mode().iloc[0])
        dummies = pd.get_dummies(b.reindex(names), drop_first=True).to_numpy(float)
        if dummies.shape[1]:
            out["batch"] = dummies
    if "pct_counts_mt" in obs:
        mt = obs["pct_counts_mt"].astype(float).groupby(donors).mean().reindex(names)
        out["pct_counts_mt"] = np.log1p(mt.to_numpy(float))[:, None]
    out["library_size"] = np.log(np.maximum(lib, 1.0))[:, None]
    return out


def usable_covariates(covs: dict[str, np.ndarray], label: np.ndarray) -> list[str]:
    """Covariates kept: each must vary, not alias the label, and leave MIN_DF residual df."""
    kept: list[str] = []
    n = len(label)
    for name, x in covs.items():
        trial = np.column_stack([np.ones(n), label, *[covs[k] for k in kept], x])
        if np.allclose(x.std(0), 0) or np.linalg.matrix_rank(trial) < trial.shape[1]:
            continue
        # a covariate that nearly reproduces the label leaves the label untestable
        fit = np.linalg.lstsq(np.column_stack([np.ones(n), x]), label, rcond=None)[0]
        resid = label - np.column_stack([np.ones(n), x]) @ fit
        if resid.var() < 0.05 * label.var():
            continue
        if n - trial.shape[1] < MIN_DF:
            continue
        kept.append(name)
    return kept


def tail_shares(counts: object, donors: np.ndarray, names: np.ndarray,
                *, quantiles: tuple[float, float] = TAIL_QUANTILES) -> tuple[np.ndarray, np.ndarray]:
    """Per donor (rows, in ``names`` order) and gene, the share of cells in the pooled upper tail
    (above the ``quantiles[0]`` quantile, or above zero where that quantile is zero) and in the
    lower tail (at or below the ``quantiles[1]`` quantile) of log1p(counts per 10k).

    ``counts: (cells, genes)`` raw counts (sparse or dense) of one cell type, ``donors: (cells,)``.
    """
    import scipy.sparse as sp

    x = sp.csr_matrix(counts, dtype=np.float32)
    lib = np.asarray(x.sum(1)).ravel()
    x = sp.diags((1e4 / np.maximum(lib, 1.0)).astype(np.float32)) @ x
    x.data = np.log1p(x.data)
    x = x.tocsc()
    index = pd.Index(names)
    rows = index.get_indexer(np.asarray(donors))
    cells = np.flatnonzero(rows >= 0)
    n = np.bincount(rows[cells], minlength=len(names)).astype(float)
    # donors x cells indicator, each row averaging that donor's cells
    avg = sp.csr_matrix((1.0 / n[rows[cells]], (rows[cells], np.arange(len(cells)))),
                        shape=(len(names), len(cells)))
    up = np.zeros((len(names), x.shape[1]))
    low = np.zeros_like(up)
    for j in range(0, x.shape[1], _BLOCK):
        block = x[cells, j:j + _BLOCK].toarray()
        hi, lo = np.quantile(block, quantiles, axis=0)
        up[:, j:j + _BLOCK] = avg @ (block > hi).astype(np.float32)
        low[:, j:j + _BLOCK] = avg @ (block <= lo).astype(np.float32)
    # float32 sums of 1/n can land a hair above 1 (arcsin(sqrt(.)) of it is NaN)
    return np.clip(up, 0.0, 1.0), np.clip(low, 0.0, 1.0)


def donor_gene_tests(adata: ad.AnnData, *, min_cells: int = 5,
                     min_donors_per_class: int = 2) -> pd.DataFrame:
    """Technical-covariate-adjusted donor-level tests of every expressed gene in every cell type.

    Reads ``uns['discovery']['keys']``, raw counts (``layers['counts']``), ``obs`` QC columns.
    Writes nothing. Returns a :data:`DONOR_TEST_COLUMNS` table (empty when the data has no
    donors or no counts).
    """
    keys = get_keys(adata)
    if not keys.donor_key or "counts" not in adata.layers:
        return pd.DataFrame(columns=DONOR_TEST_COLUMNS)
    genes = adata.var_names.to_numpy()
    ct_col = (adata.obs[keys.cell_type_key].astype(str).to_numpy() if keys.cell_type_key
              else np.full(adata.n_obs, "all cells"))
    donor_col = adata.obs[keys.donor_key].astype(str).to_numpy()
    is_case = pd.Series(case_mask(adata, keys)).groupby(donor_col).first()
    counts = counts_matrix(adata)
    frames = []
    for ct in sorted(set(ct_col)):
        m = ct_col == ct
        counts_ct = counts[m]
        names, summed, n = aggregate_by(counts_ct, donor_col[m])
        keep = n >= min_cells
        names, summed = names[keep], np.asarray(summed[keep], float)
        label = is_case.reindex(names).to_numpy(bool)
        if label.sum() < min_donors_per_class or (~label).sum() < min_donors_per_class:
            log.info("donor tests: %s has fewer than %d donors per class; skipped", ct,
                     min_donors_per_class)
            continue
        lib = summed.sum(1)
        cpm = summed / np.maximum(lib, 1.0)[:, None] * 1e6
        tested = (cpm >= 10.0 / np.median(lib) * 1e6).sum(0) >= min(label.sum(), (~label).sum())
        if not tested.any():
            continue
        logcpm = np.log2(cpm[:, tested] + 1.0)
        covs = _covariates(adata.obs.loc[m], donor_col[m], keys, names, lib / n[keep])
        used = usable_covariates(covs, label.astype(float))
        X = (np.column_stack([covs[k] for k in used]) if used
             else np.empty((len(names), 0)))
        y = label.astype(float)
        res = label_test(logcpm, y, X, moderate=True)
        technical = ((res.r2_covariates > res.r2_label) & (res.r2_covariates > MIN_TECHNICAL_R2)
                     if used else np.zeros(int(tested.sum()), bool))
        up, low = tail_shares(counts_ct[:, tested], donor_col[m], names)
        tail_up = label_test(np.arcsin(np.sqrt(up)), y, X, moderate=True)
        tail_low = label_test(np.arcsin(np.sqrt(low)), y, X, moderate=True)
        p_up = cauchy_combination(np.vstack([res.one_sided(1.0), tail_up.one_sided(1.0)]))
        p_down = cauchy_combination(np.vstack([res.one_sided(-1.0), tail_low.one_sided(1.0)]))
        frames.append(pd.DataFrame({
            "cell_type": ct, "gene": genes[tested], "effect": res.effect, "t": res.t,
            "p": res.p, "q": bh_fdr(res.p), "t_tail_up": tail_up.t, "t_tail_down": tail_low.t,
            "p_up": p_up, "q_up": bh_fdr(p_up), "p_down": p_down, "q_down": bh_fdr(p_down),
            "r2_technical": res.r2_covariates,
            "r2_label": res.r2_label, "technical": technical,
            "n_case": int(label.sum()), "n_control": int((~label).sum()),
            "covariates": "+".join(used) or "none"}))
    if not frames:
        return pd.DataFrame(columns=DONOR_TEST_COLUMNS)
    return pd.concat(frames, ignore_index=True)[DONOR_TEST_COLUMNS]
