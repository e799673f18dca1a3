"""Large cohorts: chunked simulation to disk, backed-mode scan, donor-stratified sketch."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from discovery.io.contract import InputError
from discovery.io.simulate import simulate, truth, write_simulated
from discovery.io.sketch import h5ad_n_obs, read_sketched, sketch_cells

KW = {"seed": 3, "n_donors": 8, "cells_per_donor": 150, "n_genes": 400}


@pytest.fixture(scope="module")
def chunked(tmp_path_factory):
    path = tmp_path_factory.mktemp("sketch") / "cohort.h5ad"
    write_simulated(path, "alzheimers", chunk_cells=97, **KW)
    return path


def test_chunked_file_is_the_same_cohort_with_its_own_draws(chunked, tmp_path):
    mem = simulate("alzheimers", **KW)
    disk = ad.read_h5ad(chunked)
    # same cells, donors, labels, genes and planted truth; counts from per-chunk generators
    pd.testing.assert_frame_equal(disk.obs, mem.obs)
    assert list(disk.var_names) == list(mem.var_names)
    assert truth(disk) == truth(mem)
    assert sp.issparse(disk.X) and disk.X.dtype == np.float32
    assert np.array_equal(disk.X.data, np.round(disk.X.data))
    # the same generative model: per-gene means agree closely
    m_disk, m_mem = np.asarray(disk.X.mean(0)).ravel(), np.asarray(mem.X.mean(0)).ravel()
    keep = m_mem > 1
    assert np.median(np.abs(np.log(m_disk[keep] / m_mem[keep]))) < 0.05
    # deterministic for a seed, whatever was written before
    again = tmp_path / "again.h5ad"
    write_simulated(again, "alzheimers", chunk_cells=97, **KW)
    assert (ad.read_h5ad(again).X != disk.X).nnz == 0
    assert h5ad_n_obs(chunked) == disk.n_obs


def test_sketch_is_proportional_within_donors_and_deterministic():
    obs = pd.DataFrame({"donor": np.repeat(["a", "b", "c"], [600, 300, 100])})
    empty = np.zeros(1000, bool)
    empty[:50] = True  # 50 empty cells of donor a are never drawn
    rows = sketch_cells(obs, 190, strata="donor", eligible=~empty, seed=0)
    assert len(rows) == 190 and len(np.unique(rows)) == 190
    assert not empty[rows].any()
    share = obs["donor"].iloc[rows].value_counts()
    # eligible 550 / 300 / 100 of 950 -> 110 / 60 / 20
    assert share.to_dict() == {"a": 110, "b": 60, "c": 20}
    assert np.array_equal(rows, sketch_cells(obs, 190, strata="donor", eligible=~empty, seed=0))
    assert not np.array_equal(rows, sketch_cells(obs, 190, strata="donor", eligible=~empty,
                                                 seed=1))
    assert len(sketch_cells(obs, 5000, strata="donor")) == 1000  # nothing to sketch


def test_backed_sketch_reads_the_chosen_rows_and_keeps_donor_means(chunked):
    full = ad.read_h5ad(chunked)
    sk, summary = read_sketched(chunked, max_cells=500, strata="donor", seed=0, chunk=211)
    assert sk.n_obs == 500 and summary["cells_in_file"] == full.n_obs
    assert summary["cells_kept"] == 500 and summary["empty_cells"] == 0
    rows = full.obs_names.get_indexer(sk.obs_names)
    assert (rows >= 0).all()
    assert (full.X[rows] != sk.X).nnz == 0  # exactly the file's rows
    assert json.loads(sk.uns["simulation"]["truth_json"]) == truth(full)
    # every donor keeps its share of cells
    frac = sk.obs["donor"].value_counts() / full.obs["donor"].value_counts()
    assert frac.between(500 / full.n_obs - 0.02, 500 / full.n_obs + 0.02).all()

    # donor means of log-normalised expression: the sketch's error is small next to the
    # donor-to-donor spread that the donor-level tests work with
    def donor_means(a):
        x = a.X.multiply(1e4 / a.X.sum(1)).tocsr().log1p()
        return pd.DataFrame(x.toarray(), index=a.obs["donor"].to_numpy()).groupby(level=0,
                                                                                  observed=True).mean()
    mf, ms = donor_means(full), donor_means(sk)
    genes = mf.columns[mf.mean() > 0.5]
    err = (ms[genes] - mf[genes]).abs().median().median()
    spread = mf[genes].std().median()
    assert err < 0.5 * spread


def test_scan_names_the_first_bad_row(tmp_path):
    x = sp.random(30, 20, density=0.3, format="csr", random_state=0, dtype=np.float32)
    x.data = np.ceil(x.data * 5)
    bad = x.toarray()
    bad[17, 3] = np.nan
    path = tmp_path / "nan.h5ad"
    obs = pd.DataFrame({"donor": ["d1", "d2"] * 15}, index=[f"c{i}" for i in range(30)])
    ad.AnnData(sp.csr_matrix(bad), obs=obs).write_h5ad(path)
    with pytest.raises(InputError, match=r"NaN or infinite values: first at row 17 \(cell 'c17'\)"):
        read_sketched(path, max_cells=10, strata="donor", chunk=7)
    frac = x.toarray()
    frac[22, 1] = 0.5
    ad.AnnData(sp.csr_matrix(frac), obs=obs).write_h5ad(path)
    with pytest.raises(InputError, match=r"non-integer .* row 22 .* input: lognorm"):
        read_sketched(path, max_cells=10, strata="donor", chunk=7)
    sk, _ = read_sketched(path, max_cells=10, strata="donor", chunk=7, require_counts=False)
    assert sk.n_obs == 10
    with pytest.raises(InputError, match="no column 'patient'"):
        read_sketched(path, max_cells=10, strata="patient")


@pytest.mark.slow
def test_run_sketches_a_file_larger_than_max_cells(chunked, tmp_path):
    from pipelines.config import load_config
    from pipelines.run import run_pipeline

    cfg = load_config(preset="quick", overrides={"preprocess": {"max_cells": 600}})
    res = run_pipeline(tmp_path / "run", data=chunked, config=cfg, quiet=True,
                       stop_after="preprocess")
    assert res.adata.n_obs == 600
    summary = json.loads((tmp_path / "run" / "input_summary.json").read_text())
    assert summary["sketch"]["cells_in_file"] == h5ad_n_obs(chunked)
    assert summary["sketch"]["strata"] == "donor"
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["input"]["params"]["input"]["sketch"]["cells_kept"] == 600
