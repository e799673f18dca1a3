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
