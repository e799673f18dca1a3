"""Donor-aware statistics shared by every claim the project makes.

Cells of one donor are not independent samples, so evidence is computed on pseudobulk: one value
per donor (and cell type), tested between case and control donors, with Benjamini-Hochberg FDR.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

from models.errors import InputError

__all__ = ["DonorTest", "LeastSquares", "aggregate_by", "bh_fdr", "cauchy_combination",
           "donor_test", "label_test", "least_squares", "logit", "partial_f_tests", "partial_r2",
           "r_squared", "residualise", "robust_upper", "squeeze_var", "welch_t"]


def bh_fdr(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) by ``scipy.stats.false_discovery_control``
    over the finite p-values; NaN stays NaN (an untested gene is not a discovery).

    q_(i) = min_{j >= i} p_(j) * m / j over the sorted p-values, capped at 1.
    """
    p = np.asarray(p, dtype=float)
    q = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = stats.false_discovery_control(p[ok], method="bh")
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
        raise InputError(msg)
    return np.asarray(names), agg, n


class WelchResult(NamedTuple):
    t: np.ndarray
    p: np.ndarray
    effect: np.ndarray  # mean(case) - mean(control)


def welch_t(case: np.ndarray, control: np.ndarray) -> WelchResult:
    """Column-wise Welch t-test of ``case: (n1, m)`` vs ``control: (n0, m)`` (two-sided), by
    ``scipy.stats.ttest_ind(equal_var=False)``.

    t = (mean1 - mean0) / sqrt(s1^2/n1 + s0^2/n0), Welch-Satterthwaite degrees of freedom.
    Columns with zero variance in both groups get t = 0, p = 1 (scipy gives NaN: no evidence
    either way, and a constant gene must not rank as a discovery).
    """
    case = np.asarray(case, float)
    control = np.asarray(control, float)
    effect = case.mean(0) - control.mean(0)
    flat = (case.var(0, ddof=1) / case.shape[0] + control.var(0, ddof=1) / control.shape[0]) <= 0
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the flat columns, handled below
        res = stats.ttest_ind(case, control, axis=0, equal_var=False)
    t = np.where(flat, 0.0, res.statistic)
    p = np.where(flat, 1.0, res.pvalue)
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


# ------------------------------------------------------------------------- least squares
# One implementation of ordinary least squares with an intercept, used by feature annotation
# (partial R² of covariates), hypotheses (residualising genes on technical axes, donor-level
# confound checks) and refinement (F-tests of the artifact's genes).
def _design(covars: np.ndarray, n: int) -> np.ndarray:
    """``[1, covars]``: the covariates with an intercept column (only the intercept if empty)."""
    covars = np.asarray(covars, float)
    return np.column_stack([np.ones(n), covars]) if covars.size else np.ones((n, 1))


class LeastSquares(NamedTuple):
    residuals: np.ndarray  # same shape as y
    rss: float  # residual sum of squares (summed over columns of y)
    rank: int  # rank of the design [1, covars]

    @property
    def rss_cols(self) -> np.ndarray:
        """Residual sum of squares per column of ``y``."""
        r = self.residuals
        return (r**2).sum(0) if r.ndim > 1 else np.array([(r**2).sum()])


def least_squares(y: np.ndarray, covars: np.ndarray) -> LeastSquares:
    """Least squares of ``y: (n,) or (n, k)`` on ``covars: (n, p)`` plus an intercept.

    beta = argmin |y - [1, X] beta|², residuals = y - [1, X] beta.
    """
    X = _design(covars, len(y))
    beta, _, rank, _ = np.linalg.lstsq(X, y, rcond=None)
    res = y - X @ beta
    return LeastSquares(res, float((res**2).sum()), int(rank))


def residualise(y: np.ndarray, covars: np.ndarray) -> np.ndarray:
    """Residuals of the columns of ``y`` after least squares on ``covars`` (+ intercept)."""
    return least_squares(y, covars).residuals


def r_squared(y: np.ndarray, covars: np.ndarray) -> float:
    """R² = 1 - RSS / TSS of ``y: (n,)`` on ``covars`` (+ intercept); 0 when ``y`` is constant."""
    tot = ((y - y.mean()) ** 2).sum()
    return float(1 - least_squares(y, covars).rss / tot) if tot > 0 else 0.0


def partial_r2(y: np.ndarray, label: np.ndarray, cov: np.ndarray) -> tuple[float, float]:
    """Partial R² of ``cov`` and of ``label: (n,)`` for ``y``, each given the other.

    R²(cov | label) = R²(label, cov) - R²(label), floored at 0; likewise for the label.
    """
    full = r_squared(y, np.column_stack([label, cov]))
    return max(0.0, full - r_squared(y, label[:, None])), max(0.0, full - r_squared(y, cov))


def partial_f_tests(y: np.ndarray, terms: dict[str, np.ndarray],
                    nuisance: np.ndarray) -> dict[str, tuple[float, float]]:
    """For each term: (partial R², F-test p) given the other terms and the nuisance columns.

    F = ((RSS_reduced - RSS_full) / df1) / (RSS_full / df2), df1 = rank difference,
    df2 = n - rank_full; p is NaN when the test has no degrees of freedom.
    """
    full = least_squares(y, np.column_stack([*terms.values(), nuisance]))
    tot = float(((y - y.mean()) ** 2).sum())
    out = {}
    for name in terms:
        red = least_squares(y, np.column_stack([v for k, v in terms.items() if k != name]
                                               + [nuisance]))
        df1, df2 = full.rank - red.rank, len(y) - full.rank
        r2 = max(0.0, (red.rss - full.rss) / tot) if tot > 0 else 0.0
        if df1 <= 0 or df2 <= 0 or full.rss <= 0:
            out[name] = (r2, float("nan"))
            continue
        f = ((red.rss - full.rss) / df1) / (full.rss / df2)
        out[name] = (r2, float(stats.f.sf(max(f, 0.0), df1, df2)))
    return out


class LabelTest(NamedTuple):
    """The label's coefficient in ``y ~ 1 + label + covariates``, column-wise."""

    effect: np.ndarray  # coefficient of the label (case - control, adjusted)
    t: np.ndarray
    p: np.ndarray  # two-sided
    df: int  # residual degrees of freedom (0: not testable)
    r2_covariates: np.ndarray  # partial R² of the covariates given the label
    r2_label: np.ndarray  # partial R² of the label given the covariates
    df_prior: float = 0.0  # prior degrees of freedom added by variance moderation (inf: pooled)

    def one_sided(self, sign: float = 1.0) -> np.ndarray:
        """One-sided p-values of ``sign * t > 0``, on the same distribution as ``p`` (NaN where
        ``p`` is)."""
        p = _t_sf(np.nan_to_num(sign * np.asarray(self.t, float)), self.df + self.df_prior)
        return np.where(np.isfinite(self.p), p, np.nan)


def _t_sf(t: np.ndarray, df: float) -> np.ndarray:
    """Upper tail of Student's t on ``df`` degrees of freedom; normal when ``df`` is infinite
    (a moderated test whose prior is the pooled variance)."""
    return stats.t.sf(t, df) if np.isfinite(df) else stats.norm.sf(t)


def squeeze_var(s2: np.ndarray, df: int) -> tuple[np.ndarray, float]:
    """Empirical-Bayes moderated variances (Smyth 2004, limma's ``squeezeVar``).

    The gene-wise residual variances ``s2`` (each on ``df`` degrees of freedom) are taken as
    draws from a scaled inverse chi-square prior s0² d0 / χ²(d0); d0 and s0² are fitted by the
    method of moments on log s2, and each variance is shrunk to its posterior mean
    (d0 s0² + df s2) / (d0 + df). With few donors per gene this stops a gene whose handful of
    donors happen to agree from out-ranking a larger, real effect. Returns ``(posterior
    variances, d0)``; d0 is ``inf`` (every gene gets the pooled variance) when the variances
    vary no more than sampling alone explains, and 0 (no moderation) with fewer than 3
    usable genes.
    """
    from scipy.special import digamma, polygamma

    s2 = np.asarray(s2, float)
    ok = np.isfinite(s2) & (s2 > 0)
    if df <= 0 or ok.sum() < 3:
        return s2, 0.0
    e = np.log(s2[ok]) - digamma(df / 2) + np.log(df / 2)
    excess = e.var(ddof=1) - float(polygamma(1, df / 2))
    if excess <= 0:
        d0 = float("inf")
        s02 = float(np.exp(e.mean()))
        return np.where(ok, s02, s2), d0
    # trigamma is decreasing: bisect trigamma(d0 / 2) = excess on a log scale
    lo, hi = 1e-8, 1e8
    for _ in range(200):
        mid = float(np.sqrt(lo * hi))
        lo, hi = (mid, hi) if polygamma(1, mid) > excess else (lo, mid)
    d0 = 2 * mid
    s02 = float(np.exp(e.mean() + digamma(d0 / 2) - np.log(d0 / 2)))
    post = np.where(ok, (d0 * s02 + df * np.where(ok, s2, 0.0)) / (d0 + df), s2)
    return post, d0


def cauchy_combination(p: np.ndarray, axis: int = 0) -> np.ndarray:
    """Combine p-values of possibly dependent tests of one hypothesis (Liu & Xie 2020, ACAT).

    T = mean tan((0.5 - p) π), p = 1/2 - arctan(T) / π: valid under arbitrary dependence for small
    p-values, so tests computed on the same donors can be combined. NaN p-values count as 1.
    """
    p = np.clip(np.nan_to_num(np.asarray(p, float), nan=1.0), 1e-15, 1 - 1e-15)
    t = np.tan((0.5 - p) * np.pi).mean(axis)
    return np.clip(0.5 - np.arctan(t) / np.pi, 1e-300, 1.0)


def label_test(y: np.ndarray, label: np.ndarray, covars: np.ndarray, *,
               moderate: bool = False) -> LabelTest:
    """Ordinary least squares t-test of the label, given covariates, for every column of ``y``.

    ``y: (n, m)``, ``label: (n,)`` 0/1, ``covars: (n, p)`` (may have no columns). The design is
    ``[1, label, covars]``; the covariate columns must leave it full rank (drop aliased ones
    first). p-values are NaN when no residual degrees of freedom remain. ``moderate``: the
    residual variances are shrunk across columns (:func:`squeeze_var`, limma's moderated t on
    df + d0 degrees of freedom), for many genes tested on few donors.
    """
    y = np.asarray(y, float)
    y = y[:, None] if y.ndim == 1 else y
    n, m = y.shape
    X = _design(np.column_stack([np.asarray(label, float), covars]), n)
    df = n - X.shape[1]
    nan = np.full(m, np.nan)
    if df <= 0 or np.linalg.matrix_rank(X) < X.shape[1]:
        return LabelTest(nan, nan, nan, 0, nan, nan)
    xtx_inv = np.linalg.inv(X.T @ X)
    beta = xtx_inv @ X.T @ y
    res = y - X @ beta
    rss = (res**2).sum(0)
    s2 = rss / df
    d0 = 0.0
    if moderate:
        s2, d0 = squeeze_var(s2, df)
    se = np.sqrt(s2 * xtx_inv[1, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, beta[1] / se, 0.0)
        p = 2 * _t_sf(np.abs(t), df + d0)
        rss_no_label = least_squares(y, covars).rss_cols
        rss_no_cov = least_squares(y, np.asarray(label, float)[:, None]).rss_cols
        tss = ((y - y.mean(0)) ** 2).sum(0)
        r2_label = np.where(tss > 0, (rss_no_label - rss) / tss, 0.0)
        r2_cov = np.where(tss > 0, (rss_no_cov - rss) / tss, 0.0)
    return LabelTest(beta[1], t, p, int(df), np.clip(r2_cov, 0, 1), np.clip(r2_label, 0, 1),
                     d0)


#: MADs above the median that make a value an outlier: the convention of scater's ``isOutlier``
#: (McCarthy DJ et al. (2017) Bioinformatics 33:1179, doi:10.1093/bioinformatics/btw777) and of
#: Leys C et al. (2013) J Exp Soc Psychol 49:764, doi:10.1016/j.jesp.2013.03.013 (2.5-3 MADs)
OUTLIER_MADS = 3.0


def robust_upper(values: np.ndarray, n_mads: float = OUTLIER_MADS) -> float:
    """``median + n_mads * MAD`` of the finite ``values``, the MAD scaled by 1.4826 (consistent
    with the SD for normal data): the upper edge of what is typical in ``values``.

    For |effects| of a covariate across every gene of a panel this is the covariate's typical
    reach (library size and normalisation nudge every gene a little); a gene beyond it is shifted
    by the covariate specifically. Of normal values about 0.1% exceed it; of |normal| values
    (absolute effects) about 1.4%, more when the effects are heavy-tailed (few donors).
    """
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        msg = "robust_upper needs at least one finite value"
        raise InputError(msg)
    med = float(np.median(v))
    return med + n_mads * 1.4826 * float(np.median(np.abs(v - med)))


def logit(p: np.ndarray, *, eps: float = 1e-9) -> np.ndarray:
    """log(p / (1 - p)) with ``p`` clipped to [eps, 1 - eps]."""
    p = np.asarray(p)
    if not np.issubdtype(p.dtype, np.floating):
        p = p.astype(float)
    # computed in the input's precision (float32 probabilities give float32 logits)
    return np.log(np.clip(p, eps, 1 - eps)) - np.log(np.clip(1 - p, eps, 1))
