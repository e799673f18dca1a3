"""Technical-covariate-adjusted donor-level tests and discovery's evidence ranking."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from discovery.tl.stats import label_test


def test_label_test_without_covariates_is_the_pooled_t_test():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(20, 3))
    label = np.r_[np.ones(8), np.zeros(12)]
    y[label == 1, 0] += 1.5
    res = label_test(y, label, np.empty((20, 0)))
    ref = stats.ttest_ind(y[label == 1], y[label == 0], equal_var=True)
    np.testing.assert_allclose(res.t, ref.statistic, rtol=1e-10)
    np.testing.assert_allclose(res.p, ref.pvalue, rtol=1e-8)
    assert res.df == 18


def test_label_test_separates_label_from_an_aligned_covariate():
    rng = np.random.default_rng(1)
    n = 40
    label = np.r_[np.ones(20), np.zeros(20)]
    batch = label.copy()
    batch[[0, 1, 2, 3, 20, 21, 22, 23]] = 1 - batch[[0, 1, 2, 3, 20, 21, 22, 23]]
    y = np.column_stack([2.0 * batch, 1.0 * label]) + rng.normal(0, 0.3, (n, 2))
    res = label_test(y, label, batch[:, None])
    assert res.p[0] > 0.01 and res.p[1] < 1e-6  # the batch gene is not a label gene
    assert res.r2_covariates[0] > res.r2_label[0]
    assert res.r2_label[1] > res.r2_covariates[1]
    # an aliased covariate leaves nothing to test: NaN, not a wrong number
    assert np.isnan(label_test(y, label, label[:, None]).p).all()


@pytest.fixture(scope="module")
def aligned_cohort():
    """A random scenario whose batch program is 80% aligned with diagnosis, preprocessed."""
    from dataclasses import replace

    from discovery.io.scenarios import ArtifactSpec, draw_scenario, simulate_scenario
    from discovery.io.simulate import truth
    from discovery.pp.preprocess import preprocess
    from pipelines.benchmark import _keys_of

    s = draw_scenario(5, donors=(36, 40), cells_per_donor=(150, 160), n_genes=(600, 650))
    ieg = ("FOS", "JUN", "EGR1", "HSPA1A", "HSPA1B", "DNAJB1", "IER2", "FOSB", "JUNB")
    s = replace(s, artifacts=(ArtifactSpec("batch_program", 0.8, 1.5, ieg),))
    adata = simulate_scenario(s)
    tr = truth(adata)
    preprocess(adata, _keys_of(tr))
    return adata, tr


def test_batch_program_genes_are_technical_and_programs_are_not(aligned_cohort):
    from discovery.tl.baselines import rank_genes
    from discovery.tl.donor_tests import DONOR_TEST_COLUMNS, donor_gene_tests

    adata, tr = aligned_cohort
    dt = donor_gene_tests(adata)
    assert list(dt.columns) == DONOR_TEST_COLUMNS
    art = set(tr["artifacts"]["batch_program (1)"]["genes"])
    a = dt[dt["gene"].isin(art)]
    # batch enters the model wherever it does not leave too few degrees of freedom
    assert a["covariates"].str.contains("batch").mean() > 0.8
    a = a[a["covariates"].str.contains("batch")]
    assert a["technical"].mean() > 0.5
    # the plain pseudobulk test calls most of them case genes; the adjusted one does not
    pb = rank_genes(adata, "pseudobulk")
    assert (pb[pb["gene"].isin(art)]["qval"] < 0.05).sum() > (a["q"] < 0.05).sum()
    for p in tr["programs"].values():
        if p["kind"] != "shift" or p["effect_size"] < 1.0:
            continue
        g = dt[(dt["cell_type"] == p["cell_type"]) & dt["gene"].isin(p["genes"])]
        sign = 1 if p["direction"] == "up" else -1
        assert (np.sign(g["effect"]) == sign).mean() > 0.7
        assert not g["technical"].any()


def _hyp(ct, direction, genes, p, hid="H1", status="candidate", kind="mechanism"):
    return {"id": hid, "rank": 1, "cell_type": ct, "direction": direction, "kind": kind,
            "status": status, "score": 0.5,
            "genes": [{"symbol": g, "weight": w} for g, w in genes],
            "evidence": {"donor_level": {"p": p, "q": p, "adjusted": {"p": p}}}}


def _tests():
    genes = [f"G{i}" for i in range(10)]
    p = np.array([1e-6, 1e-5, 1e-4, 0.01, 0.2, 0.5, 0.6, 0.7, 0.8, 1e-8])
    eff = np.array([1, 1, 1, 1, 1, 1, -1, -1, -1, 1.0])
    tech = np.zeros(10, bool)
    tech[9] = True  # G9: strongest, but explained by batch
    return pd.DataFrame({"cell_type": "A", "gene": genes, "effect": eff, "t": eff, "p": p,
                         "q": p, "technical": tech})


def test_evidence_ranking_demotes_technical_and_promotes_model_genes_only_upward():
    from discovery.tl.hypotheses import evidence_ranking

    base = evidence_ranking([], _tests())
    up = base[base["direction"] == "up"].set_index("gene")["rank"]
    assert up["G0"] == 1 and up["G9"] > up["G3"]  # the technical gene falls behind
    # a significant model hypothesis lifts its weak gene G5, never lowers G0
    h = _hyp("A", "up", [("G5", 1.0), ("G0", 0.1)], 1e-7)
    r = evidence_ranking([h], _tests())
    up2 = r[r["direction"] == "up"].set_index("gene")
    assert up2.loc["G5", "rank"] < up["G5"] and up2.loc["G5", "promoted_by"] == "H1"
    assert up2.loc["G0", "rank"] <= 2
    # flagged, de_only and non-significant hypotheses promote nothing
    for hh in (_hyp("A", "up", [("G5", 1.0)], 1e-7, status="flagged"),
               _hyp("A", "up", [("G5", 1.0)], 1e-7, kind="de_only"),
               _hyp("A", "up", [("G5", 1.0)], 0.5)):
        r = evidence_ranking([hh], _tests())
        assert r[r["direction"] == "up"].set_index("gene").loc["G5", "rank"] == up["G5"]


def _artifact_hyp(flags):
    from discovery.tl.records import Evidence, Hypothesis

    ev = Evidence(attribution=0.2, attribution_weight=0.5, ablation_predicted=-0.1,
                  donor_level={"p": 1e-4, "q": 1e-3, "effect": 1.0}, stability=0.9,
                  replication={}, confounds={}, gene_sides={})
    genes = [{"symbol": g, "weight": 1.0} for g in ("HSPA1A", "HSPA1B", "DNAJB1", "G1", "G2")]
    return Hypothesis(cell_type="A", direction="up", genes=genes, features=["pooled:F1"],
                      feature_labels={}, population_graph="a_case", evidence=ev, biomarker={},
                      donors=[], flags=flags)


@pytest.mark.parametrize("technical", [False, True])
def test_gene_set_membership_is_a_caveat_unless_donor_evidence_says_technical(technical):
    """A heat-shock program that moves with diagnosis and not with batch stays a candidate
    with a caveat; the same genes explained by technical covariates stay flagged."""
    from discovery.tl.hypotheses import HypothesisSpec, _evidence_based_artifacts
    from discovery.tl.records import Flag

    flag = Flag("artifact_program", "Heat shock", 0.3, "3 of its top-10 genes are Heat shock")
    h = _artifact_hyp([flag])
    tests = pd.DataFrame({"cell_type": "A", "gene": ["HSPA1A", "HSPA1B", "DNAJB1", "G1", "G2"],
                          "effect": 1.0, "t": 5.0, "p": 1e-5, "q": 1e-4,
                          "technical": [technical] * 3 + [False, False]})
    _evidence_based_artifacts(h, tests, HypothesisSpec())
    kinds = [f.kind for f in h.flags]
    caveat_kinds = [c.kind for c in h.caveats]
    if technical:
        assert kinds == ["artifact_program"] and "artifact_program" not in caveat_kinds
    else:
        assert kinds == [] and "artifact_program" in caveat_kinds
        assert "caveat, not a flag" in h.caveats[0].detail
    # a hypothesis whose genes no donor-level test sees says so
    h2 = _artifact_hyp([])
    _evidence_based_artifacts(h2, tests.assign(q=0.5, p=0.4), HypothesisSpec())
    assert [c.kind for c in h2.caveats] == ["no_donor_signal"]


def test_squeeze_var_recovers_the_prior_and_shrinks_towards_it():
    """Variances drawn from a scaled inverse chi-square prior (d0 = 8, s0² = 0.5) and observed on
    4 df: the moment fit recovers the prior, and every posterior lies between s² and s0²."""
    from discovery.tl.stats import squeeze_var

    rng = np.random.default_rng(0)
    d0, s02, df, m = 8.0, 0.5, 4, 20000
    sigma2 = s02 * d0 / rng.chisquare(d0, m)
    s2 = sigma2 * rng.chisquare(df, m) / df
    post, d0_hat = squeeze_var(s2, df)
    assert 6.0 < d0_hat < 10.5
    lo, hi = np.minimum(s2, s02), np.maximum(s2, s02)
    assert ((post >= lo * 0.9) & (post <= hi * 1.1)).mean() > 0.99
    # no spread beyond sampling: every gene gets the pooled variance
    flat = 0.5 * rng.chisquare(df, m) / df
    post, d0_hat = squeeze_var(flat, df)
    assert d0_hat > 50 and np.ptp(post) < 0.2


def test_moderated_label_test_is_calibrated_and_more_powerful_with_few_donors():
    rng = np.random.default_rng(1)
    n, m = 8, 4000
    label = np.r_[np.ones(4), np.zeros(4)]
    sd = np.sqrt(0.3 * 6 / rng.chisquare(6, m))  # genes differ in variance, as genes do
    y = rng.normal(size=(n, m)) * sd
    y[label == 1, :200] += 1.2 * sd[:200]
    plain = label_test(y, label, np.empty((n, 0)))
    mod = label_test(y, label, np.empty((n, 0)), moderate=True)
    assert mod.df_prior > 0
    null = slice(200, None)
    assert abs((mod.p[null] < 0.05).mean() - 0.05) < 0.015
    # ranking by the moderated test puts more real genes in the top 200
    top = lambda p: (np.argsort(p, kind="mergesort")[:200] < 200).sum()  # noqa: E731
    assert top(mod.p) >= top(plain.p)


def test_cauchy_combination_is_calibrated_for_dependent_tests():
    from discovery.tl.stats import cauchy_combination

    rng = np.random.default_rng(2)
    z = rng.normal(size=50000)
    z2 = 0.7 * z + np.sqrt(1 - 0.7**2) * rng.normal(size=50000)  # correlated tests
    p = cauchy_combination(np.vstack([stats.norm.sf(z), stats.norm.sf(z2)]))
    assert abs((p < 0.05).mean() - 0.05) < 0.01
    assert abs((p < 0.01).mean() - 0.01) < 0.004
    one = np.array([[0.3, 1e-4]])
    np.testing.assert_allclose(cauchy_combination(one), [0.3, 1e-4], rtol=1e-6)


def _state_cohort(seed=0, n_donors=16, cells=120, frac=0.3, fold=4.0, base_shape=2.0,
                  compensate=True):
    """Counts of one cell type: in every case donor a share ``frac`` of cells enters a state that
    raises 5 genes ``fold``-fold while (``compensate``) its other cells lower them, so that the
    donors' mean *log* expression does not move (a co-expression state, as in the randomised
    suite; the pseudobulk, a sum, still rises about 1.6-fold, which the mean test sees weakly)."""
    import anndata as ad
    import scipy.sparse as sp

    from discovery.io.contract import Keys
    from discovery.pp.preprocess import preprocess

    rng = np.random.default_rng(seed)
    n_genes = 200
    base = rng.gamma(base_shape, 1.0, n_genes)
    donor = np.repeat(np.arange(n_donors), cells)
    case = donor % 2 == 1
    mu = np.tile(base, (len(donor), 1)) * np.exp(rng.normal(0, 0.3, (n_donors, n_genes)))[donor]
    state = case & (rng.random(len(donor)) < frac)
    mu[np.ix_(state, np.arange(5))] *= fold
    if compensate:
        mu[np.ix_(case & ~state, np.arange(5))] *= np.exp(-np.log(fold) * frac / (1 - frac))
    counts = rng.poisson(mu).astype(np.float32)
    obs = pd.DataFrame({"diagnosis": np.where(case, "AD", "ctrl"),
                        "donor": [f"d{d}" for d in donor], "cell_type": "Neuron"},
                       index=[f"c{i}" for i in range(len(donor))])
    adata = ad.AnnData(sp.csr_matrix(counts), obs=obs,
                       var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)]))
    preprocess(adata, Keys(label_key="diagnosis", case="AD", donor_key="donor",
                           cell_type_key="cell_type", batch_key=None))
    return adata


def test_tail_tests_see_a_state_that_the_donor_mean_misses():
    """The planted state's genes: the combined evidence (p_up) puts them at the top of the
    cell type's up list, ahead of where the mean test alone puts them; the null genes stay
    calibrated."""
    from discovery.tl.donor_tests import donor_gene_tests
    from discovery.tl.hypotheses import evidence_ranking

    dt = donor_gene_tests(_state_cohort(seed=1, n_donors=24))
    planted = dt["gene"].isin([f"G{i}" for i in range(5)])
    assert dt.loc[planted, "t_tail_up"].mean() > dt.loc[planted, "t"].mean()
    up = evidence_ranking([], dt)
    up = up[up["direction"] == "up"]["gene"].head(5).tolist()
    by_mean = dt.sort_values("t", ascending=False)["gene"].head(5).tolist()
    hits = lambda genes: len(set(genes) & {f"G{i}" for i in range(5)})  # noqa: E731
    assert hits(up) == 5 and hits(by_mean) < 5
    null = dt[~planted]
    assert (null["p_up"] < 0.05).mean() < 0.12 and (null["q_up"] < 0.05).sum() <= 2


def test_down_evidence_mirrors_up_evidence():
    """Half of the case donors' cells lower the planted genes 4-fold: p_down carries them to the
    top of the down list and out of the up list, and the de_only machinery reads the directed
    columns."""
    from discovery.tl.donor_tests import donor_gene_tests
    from discovery.tl.hypotheses import _directed_tests, evidence_ranking

    dt = donor_gene_tests(_state_cohort(seed=1, n_donors=24, frac=0.5, fold=0.25,
                                         compensate=False))
    planted = {f"G{i}" for i in range(5)}
    r = evidence_ranking([], dt)
    down = r[r["direction"] == "down"]["gene"].head(5)
    up = r[r["direction"] == "up"]["gene"].head(5)
    assert len(planted & set(down)) >= 4 and not planted & set(up)
    by = dict(_directed_tests(dt))
    assert planted <= set(by[("Neuron", "down")]["gene"])
    assert not planted & set(by[("Neuron", "up")]["gene"])
    # the directed table's p is that direction's evidence
    d = by[("Neuron", "down")].set_index("gene")
    np.testing.assert_allclose(d["p"], d["p_down"])


def test_cauchy_combination_of_two_tests_has_the_closed_form():
    from discovery.tl.stats import cauchy_combination

    p = np.array([[0.01], [0.2]])
    t = np.tan((0.5 - p) * np.pi).mean()
    np.testing.assert_allclose(cauchy_combination(p), [0.5 - np.arctan(t) / np.pi])
    # one strong test dominates a null one: the combination is near twice the smaller p
    assert 0.9e-4 < cauchy_combination(np.array([[1e-4], [0.5]]))[0] < 2.1e-4


def test_tail_shares_stay_proportions_when_float_sums_overshoot():
    """A gene at zero in every cell has every cell in its lower tail: the share is exactly 1
    (float32 sums of 1/n can exceed it, and arcsin(sqrt(share)) would be NaN)."""
    from discovery.tl.donor_tests import tail_shares

    donors = np.repeat([f"d{i}" for i in range(4)], [3, 7, 11, 13])
    counts = np.zeros((len(donors), 3))
    counts[:, 1] = np.arange(len(donors)) % 5
    up, low = tail_shares(counts, donors, [f"d{i}" for i in range(4)])
    assert ((0 <= up) & (up <= 1)).all() and ((0 <= low) & (low <= 1)).all()
    np.testing.assert_allclose(low[:, 0], 1.0)
    assert np.isfinite(np.arcsin(np.sqrt(low))).all()
