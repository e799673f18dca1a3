"""Cohorts larger than memory: a backed-mode scan in chunks, then a donor-stratified sketch.

An atlas-sized ``.h5ad`` (a million cells) is never loaded whole. :func:`read_sketched`:

1. opens the file in backed mode (``obs`` and ``var`` in memory, ``X`` on disk);
2. :func:`scan_h5ad` reads ``X`` ``chunk`` rows at a time and computes every cell's QC numbers
   (total counts, genes detected, mitochondrial counts) and every gene's detection count over
   *all* cells, checking each chunk for NaN/Inf, negative and (for count input) non-integer
   values, so a bad value anywhere in the file is reported with its row;
3. :func:`sketch_cells` keeps at most ``max_cells`` non-empty cells, drawn without replacement
   within each donor (or label, without donors) in proportion to the donor's size, so every
   donor keeps its share of cells and its cell-type mix;
4. :func:`read_rows` reads the kept rows, chunk by chunk, into an in-memory AnnData.

Donor-level statistics (pseudobulk) are means over a donor's cells; a proportional sample of a
few thousand cells per donor estimates them to well within the donor-to-donor spread, which is
what the tests compare. The scan's numbers and the sketch's size go to the run manifest.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from discovery.io.contract import InputError
from discovery.io.stream import add_partials

log = logging.getLogger(__name__)

__all__ = ["h5ad_n_obs", "read_rows", "read_sketched", "scan_h5ad", "sketch_anndata",
           "sketch_cells"]


def h5ad_n_obs(path: str | Path) -> int | None:
    """Number of cells of an ``.h5ad`` file, read from its header (None when unreadable)."""
    try:
        with h5py.File(path, "r") as f:
            enc = f["X"].attrs.get("encoding-type", "")
            if enc in ("csr_matrix", "csc_matrix"):
                return int(f["X"].attrs["shape"][0])
            return int(f["X"].shape[0])
    except (OSError, KeyError, TypeError, IndexError):
        return None


def _chunk_problem(x: sp.csr_matrix, require_counts: bool) -> tuple[str, int] | None:
    """(what is wrong, first row holding it) of a CSR chunk, or None."""
    data = x.data
    checks = [("NaN or infinite values", lambda d: ~np.isfinite(d)),
              ("negative values", lambda d: d < 0)]
    if require_counts:
        checks.append(("non-integer values where raw counts are required",
                       lambda d: d != np.round(d)))
    for problem, test in checks:
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(test(data))
        if len(bad):
            return problem, int(np.searchsorted(x.indptr, bad[0], side="right") - 1)
    return None


def _scan_block(x: sp.csr_matrix, a: int, b: int, *, is_mt: np.ndarray,
                require_counts: bool) -> dict[str, Any]:
    """One block's per-cell QC numbers (keyed by the block's first row, so blocks merge), its
    genes' detection counts, and the first bad value it holds (row within the file)."""
    found = _chunk_problem(x, require_counts)
    total = np.asarray(x.sum(axis=1), dtype=np.float64).ravel()
    mt = (np.asarray(x[:, np.flatnonzero(is_mt)].sum(axis=1), dtype=np.float64).ravel()
          if is_mt.any() else np.zeros(b - a))
    return {"cells": {a: (total, np.diff(x.indptr).astype(np.int32), mt)},
            "genes": np.bincount(x.indices, minlength=x.shape[1]).astype(np.int64),
            "problems": {a: (found[0], a + found[1])} if found else {}}


def scan_h5ad(backed: ad.AnnData, *, require_counts: bool = True, chunk: int = 50_000,
              path: str | Path | None = None, engine: str = "serial",
              scheduler: str | None = None, workers: int = 2) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-cell QC over every row of a backed AnnData, ``chunk`` rows at a time.

    Returns (per-cell frame with ``total_counts``, ``n_genes_by_counts``, ``pct_counts_mt``;
    summary with cell, empty-cell and per-gene detection numbers). Raises :class:`InputError`
    naming the first bad row (NaN/Inf, negative, non-integer counts).

    With the file's ``path`` (CSR or dense ``X``) the blocks are read straight from it and may
    run on a Dask cluster (``engine``, ``scheduler``, ``workers``:
    :func:`discovery.io.stream.reduce_chunks`); without it, through ``backed`` in this process.
    """
    from functools import partial

    from discovery.io.stream import Chunks, reduce_chunks, x_encoding

    n, n_g = backed.shape
    is_mt = np.asarray(backed.var_names.str.upper().str.startswith("MT-"))
    fn = partial(_scan_block, is_mt=is_mt, require_counts=require_counts)
    if path is not None and n and x_encoding(path) in ("csr_matrix", "array"):
        parts = reduce_chunks(Chunks(str(path), n, chunk), fn, engine=engine,
                              scheduler=scheduler, workers=workers)
    else:
        def block(a: int, b: int) -> sp.csr_matrix:
            x = backed.X[a:b]
            return sp.csr_matrix(x) if not sp.issparse(x) else x.tocsr()

        blocks = (fn(block(a, b), a, b) for a, b in Chunks("", n, chunk).bounds())
        parts = {"cells": {}, "genes": np.zeros(n_g, np.int64), "problems": {}}
        for part in tqdm(blocks, desc="scan (chunks)", total=-(-n // chunk) if n else 0,
                         disable=not log.isEnabledFor(logging.INFO), unit="chunk"):
            parts = add_partials(parts, part)
            if parts["problems"]:
                break
    if parts["problems"]:
        problem, row = parts["problems"][min(parts["problems"])]
        msg = (f"X holds {problem}: first at row {row} (cell {backed.obs_names[row]!r}). "
               + ("Pass raw integer counts, or set preprocess input: lognorm for "
                  "log-normalised data." if "integer" in problem
                  else "Fix or drop those cells before running."))
        raise InputError(msg)
    starts = sorted(parts["cells"])
    total, detected, mt = (np.concatenate([parts["cells"][a][i] for a in starts]) if starts
                           else np.zeros(0) for i in range(3))
    gene_cells = parts["genes"]
    with np.errstate(invalid="ignore", divide="ignore"):
        pct_mt = np.where(total > 0, 100 * mt / total, 0.0)
    qc = pd.DataFrame({"total_counts": total, "n_genes_by_counts": detected.astype(np.int32),
                       "pct_counts_mt": pct_mt}, index=backed.obs_names)
    summary = {
        "cells_in_file": int(n),
        "genes_in_file": int(n_g),
        "empty_cells": int((total == 0).sum()),
        "genes_never_detected": int((gene_cells == 0).sum()),
        "median_total_counts": float(np.median(total)),
        "median_genes_detected": float(np.median(detected)),
        "chunk_rows": int(chunk),
    }
    return qc, summary


def sketch_cells(obs: pd.DataFrame, max_cells: int, *, strata: str | None,
                 eligible: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Sorted row indices of at most ``max_cells`` cells, drawn within ``strata`` groups.

    Each group (donor) gets a share of ``max_cells`` proportional to its eligible cells (largest
    remainders), drawn without replacement with a generator seeded by ``seed``.
    """
    if max_cells < 1:
        msg = f"max_cells must be positive, got {max_cells}"
        raise InputError(msg)
    n = len(obs)
    ok = np.ones(n, bool) if eligible is None else np.asarray(eligible, bool)
    rows = np.flatnonzero(ok)
    if len(rows) <= max_cells:
        return rows
    groups = (pd.Series(np.zeros(n, int)) if strata is None
              else pd.Series(pd.Categorical(obs[strata]).codes))
    sizes = groups.iloc[rows].value_counts().sort_index()
    quota = sizes * max_cells / len(rows)
    take = np.floor(quota).astype(int)
    short = max_cells - int(take.sum())
    take.loc[(quota - take).sort_values(ascending=False, kind="stable").index[:short]] += 1
    rng = np.random.default_rng(seed)
    codes = groups.to_numpy()
    kept = [rng.choice(rows[codes[rows] == g], size=int(k), replace=False)
            for g, k in take.items() if k > 0]
    return np.sort(np.concatenate(kept))


def _record(max_cells: int, rows: np.ndarray, strata: str | None, seed: int) -> dict[str, Any]:
    return {"max_cells": int(max_cells), "cells_kept": int(len(rows)), "strata": strata,
            "seed": int(seed)}


def sketch_anndata(adata: ad.AnnData, max_cells: int, *, strata: str | None,
                   seed: int = 0) -> tuple[ad.AnnData, dict[str, Any]]:
    """The in-memory counterpart of :func:`read_sketched`: at most ``max_cells`` non-empty cells
    of ``adata`` (a copy), drawn within ``strata``; ``strata`` missing from obs draws from all
    cells (validation names the missing key). Returns (sample, summary for the manifest)."""
    if strata is not None and strata not in adata.obs:
        strata = None
    x = adata.X
    nonempty = (x.getnnz(axis=1) if hasattr(x, "getnnz")
                else np.count_nonzero(np.asarray(x), axis=1)) > 0
    rows = sketch_cells(adata.obs, max_cells, strata=strata, eligible=nonempty, seed=seed)
    summary = {"cells_in_file": int(adata.n_obs), "empty_cells": int((~nonempty).sum()),
               **_record(max_cells, rows, strata, seed)}
    return adata[rows].copy(), summary


def read_rows(backed: ad.AnnData, rows: np.ndarray, *, chunk: int = 50_000) -> ad.AnnData:
    """The given rows of a backed AnnData as an in-memory AnnData (X as CSR), chunk by chunk."""
    rows = np.asarray(rows)
    parts = []
    for a in tqdm(range(0, backed.n_obs, chunk), desc="read sketch (chunks)", disable=not log.isEnabledFor(logging.INFO),
                  unit="chunk"):
        b = min(a + chunk, backed.n_obs)
        sel = rows[(rows >= a) & (rows < b)] - a
        if len(sel) == 0:
            continue
        x = backed.X[a:b]
        x = sp.csr_matrix(x) if not sp.issparse(x) else x.tocsr()
        parts.append(x[sel])
    x = sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, backed.n_vars))
    out = ad.AnnData(X=x.astype(np.float32), obs=backed.obs.iloc[rows].copy(),
                     var=backed.var.copy(), uns=dict(backed.uns))
    return out


def read_sketched(path: str | Path, *, max_cells: int, strata: str | None,
                  require_counts: bool = True, seed: int = 0, chunk: int = 50_000,
                  engine: str = "serial", scheduler: str | None = None,
                  workers: int = 2) -> tuple[ad.AnnData, dict[str, Any]]:
    """Scan an ``.h5ad`` in backed mode and load a donor-stratified sketch of its cells.

    Returns (in-memory AnnData of at most ``max_cells`` non-empty cells; summary of the scan and
    the sketch for the manifest). ``engine``, ``scheduler``, ``workers``: where the scan's
    blocks run (:func:`discovery.io.stream.reduce_chunks`).
    """
    try:
        backed = ad.read_h5ad(path, backed="r")
    except Exception as err:  # h5py / anndata raise many types here
        msg = (f"{path} is not a readable AnnData .h5ad file ({type(err).__name__}: {err}). "
               "Write it with `adata.write_h5ad(...)`.")
        raise InputError(msg) from err
    try:
        if strata is not None and strata not in backed.obs:
            msg = (f"obs has no column {strata!r} to sketch cells by; available: "
                   f"{', '.join(map(str, backed.obs.columns))}")
            raise InputError(msg)
        qc, summary = scan_h5ad(backed, require_counts=require_counts, chunk=chunk, path=path,
                                engine=engine, scheduler=scheduler, workers=workers)
        rows = sketch_cells(backed.obs, max_cells, strata=strata,
                            eligible=qc["total_counts"].to_numpy() > 0, seed=seed)
        adata = read_rows(backed, rows, chunk=chunk)
    finally:
        backed.file.close()
    summary.update(_record(max_cells, rows, strata, seed))
    log.info("sketched %d of %d cells (%s-stratified) from %s", len(rows),
             summary["cells_in_file"], strata or "unstratified", path)
    return adata, summary
