"""Preprocessing with scanpy: QC metrics, normalisation, gene selection, donor-held-out split.

Steps, in the order :func:`preprocess` runs them:

1. :func:`qc_metrics`: total counts, genes detected, mitochondrial and ribosomal fractions.
2. :func:`normalize`: raw counts kept in ``layers['counts']``; ``X`` becomes log1p of counts per
   10,000.
3. :func:`select_genes`: highly variable genes (scanpy, ``seurat`` flavour on log data); genes the
   user pins are always kept.
4. :func:`split_donors`: donors (never cells) assigned to train / val / test, stratified by label.

Every step records its parameters in ``uns[...]['params']``.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from discovery.io.contract import (
    InputError,
    Keys,
    case_mask,
    counts_matrix,
    validate,
    validate_matrix,
)

log = logging.getLogger(__name__)

__all__ = [
    "LOGNORM_SKIPPED",
    "PreprocessConfig",
    "drop_empty",
    "flag_gene_groups",
    "normalize",
    "preprocess",
    "preprocess_unlabelled",
    "qc_metrics",
    "select_genes",
    "split_donors",
]


@dataclass
class PreprocessConfig:
    """Parameters of :func:`preprocess`."""

    target_sum: float = 1e4
    n_top_genes: int = 1200
    pin_genes: tuple[str, ...] = ()
    split_fractions: tuple[float, float, float] = (0.5, 0.25, 0.25)  # train, val, test
    split_seed: int = 0
    #: what X holds: ``counts`` (raw integer counts; QC and normalisation run) or ``lognorm``
    #: (already log-normalised, e.g. a public dataset without counts: count checks, QC metrics
    #: from counts and normalisation are skipped, see :data:`LOGNORM_SKIPPED`)
    input: str = "counts"
    #: cohorts with more cells are sketched on reading: at most this many non-empty cells,
    #: drawn within donors in proportion to their size (:mod:`discovery.io.sketch`); None keeps all
    max_cells: int | None = 200_000

    def __post_init__(self) -> None:
        if self.max_cells is not None and self.max_cells < 100:
            msg = f"max_cells must be at least 100 (or null for every cell), got {self.max_cells}"
            raise InputError(msg)
        if self.input not in ("counts", "lognorm"):
            msg = f"preprocess input must be 'counts' or 'lognorm', got {self.input!r}"
            raise InputError(msg)
        self.pin_genes = tuple(self.pin_genes)
        self.split_fractions = tuple(float(f) for f in self.split_fractions)
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1) > 1e-6:
            msg = f"split_fractions must be three numbers summing to 1, got {self.split_fractions}"
            raise InputError(msg)
        if min(self.split_fractions) <= 0:
            msg = f"every split fraction must be positive, got {self.split_fractions}"
            raise InputError(msg)
        if self.n_top_genes < 10:
            msg = f"n_top_genes must be at least 10, got {self.n_top_genes}"
            raise InputError(msg)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pin_genes"] = list(self.pin_genes)
        d["split_fractions"] = list(self.split_fractions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        return cls(**d)


def preprocess_unlabelled(adata: ad.AnnData, *, config: PreprocessConfig | None = None) -> None:
    """The steps that need no labels, on raw counts: check, drop empty cells/genes, QC metrics,
    log-normalisation, gene selection (no donor split: nothing to predict).

    For real count matrices that come without metadata (e.g. to look at QC, or to score cells
    with a trained model via :func:`discovery.tl.classifier.predict`). Reads and writes what
    :func:`qc_metrics`, :func:`normalize` and :func:`select_genes` do, plus
    ``uns['preprocess']['params']`` (with ``labelled: False``).
    """
    config = config or PreprocessConfig()
    validate_matrix(adata, require_counts=True)
    drop_empty(adata)
    qc_metrics(adata)
    normalize(adata, target_sum=config.target_sum)
    select_genes(adata, n_top_genes=config.n_top_genes, pin_genes=config.pin_genes)
    adata.uns["preprocess"] = {"params": {**config.to_dict(), "labelled": False}}


#: steps the ``lognorm`` input mode skips, and why (logged and recorded in the AnnData)
LOGNORM_SKIPPED = {
    "integer-count checks": "X is log-normalised, not counts",
    "QC metrics from counts": "library size and mitochondrial fraction need counts; obs "
                              "'total_counts' / 'pct_counts_mt' are used when the data brings them",
    "normalisation": "X is already log-normalised",
    "pseudobulk count DE": "it sums counts per donor",
}


def drop_empty(adata: ad.AnnData) -> bool:
    """Drop cells with no counts and genes detected in no cell, in place, with a warning.

    Reads ``layers['counts']`` (or ``X``). An empty cell cannot be normalised (its library size
    is 0) and an undetected gene carries no information. Returns whether anything was dropped.
    """
    mat = counts_matrix(adata)
    cell_sum = np.asarray(mat.sum(axis=1)).ravel()
    gene_det = np.asarray((mat != 0).sum(axis=0)).ravel()
    empty_cells, empty_genes = int((cell_sum == 0).sum()), int((gene_det == 0).sum())
    if empty_cells:
        warnings.warn(f"dropped {empty_cells} of {adata.n_obs} cells with no counts",
                      UserWarning, stacklevel=3)
        adata._inplace_subset_obs(cell_sum > 0)
    if empty_genes:
        warnings.warn(f"dropped {empty_genes} of {adata.n_vars} genes detected in no cell",
                      UserWarning, stacklevel=3)
        adata._inplace_subset_var(gene_det > 0)
    return bool(empty_cells or empty_genes)


def flag_gene_groups(adata: ad.AnnData) -> None:
    """``var['mt']`` (mitochondrial, ``MT-``) and ``var['ribo']`` (ribosomal, ``RPS``/``RPL``)."""
    names = adata.var_names.str.upper()
    adata.var["mt"] = names.str.startswith("MT-")
    adata.var["ribo"] = names.str.startswith(("RPS", "RPL"))


def qc_metrics(adata: ad.AnnData) -> None:
    """Per-cell QC metrics from raw counts.

    Reads ``layers['counts']`` (or ``X`` when absent) and ``var_names``. Writes ``var['mt']``,
    ``var['ribo']``, ``obs['total_counts', 'n_genes_by_counts', 'pct_counts_mt',
    'pct_counts_ribo']``.
    """
    flag_gene_groups(adata)
    layer = "counts" if "counts" in adata.layers else None
    sc.pp.calculate_qc_metrics(
        adata, qc_vars=["mt", "ribo"], layer=layer, percent_top=None, log1p=False, inplace=True
    )


def normalize(adata: ad.AnnData, *, target_sum: float = 1e4,
              size_without: str | None = None) -> np.ndarray | None:
    """Log-normalise, keeping raw counts.

    Reads ``X`` (raw counts). Writes ``layers['counts']`` (copy of the raw counts, when absent),
    ``X`` = log1p(counts / size * target_sum), ``uns['log1p']``,
    ``uns['normalize']['params']``. The size is the cell's total count, or with
    ``size_without`` (a boolean ``var`` column, e.g. ``mt``) its total outside those genes — the
    group's own values are scaled the same way; the sizes are then returned.
    """
    if "counts" not in adata.layers:
        adata.layers["counts"] = adata.X.copy()
    params = {"target_sum": float(target_sum), "log1p": True}
    if size_without is None:
        adata.X = adata.layers["counts"].copy()
        sc.pp.normalize_total(adata, target_sum=target_sum)
        sc.pp.log1p(adata)
        adata.uns["normalize"] = {"params": params}
        return None
    if size_without not in adata.var:
        msg = f"var has no column {size_without!r} marking the gene group to leave out"
        raise InputError(msg)
    mask = adata.var[size_without].to_numpy(bool)
    counts = sp.csr_matrix(adata.layers["counts"], dtype=np.float64)
    size = np.asarray(counts[:, np.flatnonzero(~mask)].sum(axis=1)).ravel()
    if (size <= 0).any():
        msg = (f"{int((size <= 0).sum())} cells have no counts outside the {size_without!r} "
               "genes; drop them before normalising without them")
        raise InputError(msg)
    x = sp.diags(target_sum / size) @ counts
    x.data = np.log1p(x.data)
    adata.X = x.astype(np.float32).tocsr()
    adata.uns["normalize"] = {"params": {**params, "size_without": size_without}}
    return size


def select_genes(
    adata: ad.AnnData, *, n_top_genes: int = 1200, pin_genes: Sequence[str] = ()
) -> None:
    """Mark highly variable genes, always keeping pinned genes.

    Reads log-normalised ``X``. Writes ``var['highly_variable']``, ``var['pinned']``,
    ``uns['select_genes']['params']``.
    """
    missing = [g for g in pin_genes if g not in adata.var_names]
    if missing:
        msg = (
            f"{len(missing)} pinned gene(s) are not in var_names: {missing[:10]}. Check the "
            "symbols (var_names are gene symbols, case-sensitive)."
        )
        raise InputError(msg)
    n_top = min(n_top_genes, adata.n_vars)
    sc.pp.highly_variable_genes(adata, flavor="seurat", n_top_genes=n_top, subset=False)
    pinned = adata.var_names.isin(list(pin_genes))
    adata.var["pinned"] = pinned
    adata.var["highly_variable"] = adata.var["highly_variable"].to_numpy() | pinned
    adata.uns["select_genes"] = {
        "params": {"n_top_genes": int(n_top), "flavor": "seurat", "pin_genes": list(pin_genes),
                   "n_selected": int(adata.var["highly_variable"].sum())}
    }


def split_donors(
    adata: ad.AnnData,
    keys: Keys,
    *,
    fractions: Sequence[float] = (0.5, 0.25, 0.25),
    seed: int = 0,
    key_added: str = "split",
) -> None:
    """Assign donors to ``train`` / ``val`` / ``test``, stratified by label.

    Reads ``obs[keys.donor_key, keys.label_key]``. Writes ``obs[key_added]`` (categorical) and
    ``uns[key_added]['params']`` with the donors of each split. Each split gets at least one
    donor of each class; no donor is in two splits.
    """
    donors = adata.obs[keys.donor_key].astype(str).to_numpy()
    is_case = case_mask(adata, keys)
    donor_case = pd.Series(is_case).groupby(donors).first()
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for cls in (True, False):
        members = np.array(sorted(donor_case.index[donor_case == cls]))
        n = len(members)
        n_test = max(1, int(round(fractions[2] * n)))
        n_val = max(1, int(round(fractions[1] * n)))
        if n - n_test - n_val < 1:
            msg = (
                f"{n} donors in class {'case' if cls else 'control'} cannot fill train, val and "
                "test with at least one donor each; add donors or change split fractions."
            )
            raise InputError(msg)
        perm = rng.permutation(members)
        for d in perm[:n_test]:
            assignment[d] = "test"
        for d in perm[n_test : n_test + n_val]:
            assignment[d] = "val"
        for d in perm[n_test + n_val :]:
            assignment[d] = "train"
    adata.obs[key_added] = pd.Categorical(
        [assignment[d] for d in donors], categories=["train", "val", "test"]
    )
    adata.uns[key_added] = {
        "params": {
            "fractions": [float(f) for f in fractions],
            "seed": int(seed),
            "donor_key": keys.donor_key,
            "donors": {s: sorted(d for d, v in assignment.items() if v == s)
                       for s in ("train", "val", "test")},
        }
    }


def preprocess(
    adata: ad.AnnData,
    keys: Keys | None = None,
    *,
    config: PreprocessConfig | None = None,
    copy: bool = False,
) -> ad.AnnData | None:
    """Validate, then run QC, normalisation, gene selection and the donor split.

    Reads what :func:`discovery.io.contract.validate` reads. Writes everything the steps above
    write, plus ``uns['discovery']['keys']`` (the validated keys, read by later steps) and
    ``uns['preprocess']['params']``. With ``copy=True`` returns a new AnnData, else None.
    """
    config = config or PreprocessConfig()
    adata = adata.copy() if copy else adata
    counts = config.input == "counts"
    keys = validate(adata, keys, require_counts=counts)
    if drop_empty(adata):
        # a class may have lost donors with the empty cells
        keys = validate(adata, keys, require_counts=counts)
    adata.uns["discovery"] = {"keys": json.dumps(keys.to_dict())}
    if counts:
        qc_metrics(adata)
        log.info("normalising %d cells", adata.n_obs)
        normalize(adata, target_sum=config.target_sum)
    else:
        for step, why in LOGNORM_SKIPPED.items():
            log.info("log-normalised input: skipped %s (%s)", step, why)
        flag_gene_groups(adata)
        adata.uns["log1p"] = {"base": None}
        adata.uns["normalize"] = {"params": {"input": "lognorm",
                                             "skipped": dict(LOGNORM_SKIPPED)}}
    select_genes(adata, n_top_genes=config.n_top_genes, pin_genes=config.pin_genes)
    split_donors(adata, keys, fractions=config.split_fractions, seed=config.split_seed)
    adata.uns["preprocess"] = {"params": config.to_dict()}
    return adata if copy else None
