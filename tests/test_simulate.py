"""Simulated cohorts: deterministic, and the planted truth is really in the counts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from discovery.io import bundled
from discovery.io.contract import validate
from discovery.io.simulate import SCENARIOS, real_gene_origin, simulate, truth
from discovery.tl.baselines import pseudobulk_matrix

from .conftest import SMALL


def test_same_seed_is_byte_identical():
    a = simulate("alzheimers", seed=3, **SMALL)
    b = simulate("alzheimers", seed=3, **SMALL)
    assert a.X.data.tobytes() == b.X.data.tobytes()
    assert a.X.indices.tobytes() == b.X.indices.tobytes()
    assert a.X.indptr.tobytes() == b.X.indptr.tobytes()
    assert a.uns["simulation"]["truth_json"] == b.uns["simulation"]["truth_json"]
    assert a.obs.equals(b.obs)


def test_different_seed_differs():
    a = simulate("alzheimers", seed=1, **SMALL)
    b = simulate("alzheimers", seed=2, **SMALL)
    assert a.n_obs != b.n_obs or a.X.data.tobytes() != b.X.data.tobytes()


def test_default_cohort_shape_and_contract():
    adata = simulate("alzheimers", seed=0)
    validate(adata)
    assert adata.n_vars >= 2000
    donors = adata.obs.groupby("donor", observed=True)["diagnosis"].first()
    assert len(donors) >= 32 and (donors == "AD").sum() == len(donors) // 2
    assert adata.obs["cell_type"].nunique() >= 6
    x = adata.X.data
    assert np.all(x == np.round(x)) and x.min() >= 0
    lib = np.asarray(adata.X.sum(1)).ravel()
    assert 1000 < np.median(lib) < 10000  # realistic single-nucleus library sizes
    # real marker symbols are present
    for gs in bundled.gene_sets(category="marker", tissue="brain"):
        assert set(gs.genes) <= set(adata.var_names)


def test_truth_is_json_safe_and_complete(raw_small):
    tr = truth(raw_small)
    json.dumps(tr)
    assert len(tr["programs"]) >= 3
    for prog in tr["programs"].values():
        assert prog["direction"] in ("up", "down")
        assert set(prog["genes"]) <= set(raw_small.var_names)
    cases = [d for d, v in tr["donors"].items() if v["diagnosis"] == "AD"]
    for prog in tr["programs"].values():
        assert 0 < len(prog["affected_donors"]) < len(cases)  # not every case donor affected
        assert set(prog["affected_donors"]) <= set(cases)
    assert {a["driven_by"] for a in tr["artifacts"].values()} == {"batch", "pct_counts_mt"}


def _program_logfc(adata, prog):
    from discovery.io.contract import Keys

    keys = Keys(case="AD", controls=("Control",), batch_key="batch")
    donors, summed, _ = pseudobulk_matrix(adata, keys, prog["cell_type"], min_cells=3)
    cpm = np.log2(summed / summed.sum(1, keepdims=True) * 1e6 + 1)
    cols = [adata.var_names.get_loc(g) for g in prog["genes"]]
    score = cpm[:, cols].mean(1)
    tr = truth(adata)
    affected = np.isin(donors, prog["affected_donors"])
    control = np.array([tr["donors"][d]["diagnosis"] == "Control" for d in donors])
    return score[affected].mean() - score[control].mean()


@pytest.mark.parametrize("scenario", ["alzheimers", "null"])
def test_programs_move_in_their_direction_only_with_effect(scenario):
    adata = simulate(scenario, seed=0, **SMALL)
    tr = truth(adata)
    ref = truth(simulate("alzheimers", seed=0, **SMALL))["programs"]
    for name, prog in tr["programs"].items():
        if scenario == "null":
            prog = {**prog, "affected_donors": ref[name]["affected_donors"]}
        lfc = _program_logfc(adata, prog)
        sign = 1 if prog["direction"] == "up" else -1
        if scenario == "alzheimers":
            assert sign * lfc > 0.5, (name, lfc)
        else:
            assert abs(lfc) < 0.4, (name, lfc)


def test_confounders_and_alignment():
    for name, lo, hi in (("alzheimers", 0.6, 0.8), ("confounded", 0.85, 0.95), ("null", 0.4, 0.6)):
        adata = simulate(name, seed=0)
        d = adata.obs.groupby("donor", observed=True)[["diagnosis", "batch"]].first()
        share = (d.loc[d["diagnosis"] == "AD", "batch"] == "B2").mean()
        assert lo <= share <= hi, (name, share)
    adata = simulate("alzheimers", seed=0)
    mt = adata.var_names.str.startswith("MT-")
    frac = np.asarray(adata.X[:, mt].sum(1)).ravel() / np.asarray(adata.X.sum(1)).ravel()
    is_ad = (adata.obs["diagnosis"] == "AD").to_numpy()
    assert np.median(frac[is_ad]) > 1.2 * np.median(frac[~is_ad])
    # neuronal loss: fewer excitatory neurons in cases
    ex = (adata.obs["cell_type"] == "Excitatory neurons").to_numpy()
    assert ex[is_ad].mean() < 0.85 * ex[~is_ad].mean()


def test_unknown_scenario_message():
    with pytest.raises(ValueError, match="unknown scenario 'foo'; choose one of alzheimers"):
        simulate("foo")
    assert {"alzheimers", "null", "confounded"} <= set(SCENARIOS)


def test_confounded_clean_is_the_same_cohort_without_its_artifacts():
    """Same donors, batches, cells and program states as ``confounded``; no batch program,
    no batch library shift and no extra mitochondrial reads in cases."""
    kw = dict(n_donors=12, cells_per_donor=60)
    dirty, clean = simulate("confounded", seed=1, **kw), simulate("confounded_clean", seed=1, **kw)
    cols = ["donor", "diagnosis", "batch", "cell_type"]
    pd.testing.assert_frame_equal(dirty.obs[cols], clean.obs[cols])
    td, tc = truth(dirty), truth(clean)
    assert td["programs"] == tc["programs"]
    is_ad = (clean.obs["diagnosis"] == "AD").to_numpy()
    tech = (clean.obs["batch"] == "B2").to_numpy()

    def mito(a):
        mt = a.var_names.str.startswith("MT-")
        return np.asarray(a.X[:, mt].sum(1)).ravel() / np.asarray(a.X.sum(1)).ravel()

    assert np.median(mito(dirty)[is_ad]) > 1.5 * np.median(mito(dirty)[~is_ad])
    assert 0.8 < np.median(mito(clean)[is_ad]) / np.median(mito(clean)[~is_ad]) < 1.25
    genes = td["artifacts"]["technical batch"]["genes"]
    cols = dirty.var_names.isin(genes)
    for a, lo, hi in ((dirty, 1.5, np.inf), (clean, 0.8, 1.25)):
        x = np.asarray(a.X[:, cols].sum(1)).ravel() / np.asarray(a.X.sum(1)).ravel()
        assert lo < x[tech].mean() / x[~tech].mean() < hi


def test_unlisted_twin_moves_the_batch_program_off_every_bundled_set():
    """The ``_unlisted`` twin is the same cohort count for count; its batch-shifted genes carry
    names in no bundled gene set, and the listed artifact names now label genes the batch does
    not move. Filler genes look like gene symbols, never like a placeholder or a QC group."""
    kw = dict(n_donors=12, cells_per_donor=60)
    listed, unlisted = simulate("confounded", seed=2, **kw), simulate("confounded_unlisted",
                                                                     seed=2, **kw)
    assert (listed.X != unlisted.X).nnz == 0
    pd.testing.assert_frame_equal(listed.obs, unlisted.obs)
    members = {g for gs in bundled.gene_sets() for g in gs.genes}
    g_listed = truth(listed)["artifacts"]["technical batch"]["genes"]
    g_unlisted = truth(unlisted)["artifacts"]["technical batch"]["genes"]
    assert set(g_listed) <= members and not set(g_unlisted) & members
    pos = {g: i for i, g in enumerate(listed.var_names)}
    pos_twin = {g: i for i, g in enumerate(unlisted.var_names)}
    assert [pos[g] for g in g_listed] == [pos_twin[g] for g in g_unlisted]
    assert sorted(listed.var_names) == sorted(unlisted.var_names)  # names permuted only

    # the batch shift follows the columns, whatever they are called
    tech = (listed.obs["batch"] == "B2").to_numpy()

    def batch_ratio(a, genes):
        x = np.asarray(a.X[:, a.var_names.isin(genes)].sum(1)).ravel() / np.asarray(
            a.X.sum(1)).ravel()
        return x[tech].mean() / x[~tech].mean()

    assert batch_ratio(unlisted, g_unlisted) > 1.5
    assert 0.7 < batch_ratio(unlisted, g_listed) < 1.3  # listed names, unaffected genes
    filler = [g for g in listed.var_names if g not in real_gene_origin()]
    assert not any(g.startswith(("SIMG", "RPS", "RPL")) for g in filler)
    assert all(g[:3].isalpha() and g[-1].isdigit() for g in filler[:50])


def test_unlisted_twin_records_each_gene_by_its_role():
    """``var['gene_origin']`` follows the genes, not their names: in the twin the batch genes
    are still the artifact genes and the listed artifact names sit on filler genes."""
    kw = dict(n_donors=12, cells_per_donor=30)
    listed, unlisted = simulate("alzheimers", seed=0, **kw), simulate("alzheimers_unlisted",
                                                                     seed=0, **kw)
    assert (listed.var["gene_origin"].to_numpy() == unlisted.var["gene_origin"].to_numpy()).all()
    batch = truth(unlisted)["artifacts"]["technical batch"]["genes"]
    assert "filler" not in set(unlisted.var.loc[batch, "gene_origin"])
    assert (unlisted.var["gene_origin"] == "filler").sum() > 1000
