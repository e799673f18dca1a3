"""Donor-level statistics checked against reference implementations."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy import stats

from discovery.tl.stats import aggregate_by, bh_fdr, donor_test, welch_t


def test_bh_matches_scipy():
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(size=200), rng.uniform(0, 1e-3, size=20)])
    np.testing.assert_allclose(bh_fdr(p), stats.false_discovery_control(p), rtol=1e-12)


def test_bh_keeps_nan():
    q = bh_fdr(np.array([0.01, np.nan, 0.04]))
    assert np.isnan(q[1])
    np.testing.assert_allclose(q[[0, 2]], [0.02, 0.04])


def test_welch_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1, 2, size=(9, 5)), rng.normal(0, 1, size=(12, 5))
    res = welch_t(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    np.testing.assert_allclose(res.t, ref.statistic, rtol=1e-10)
    np.testing.assert_allclose(res.p, ref.pvalue, rtol=1e-10)


def test_welch_constant_column_is_null():
    res = welch_t(np.ones((4, 1)), np.ones((5, 1)))
    assert res.t[0] == 0 and res.p[0] == 1


def test_aggregate_by_sum_and_mean():
    x = sp.csr_matrix(np.array([[1, 2], [3, 4], [5, 6]], float))
    names, s, n = aggregate_by(x, np.array(["b", "a", "b"]))
    assert list(names) == ["a", "b"] and list(n) == [1, 2]
    np.testing.assert_array_equal(s, [[3, 4], [6, 8]])
    _, m, _ = aggregate_by(x, np.array(["b", "a", "b"]), how="mean")
    np.testing.assert_array_equal(m, [[3, 4], [3, 4]])


def test_donor_test_null_is_calibrated():
    rng = np.random.default_rng(2)
    values = rng.normal(size=(20, 2000))
    res = donor_test(values, np.arange(20) < 10)
    assert 0.03 < (res.p < 0.05).mean() < 0.07
    assert (res.q < 0.05).sum() == 0


def test_aggregate_by_equals_scanpys_aggregate():
    """Our pseudobulk sums are scanpy's (sc.get.aggregate), which measured slower for the same
    numbers (benchmarks/results/libraries.md), so ours stays."""
    import anndata as ad
    import pandas as pd
    import scanpy as sc

    rng = np.random.default_rng(3)
    x = sp.random(300, 40, density=0.2, random_state=3, format="csr") * 10
    x.data = np.round(x.data)
    groups = rng.choice(["d1|A", "d2|A", "d1|B", "d3|B"], size=300)
    names, summed, n = aggregate_by(x, groups)
    ref = sc.get.aggregate(ad.AnnData(X=x, obs=pd.DataFrame(
        {"g": pd.Categorical(groups)}, index=[str(i) for i in range(300)])), by="g", func="sum")
    np.testing.assert_array_equal(np.asarray(ref.layers["sum"])[ref.obs_names.get_indexer(names)],
                                  summed)
    np.testing.assert_array_equal(n, pd.Series(groups).value_counts().loc[names].to_numpy())
