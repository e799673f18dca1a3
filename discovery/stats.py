"""Donor-aware statistics shared by every claim the project makes.

Cells of one donor are not independent samples, so evidence is computed on pseudobulk: one value
per donor (and cell type), tested between case and control donors, with Benjamini-Hochberg FDR.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

__all__ = ["DonorTest", "aggregate_by", "bh_fdr", "donor_test", "welch_t"]


def bh_fdr(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values); NaN stays NaN.

    q_(i) = min_{j >= i} p_(j) * m / j over the sorted p-values, capped at 1.
    """
    p = np.asarray(p, dtype=float)
    q = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return q
    pv = p[ok]
    order = np.argsort(pv, kind="mergesort")
    ranked = pv[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(ranked, 1.0)
    q[ok] = out
    return q


def aggregate_by(
    values: np.ndarray | sp.spmatrix, groups: np.ndarray, *, how: str = "sum"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Aggregate rows of ``values: (cells, n)`` by ``groups: (cells,)``.

    Returns ``(group_names, aggregated: (groups, n), n_cells_per_group)``; ``how`` is ``sum``
    (pseudobulk counts) or ``mean`` (mean activation).
    """
    codes, names = pd.factorize(np.asarray(groups), sort=True)
    n_groups = len(names)
    indicator = sp.csr_matrix(
        (np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(n_groups, len(codes))
    )
    agg = indicator @ values
    agg = agg.toarray() if sp.issparse(agg) else np.asarray(agg)
    n = np.bincount(codes, minlength=n_groups)
    if how == "mean":
        agg = agg / n[:, None]
    elif how != "sum":
        msg = f"how must be 'sum' or 'mean', got {how!r}"
        raise ValueError(msg)
    return np.asarray(names), agg, n


class WelchResult(NamedTuple):
    t: np.ndarray
    p: np.ndarray
    effect: np.ndarray  # mean(case) - mean(control)


def welch_t(case: np.ndarray, control: np.ndarray) -> WelchResult:
    """Column-wise Welch t-test of ``case: (n1, m)`` vs ``control: (n0, m)`` (two-sided).

    t = (mean1 - mean0) / sqrt(s1^2/n1 + s0^2/n0), Welch-Satterthwaite degrees of freedom.
    Columns with zero variance in both groups get t = 0, p = 1.
    """
    case = np.asarray(case, float)
    control = np.asarray(control, float)
    n1, n0 = case.shape[0], control.shape[0]
    m1, m0 = case.mean(0), control.mean(0)
    v1 = case.var(0, ddof=1) / n1
    v0 = control.var(0, ddof=1) / n0
    se2 = v1 + v0
    effect = m1 - m0
    with np.errstate(divide="ignore", invalid="ignore"):
        t = effect / np.sqrt(se2)
        df = se2**2 / (v1**2 / (n1 - 1) + v0**2 / (n0 - 1))
        p = 2 * stats.t.sf(np.abs(t), df)
    flat = se2 <= 0
    t = np.where(flat, 0.0, t)
    p = np.where(flat, 1.0, p)
    return WelchResult(t, p, effect)


class DonorTest(NamedTuple):
    """Donor-level (pseudobulk) case-vs-control test of one or more quantities."""

    effect: np.ndarray  # mean over case donors - mean over control donors
    t: np.ndarray
    p: np.ndarray
    q: np.ndarray
    n_case: int
    n_control: int


def donor_test(per_donor: np.ndarray, donor_is_case: np.ndarray) -> DonorTest:
    """Test ``per_donor: (donors, m)`` values between case and control donors (Welch, BH)."""
    per_donor = np.asarray(per_donor, float)
    if per_donor.ndim == 1:
        per_donor = per_donor[:, None]
    donor_is_case = np.asarray(donor_is_case, bool)
    n1, n0 = int(donor_is_case.sum()), int((~donor_is_case).sum())
    if n1 < 2 or n0 < 2:
        nan = np.full(per_donor.shape[1], np.nan)
        return DonorTest(nan, nan, nan, nan, n1, n0)
    res = welch_t(per_donor[donor_is_case], per_donor[~donor_is_case])
    return DonorTest(res.effect, res.t, res.p, bh_fdr(res.p), n1, n0)
