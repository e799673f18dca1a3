"""Baselines recover planted programs on signal and stay quiet (donor level) on null."""

from __future__ import annotations

import numpy as np
import pytest

from discovery.io.simulate import simulate, truth
from discovery.pp.preprocess import preprocess
from discovery.tl.baselines import BASELINES, RANKING_COLUMNS, rank_genes
from discovery.tl.yardstick import score_ranking


@pytest.fixture(scope="module")
def alz():
    a = simulate("alzheimers", seed=1, n_donors=20, cells_per_donor=160, n_genes=800)
    preprocess(a)
    return a


@pytest.fixture(scope="module")
def ranked(alz):
    """Each method's ranking of ``alz``, computed once (PyDESeq2 takes a while)."""
    memo: dict[str, object] = {}
    return lambda method: memo.setdefault(method, rank_genes(alz, method))


@pytest.mark.parametrize("method", sorted(BASELINES))
def test_ranking_table_shape(alz, ranked, method):
    r = ranked(method)
    assert list(r.columns) == RANKING_COLUMNS
    for _, grp in r.groupby(["cell_type", "direction"]):
        assert len(grp) == alz.n_vars and grp["gene"].is_unique
        assert list(grp["rank"]) == list(range(1, alz.n_vars + 1))


@pytest.mark.parametrize("method,min_auprc", [("pseudobulk", 0.5), ("wilcoxon", 0.5),
                                              ("logreg_l1", 0.4), ("pydeseq2", 0.5)])
def test_baselines_recover_planted_programs(alz, ranked, method, min_auprc):
    scores = score_ranking(ranked(method), truth(alz), list(alz.var_names))
    assert scores["auprc"].mean() >= min_auprc, scores


def test_pydeseq2_puts_batch_in_the_design_only_when_estimable(alz, caplog):
    """The batch enters DESeq2's design (~ batch + condition) when it varies within each class;
    a batch that is the condition itself would make the contrast inestimable: left out, said."""
    import logging

    from discovery.io.contract import get_keys
    from discovery.tl.baselines import _donor_design, pseudobulk_matrix

    keys = get_keys(alz)
    ct = next(iter(truth(alz)["programs"].values()))["cell_type"]
    donors, _, is_case = pseudobulk_matrix(alz, keys, ct)
    meta, terms = _donor_design(alz, keys, donors, is_case)
    assert terms == ["term0"] and meta["term0"].nunique() >= 2
    confounded = alz.copy()
    confounded.obs[keys.batch_key] = confounded.obs[keys.label_key].astype(str)
    with caplog.at_level(logging.WARNING, logger="discovery.tl.baselines"):
        meta, terms = _donor_design(confounded, keys, donors, is_case)
    assert terms == [] and list(meta.columns) == ["condition"]
    assert "confounded with the condition" in caplog.text


def test_pseudobulk_is_calibrated_on_null():
    a = simulate("null", seed=4, n_donors=20, cells_per_donor=100, n_genes=800)
    preprocess(a)
    r = rank_genes(a, "pseudobulk")
    up = r[r["direction"] == "up"]
    assert (up["qval"] < 0.05).sum() == 0
    p = up["pval"].to_numpy()
    p = p[p < 1]  # tested genes
    assert 0.02 < (p < 0.05).mean() < 0.09


def test_wilcoxon_pseudoreplication_shows_on_null():
    """Cell-level tests treat cells as samples: on null data they still find 'hits'."""
    a = simulate("null", seed=4, n_donors=20, cells_per_donor=100, n_genes=800)
    preprocess(a)
    r = rank_genes(a, "wilcoxon")
    assert (r.loc[r["direction"] == "up", "qval"] < 0.05).sum() > 0


def test_unknown_method(alz):
    with pytest.raises(ValueError, match="unknown baseline 'deseq'"):
        rank_genes(alz, "deseq")


def test_requires_preprocess(raw_small):
    from discovery.io.contract import InputError

    with pytest.raises(InputError, match=r"run `discovery.pp.preprocess\(adata"):
        rank_genes(raw_small, "pseudobulk")


def test_logreg_sign_matches_direction(alz):
    """The L1-logistic coefficient of a planted gene has the sign of its program's direction
    (positive for programs up in AD, negative for the one down); the 'down' table is the 'up'
    table with the sign flipped; each table is ranked by decreasing score."""
    r = rank_genes(alz, "logreg_l1")
    up = r[r["direction"] == "up"].set_index(["cell_type", "gene"])["score"]
    down = r[r["direction"] == "down"].set_index(["cell_type", "gene"])["score"]
    np.testing.assert_allclose(down.loc[up.index].to_numpy(), -up.to_numpy())
    checked = 0
    for prog in truth(alz)["programs"].values():
        coef = up.loc[prog["cell_type"]].reindex(prog["genes"]).dropna()
        coef = coef[coef != 0]
        assert len(coef) >= 3, (prog["cell_type"], coef)  # the program is selected at all
        sign = 1 if prog["direction"] == "up" else -1
        assert (np.sign(coef) == sign).mean() >= 0.9, (prog["cell_type"], coef)
        checked += 1
    assert checked == 4 and {p["direction"] for p in truth(alz)["programs"].values()} == {
        "up", "down"}
    for _, g in r.groupby(["cell_type", "direction"]):
        assert np.all(np.diff(g.sort_values("rank")["score"].to_numpy()) <= 1e-12)
