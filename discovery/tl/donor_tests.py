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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from discovery.io.contract import InputError, Keys, case_mask, counts_matrix, get_keys
from discovery.io.stream import Chunks, dask_client, reduce_chunks
from discovery.tl.stats import aggregate_by, bh_fdr, cauchy_combination, label_test

log = logging.getLogger(__name__)

__all__ = ["DONOR_TEST_COLUMNS", "MIN_TECHNICAL_R2", "AllCells", "CellTypeDonors",
           "donor_gene_tests", "tail_counts", "tail_shares", "tail_thresholds", "tested_genes",
           "usable_covariates"]

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


def _donor_batch(obs: pd.DataFrame, donors: np.ndarray, keys: Keys,
                 names: np.ndarray) -> pd.Series | None:
    """Each donor's most common batch among the given cells (None without a batch column)."""
    if not keys.batch_key or keys.batch_key not in obs:
        return None
    b = obs[keys.batch_key].astype(str).groupby(donors).agg(lambda s: s.mode().iloc[0])
    return b.reindex(names)


def _covariates(batch: pd.Series | None, mt: np.ndarray | None,
                lib: np.ndarray) -> dict[str, np.ndarray]:
    """Donor-level technical covariates in one cell type, in the order they are dropped last:
    the donor's batch, its mean mitochondrial percentage, its mean library size."""
    out: dict[str, np.ndarray] = {}
    if batch is not None:
        dummies = pd.get_dummies(batch, drop_first=True).to_numpy(float)
        if dummies.shape[1]:
            out["batch"] = dummies
    if mt is not None:
        out["pct_counts_mt"] = np.log1p(np.asarray(mt, float))[:, None]
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


def _lognorm(counts: object) -> sp.csr_matrix:
    """log1p(counts per 10k) of each row (library size over the given columns), float32 CSR."""
    x = sp.csr_matrix(counts, dtype=np.float32)
    lib = np.asarray(x.sum(1)).ravel()
    x = sp.diags((1e4 / np.maximum(lib, 1.0)).astype(np.float32)) @ x
    x.data = np.log1p(x.data)
    return sp.csr_matrix(x)


def tail_thresholds(counts: object, *, quantiles: tuple[float, float] = TAIL_QUANTILES
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per gene, the pooled ``quantiles[0]`` and ``quantiles[1]`` quantiles of log1p(counts per
    10k) over the cells of ``counts: (cells, genes)`` (one cell type, the tested genes)."""
    x = _lognorm(counts).tocsc()
    # float64, as np.quantile returns them: a float32 threshold could round onto a cell's value
    hi = np.zeros(x.shape[1])
    lo = np.zeros(x.shape[1])
    for j in range(0, x.shape[1], _BLOCK):
        block = x[:, j:j + _BLOCK].toarray()
        hi[j:j + _BLOCK], lo[j:j + _BLOCK] = np.quantile(block, quantiles, axis=0)
    return hi, lo


def tail_counts(counts: object, groups: np.ndarray, n_groups: int, *, hi: np.ndarray,
                lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per group (rows) and gene, how many cells lie above ``hi`` and how many lie *above*
    ``lo`` (the lower tail's count is the group's cells minus this: every zero lies at or below
    a non-negative ``lo``). ``groups: (cells,)`` codes in ``[0, n_groups)``, -1 for cells left
    out. Works on one block of cells at a time: counts add up over blocks."""
    x = _lognorm(counts)
    keep = np.asarray(groups) >= 0
    ind = sp.csr_matrix((np.ones(int(keep.sum()), np.float64),
                         (np.asarray(groups)[keep], np.flatnonzero(keep))),
                        shape=(n_groups, x.shape[0]))

    def above(t: np.ndarray) -> np.ndarray:
        m = sp.csr_matrix(((x.data > t[x.indices]).astype(np.float64), x.indices, x.indptr),
                          shape=x.shape)
        return np.asarray((ind @ m).todense())

    return above(np.asarray(hi, float)), above(np.asarray(lo, float))


def tail_shares(counts: object, donors: np.ndarray, names: np.ndarray,
                *, quantiles: tuple[float, float] = TAIL_QUANTILES,
                thresholds: tuple[np.ndarray, np.ndarray] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per donor (rows, in ``names`` order) and gene, the share of cells in the pooled upper tail
    (above the ``quantiles[0]`` quantile, or above zero where that quantile is zero) and in the
    lower tail (at or below the ``quantiles[1]`` quantile) of log1p(counts per 10k).

    ``counts: (cells, genes)`` raw counts (sparse or dense) of one cell type, ``donors: (cells,)``;
    ``thresholds``: (upper, lower) per gene, from :func:`tail_thresholds` of these cells when
    None.
    """
    rows = pd.Index(names).get_indexer(np.asarray(donors))
    if thresholds is None:  # pooled over the cells of the listed donors
        thresholds = tail_thresholds(sp.csr_matrix(counts)[rows >= 0], quantiles=quantiles)
    hi, lo = thresholds
    n = np.bincount(rows[rows >= 0], minlength=len(names)).astype(float)
    up, above_lo = tail_counts(counts, rows, len(names), hi=hi, lo=lo)
    with np.errstate(invalid="ignore", divide="ignore"):
        up, low = up / n[:, None], (n[:, None] - above_lo) / n[:, None]
    return np.clip(up, 0.0, 1.0), np.clip(low, 0.0, 1.0)


@dataclass
class CellTypeDonors:
    """What the donor-level tests of one cell type read, one row per donor (``names``):
    ``summed`` counts (donors x genes), ``n`` cells, the donor's ``batch`` (or None), its mean
    mitochondrial percentage ``mt`` (or None), and its label ``is_case``."""

    names: np.ndarray
    summed: np.ndarray
    n: np.ndarray
    batch: pd.Series | None
    mt: np.ndarray | None
    is_case: np.ndarray


def tested_genes(summed: np.ndarray, is_case: np.ndarray) -> np.ndarray:
    """Genes a cell type's donor tests look at: at least 10 counts' worth of CPM (at the median
    library size) in as many donors as the smaller class."""
    lib = summed.sum(1)
    cpm = summed / np.maximum(lib, 1.0)[:, None] * 1e6
    return (cpm >= 10.0 / np.median(lib) * 1e6).sum(0) >= min(is_case.sum(), (~is_case).sum())


def _test_cell_type(ct: str, d: CellTypeDonors, genes: np.ndarray, tested: np.ndarray,
                    up: np.ndarray, low: np.ndarray) -> pd.DataFrame:
    label = d.is_case
    lib = d.summed.sum(1)
    cpm = d.summed / np.maximum(lib, 1.0)[:, None] * 1e6
    logcpm = np.log2(cpm[:, tested] + 1.0)
    covs = _covariates(d.batch, d.mt, lib / d.n)
    used = usable_covariates(covs, label.astype(float))
    X = (np.column_stack([covs[k] for k in used]) if used
         else np.empty((len(d.names), 0)))
    y = label.astype(float)
    res = label_test(logcpm, y, X, moderate=True)
    technical = ((res.r2_covariates > res.r2_label) & (res.r2_covariates > MIN_TECHNICAL_R2)
                 if used else np.zeros(int(tested.sum()), bool))
    tail_up = label_test(np.arcsin(np.sqrt(up)), y, X, moderate=True)
    tail_low = label_test(np.arcsin(np.sqrt(low)), y, X, moderate=True)
    p_up = cauchy_combination(np.vstack([res.one_sided(1.0), tail_up.one_sided(1.0)]))
    p_down = cauchy_combination(np.vstack([res.one_sided(-1.0), tail_low.one_sided(1.0)]))
    return pd.DataFrame({
        "cell_type": ct, "gene": genes[tested], "effect": res.effect, "t": res.t,
        "p": res.p, "q": bh_fdr(res.p), "t_tail_up": tail_up.t, "t_tail_down": tail_low.t,
        "p_up": p_up, "q_up": bh_fdr(p_up), "p_down": p_down, "q_down": bh_fdr(p_down),
        "r2_technical": res.r2_covariates,
        "r2_label": res.r2_label, "technical": technical,
        "n_case": int(label.sum()), "n_control": int((~label).sum()),
        "covariates": "+".join(used) or "none"})


def _enough(ct: str, d: CellTypeDonors, min_donors_per_class: int) -> bool:
    if d.is_case.sum() < min_donors_per_class or (~d.is_case).sum() < min_donors_per_class:
        log.info("donor tests: %s has fewer than %d donors per class; skipped", ct,
                 min_donors_per_class)
        return False
    return True


def _cell_types(obs: pd.DataFrame, keys: Keys) -> np.ndarray:
    """Each cell's type as text, or ``"all cells"`` when the cohort names no cell types."""
    if keys.cell_type_key:
        return obs[keys.cell_type_key].astype(str).to_numpy()
    return np.full(len(obs), "all cells")


def donor_gene_tests(adata: ad.AnnData, *, min_cells: int = 5,
                     min_donors_per_class: int = 2,
                     all_cells: AllCells | None = None) -> pd.DataFrame:
    """Technical-covariate-adjusted donor-level tests of every expressed gene in every cell type.

    Reads ``uns['discovery']['keys']``, raw counts (``layers['counts']``), ``obs`` QC columns.
    Writes nothing. Returns a :data:`DONOR_TEST_COLUMNS` table (empty when the data has no
    donors or no counts).

    ``all_cells``: the file ``adata`` was sketched from (:class:`AllCells`); the donor sums,
    cell counts, QC covariates and tail shares then count every cell of the file, in one
    streamed pass each, and only the tail thresholds (quantiles) come from ``adata``'s cells.
    """
    keys = get_keys(adata)
    if not keys.donor_key or "counts" not in adata.layers:
        return pd.DataFrame(columns=DONOR_TEST_COLUMNS)
    if all_cells is not None:
        with all_cells.session():
            return _streamed_tests(adata, keys, all_cells, min_cells=min_cells,
                                   min_donors_per_class=min_donors_per_class)
    genes = adata.var_names.to_numpy()
    ct_col = _cell_types(adata.obs, keys)
    donor_col = adata.obs[keys.donor_key].astype(str).to_numpy()
    is_case = pd.Series(case_mask(adata, keys)).groupby(donor_col).first()
    counts = counts_matrix(adata)
    frames = []
    for ct in sorted(set(ct_col)):
        m = ct_col == ct
        counts_ct = counts[m]
        names, summed, n = aggregate_by(counts_ct, donor_col[m])
        keep = n >= min_cells
        names = names[keep]
        obs_ct = adata.obs.loc[m]
        mt = (obs_ct["pct_counts_mt"].astype(float).groupby(donor_col[m]).mean()
              .reindex(names).to_numpy(float) if "pct_counts_mt" in obs_ct else None)
        d = CellTypeDonors(names, np.asarray(summed[keep], float), n[keep],
                           _donor_batch(obs_ct, donor_col[m], keys, names), mt,
                           is_case.reindex(names).to_numpy(bool))
        if not _enough(ct, d, min_donors_per_class):
            continue
        tested = tested_genes(d.summed, d.is_case)
        if not tested.any():
            continue
        up, low = tail_shares(counts_ct[:, tested], donor_col[m], names)
        frames.append(_test_cell_type(ct, d, genes, tested, up, low))
    if not frames:
        return pd.DataFrame(columns=DONOR_TEST_COLUMNS)
    return pd.concat(frames, ignore_index=True)[DONOR_TEST_COLUMNS]


@dataclass
class AllCells:
    """Every cell of the file a run's ``adata`` was sketched from: its ``path`` (``.h5ad`` with
    raw counts in ``X``), ``obs`` of every row (backed mode reads it without ``X``),
    ``var_names`` of the file, and how to stream it (:func:`discovery.io.stream.reduce_chunks`:
    ``chunk`` rows a block, ``engine`` serial or dask, ``scheduler`` address, ``workers``)."""

    path: str
    obs: pd.DataFrame
    var_names: np.ndarray
    chunk: int = 50_000
    engine: str = "serial"
    scheduler: str | None = None
    workers: int = 2

    @classmethod
    def from_file(cls, path: str | Path, **stream: Any) -> AllCells:
        """Read ``obs`` and ``var_names`` of an ``.h5ad`` in backed mode (``X`` stays on disk)."""
        try:
            backed = ad.read_h5ad(path, backed="r")
        except Exception as err:  # h5py / anndata raise many types here
            msg = f"{path} is not a readable AnnData .h5ad file ({type(err).__name__}: {err})"
            raise InputError(msg) from err
        try:
            return cls(str(path), backed.obs.copy(), backed.var_names.to_numpy(), **stream)
        finally:
            backed.file.close()

    @contextmanager
    def session(self) -> Iterator[None]:
        """Within it, every :meth:`reduce` runs on one Dask client (one local cluster start)."""
        if self.engine == "serial" and not self.scheduler:
            yield
            return
        with dask_client(scheduler=self.scheduler, workers=self.workers) as client:
            self._client = client
            try:
                yield
            finally:
                self._client = None

    def reduce(self, fn: Any) -> Any:
        """Sum of ``fn(block, first row, row after the last)`` over every block of rows."""
        return reduce_chunks(Chunks(self.path, len(self.obs), self.chunk), fn,
                             engine=self.engine, scheduler=self.scheduler, workers=self.workers,
                             client=getattr(self, "_client", None))


def _sums_block(x: sp.csr_matrix, a: int, b: int, *, groups: np.ndarray, n_groups: int,
                cols: np.ndarray, mt_cols: np.ndarray) -> tuple[np.ndarray, ...]:
    """One block's per-group summed counts (over ``cols``), non-empty cells and summed
    mitochondrial percentage; empty cells (no counts) count nowhere, as in preprocessing."""
    total = np.asarray(x.sum(1)).ravel()
    g = np.where(total > 0, groups[a:b], -1)
    keep = g >= 0
    ind = sp.csr_matrix((np.ones(int(keep.sum())), (g[keep], np.flatnonzero(keep))),
                        shape=(n_groups, b - a))
    summed = np.asarray((ind @ x[:, cols]).todense())
    mt = np.asarray(x[:, mt_cols].sum(1)).ravel() if len(mt_cols) else np.zeros(b - a)
    with np.errstate(invalid="ignore", divide="ignore"):
        pct = np.where(total > 0, 100.0 * mt / total, 0.0)
    return summed, ind @ np.ones(b - a), ind @ pct


def _tails_block(x: sp.csr_matrix, a: int, b: int, *, groups: np.ndarray,
                 spec: dict[str, tuple[np.ndarray, int, int, np.ndarray, np.ndarray]]
                 ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One block's tail counts per cell type: ``spec[ct] = (tested file columns, first group
    code of the cell type, its number of groups, upper, lower thresholds)``."""
    total = np.asarray(x.sum(1)).ravel()
    g = np.where(total > 0, groups[a:b], -1)
    out = {}
    for ct, (cols, first, n, hi, lo) in spec.items():
        rows = np.flatnonzero((g >= first) & (g < first + n))
        out[ct] = tail_counts(x[rows][:, cols], g[rows] - first, n, hi=hi, lo=lo)
    return out


def _streamed_tests(adata: ad.AnnData, keys: Keys, cells: AllCells, *, min_cells: int,
                    min_donors_per_class: int) -> pd.DataFrame:
    """:func:`donor_gene_tests` over every cell of ``cells`` (two streamed passes)."""
    obs = cells.obs
    for col in (keys.donor_key, keys.label_key, keys.cell_type_key):
        if col and col not in obs:
            msg = f"{cells.path}: obs has no column {col!r} (the sketch had it)"
            raise InputError(msg)
    genes = adata.var_names.to_numpy()
    cols = pd.Index(cells.var_names).get_indexer(genes)
    if (cols < 0).any():
        msg = (f"{cells.path} lacks {int((cols < 0).sum())} genes of the run "
               f"(first: {genes[cols < 0][0]!r}); was the run made from another file?")
        raise InputError(msg)
    mt_cols = np.flatnonzero(pd.Index(cells.var_names).str.upper().str.startswith("MT-"))
    ct_all = _cell_types(obs, keys)
    donor_all = obs[keys.donor_key].astype(str).to_numpy()
    pairs = pd.MultiIndex.from_arrays([ct_all, donor_all])
    codes, uniq = pd.factorize(pairs, sort=True)
    groups = codes.astype(np.int32)
    summed, n, pct = cells.reduce(partial(_sums_block, groups=groups, n_groups=len(uniq),
                                          cols=cols, mt_cols=mt_cols))
    label = pd.Series(case_mask(obs, keys)).groupby(donor_all).first()
    g_ct = np.asarray(uniq.get_level_values(0))
    g_donor = np.asarray(uniq.get_level_values(1))
    sketch_ct = _cell_types(adata.obs, keys)
    counts = counts_matrix(adata)
    donors: dict[str, tuple[CellTypeDonors, np.ndarray, np.ndarray]] = {}
    spec: dict[str, tuple[np.ndarray, int, int, np.ndarray, np.ndarray]] = {}
    for ct in sorted(set(g_ct)):
        idx = np.flatnonzero((g_ct == ct) & (n >= max(min_cells, 1)))
        if not len(idx):
            continue
        names = g_donor[idx]
        m = ct_all == ct
        d = CellTypeDonors(names, summed[idx], n[idx].astype(int),
                           _donor_batch(obs.loc[m], donor_all[m], keys, names),
                           pct[idx] / n[idx] if len(mt_cols) else None,
                           label.reindex(names).to_numpy(bool))
        if not _enough(ct, d, min_donors_per_class):
            continue
        tested = tested_genes(d.summed, d.is_case)
        in_sketch = (sketch_ct == ct) & np.isin(
            adata.obs[keys.donor_key].astype(str).to_numpy(), names)
        if not tested.any() or not in_sketch.any():
            continue
        hi, lo = tail_thresholds(counts[in_sketch][:, tested])
        # group codes of the cell type are contiguous (sorted factorisation of (type, donor))
        first = int(np.flatnonzero(g_ct == ct)[0])
        n_ct = int((g_ct == ct).sum())
        donors[ct] = (d, tested, idx - first)
        spec[ct] = (cols[tested], first, n_ct, hi, lo)
    if not spec:
        return pd.DataFrame(columns=DONOR_TEST_COLUMNS)
    tails = cells.reduce(partial(_tails_block, groups=groups, spec=spec))
    frames = []
    for ct, (d, tested, rows) in donors.items():
        up, above_lo = (t[rows] for t in tails[ct])
        nn = d.n[:, None].astype(float)
        frames.append(_test_cell_type(ct, d, genes, tested, np.clip(up / nn, 0.0, 1.0),
                                      np.clip((nn - above_lo) / nn, 0.0, 1.0)))
    return pd.concat(frames, ignore_index=True)[DONOR_TEST_COLUMNS]
