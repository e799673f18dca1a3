"""Expert feedback that changes what the model relies on.

An expert marks a feature (or a hypothesis, i.e. its features) as a ``technical_artifact`` or a
``confounder``. The reason names directions inside the model — the features' decoder directions
at the SAE hook — and the model is changed at that place:

- **ablate** (immediately): the directions are mean-ablated at ``pooled`` for every cell: the
  component of ``pooled`` along the span of the directions is replaced by its training-mean value.
  Because the head after ``pooled`` is linear this is exact as a weight edit: with ``U`` an
  orthonormal basis of the span and ``c`` the training mean of ``pooled``, ``w' = w - U U^T w``
  and ``b' = b + w^T U U^T c``. The child model is an ordinary checkpoint.
- **finetune** (ablate + fine-tune, as Sparse Feature Circuits' SHIFT compares): the parent
  model is fine-tuned with the same projection applied inside the forward pass, plus a penalty on
  what is left of the named covariate in ``pooled``: for each label, the squared distance between
  the covariate groups' mean ``pooled`` (normalised by its variance). The projection is then
  folded into the head as above. Measured on the ``confounded`` scenario, the trunk re-encodes
  the batch along new directions (benchmarks/results/feedback.md).
- **retrain** (ablate + retrain without the artifact's inputs): the reason names features, the
  features' gene signatures (attribution through the model) name the input genes that drive
  them, and :func:`artifact_genes` keeps those the named covariate explains better than the
  label at donor level. The model is retrained from scratch, with the parent's settings, on the
  panel without them — the artifact is gone from what the model can read, not only from one
  direction it happened to use. When the reason is a QC metric computed from a gene group
  (``pct_counts_mt``: mitochondrial reads), the artifact is not carried by a few genes but by
  the normalisation: a cell's mitochondrial reads shrink every other gene's share of its
  library. :func:`renormalise_without` then recomputes ``X`` with the group out of the library
  size, and the group is withheld from the inputs — the standard treatment of mitochondrial
  reads in single-nucleus data. Every withheld gene leaves the library size too (a technical
  program that raises some genes takes its share from all others, and a size that includes it
  leaves every other gene lower in the affected cells); the test is repeated on the corrected
  data and the new panel until no gene is added (at most three passes). By default the retraining also acts on every
  other technical covariate that carries label information at donor level
  (:func:`aligned_technical`): a model denied one shortcut takes the next one the data offer.

:func:`propose_similar` propagates a verdict to features similar by decoder cosine or by the same
artifact enrichment (proposals, which the scientist confirms); :func:`fit_check` turns the marked
examples into a rule applied to every feature ("batch explains this feature better than the
label", threshold fitted from the marked features).
"""

from __future__ import annotations

import copy
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from sklearn.metrics import roc_auc_score

from discovery.io.contract import InputError, case_mask, get_keys
from discovery.pp.preprocess import normalize, qc_metrics, select_genes
from discovery.tl.classifier import encode, evaluate
from discovery.tl.stats import aggregate_by, bh_fdr, partial_f_tests, robust_upper
from models.sae import SparseAutoencoder
from models.training import TrainConfig, class_balance_weights, train_classifier

__all__ = ["QC_GENE_GROUPS", "aligned_technical", "artifact_genes", "balanced_eval", "fit_check",
           "fold_projection", "match_depth", "propose_similar", "reselect_panel", "renormalise_without",
           "covariate_penalty", "finetune_without",
           "suppression_basis"]

#: QC covariates computed from a gene group (``var`` column): the group is taken out of the
#: library size and out of the model's inputs when such a covariate is the reason
QC_GENE_GROUPS = {"pct_counts_mt": "mt", "pct_counts_ribo": "ribo"}

ACTIONABLE = ("technical_artifact", "confounder")


def suppression_basis(sae: SparseAutoencoder, features: list[int]) -> torch.Tensor:
    """Orthonormal basis ``(d, k)`` of the decoder directions of ``features``."""
    if not features:
        msg = "no features to suppress"
        raise InputError(msg)
    dirs = sae.decoder_directions.detach()[features].T.double()  # (d, k)
    q, r = torch.linalg.qr(dirs)
    keep = r.diagonal().abs() > 1e-8 * r.diagonal().abs().max()
    return q[:, keep].float()


def _pooled_mean(adata: Any, model: torch.nn.Module) -> torch.Tensor:
    x = encode(adata[(adata.obs["split"] == "train").to_numpy()], list(model.config.gene_names))
    model.eval()
    with torch.no_grad():
        return torch.cat([c["pooled"] for _, _, c in model.iter_cache(x, ["pooled"],
                                                                      batch_size=1024)]).mean(0)


@torch.no_grad()
def fold_projection(model: torch.nn.Module, basis: torch.Tensor,
                    center: torch.Tensor) -> torch.nn.Module:
    """A copy of ``model`` whose head ignores ``pooled`` along ``basis`` (mean-ablation)."""
    child = copy.deepcopy(model)
    w = child.head.weight.data[0].double()  # (d,)
    u = basis.double()
    proj = u @ (u.T @ w)
    child.head.weight.data[0] = (w - proj).to(child.head.weight.dtype)
    child.head.bias.data[0] += float(proj @ center.double())
    return child


def _projection_hook(basis: torch.Tensor, center: torch.Tensor):  # noqa: ANN202
    def fn(act: torch.Tensor, name: str) -> torch.Tensor:
        d = act - center
        return act - (d @ basis) @ basis.T

    return fn


def covariate_penalty(y: torch.Tensor, cov: torch.Tensor, *, hook: str = "pooled",  # noqa: ANN201
                      weight: float = 1.0):
    """A loss term that pulls apart nothing the label does not: within each label, the squared
    distance of each covariate level's mean activation at ``hook`` from the label's mean,
    weighted by the level's share, over the activation's total variance; times ``weight``.

    ``y: (cells,)`` labels and ``cov: (cells,)`` covariate codes of the training rows; returns
    ``fn(acts, rows)`` for :func:`models.training.train_classifier` (``extra_loss``).
    """

    def fn(acts: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        p = acts[hook]
        var = p.var(0).sum().clamp(min=1e-6)
        pen = p.new_zeros(())
        for lab in (0.0, 1.0):
            m = y[rows] == lab
            groups = cov[rows][m]
            if m.sum() < 4 or groups.unique().numel() < 2:
                continue
            pm = p[m]
            mu = pm.mean(0)
            for gval in groups.unique():
                gm = groups == gval
                if gm.sum() >= 2:
                    pen = pen + gm.float().mean() * (pm[gm].mean(0) - mu).pow(2).sum()
        return weight * pen / var

    return fn


def finetune_without(
    adata: Any,
    model: torch.nn.Module,
    basis: torch.Tensor,
    *,
    covariate: str | None,
    epochs: int = 8,
    lr: float = 5e-4,
    penalty: float = 1.0,
    seed: int = 0,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Fine-tune a copy of ``model`` with ``basis`` projected out of ``pooled`` and the covariate
    penalised (:func:`covariate_penalty`), in the one training loop
    (:func:`models.training.train_classifier`): training donors, class-balanced loss, the epoch
    with the best validation AUROC (with the projection) kept. The projection is then folded
    into the head of the returned model. Returns (model, history).
    """
    keys = get_keys(adata)
    split = adata.obs["split"].to_numpy()
    x = encode(adata, list(model.config.gene_names))
    y = torch.from_numpy(case_mask(adata, keys).astype(np.float32))
    tr = torch.from_numpy(np.flatnonzero(split == "train"))
    va = torch.from_numpy(np.flatnonzero(split == "val"))
    center = _pooled_mean(adata, model)
    child = copy.deepcopy(model)
    extra = None
    if covariate and covariate in adata.obs and penalty > 0:
        cov = torch.from_numpy(pd.factorize(adata.obs[covariate].astype(str))[0])
        extra = covariate_penalty(y[tr], cov[tr], weight=penalty)
    # class weights from the training donors; the validation loss is not used (AUROC decides)
    w_tr = torch.from_numpy(class_balance_weights(y[tr].numpy()))
    w_va = torch.ones(len(va))
    config = TrainConfig(epochs=epochs, batch_size=256, lr=lr, weight_decay=0.01,
                         patience=epochs, min_delta=0.0, early_stopping="auroc", seed=seed,
                         grad_clip=1.0, lr_schedule="constant")
    hist = train_classifier(child, (x[tr], y[tr], w_tr), (x[va], y[va], w_va), config,
                            hooks={"pooled": _projection_hook(basis, center)},
                            extra_loss=extra, cache=("pooled",) if extra else ())
    new_center = _pooled_mean(adata, child)
    history = {"epochs": [{"epoch": i, "val_auroc": a, "train_loss": t}
                          for i, (a, t) in enumerate(zip(hist.val_auroc, hist.train_loss))],
               "best_val_auroc": (hist.val_auroc[hist.best_epoch]
                                  if hist.best_epoch >= 0 else None)}
    return fold_projection(child, basis, new_center), history


def balanced_eval(adata: Any, probs: np.ndarray, *, split: str = "test") -> dict[str, Any]:
    """Metrics on a batch-balanced held-out set.

    Donors of ``split`` are subsampled (deterministically, by donor id) so that every batch holds
    as many case as control donors; donor-level AUROC on that subset, plus the mean of the
    within-batch cell-level AUROCs over all held-out cells (batches with both labels).
    """
    keys = get_keys(adata)
    if not keys.batch_key:
        return {"note": "no batch column; the batch-balanced set is the whole split",
                **evaluate(adata, probs, split=split, keys=keys)}
    obs = adata.obs
    m = (obs["split"] == split).to_numpy()
    donors = obs.loc[m, [keys.donor_key, keys.batch_key]].astype(str)
    donors["case"] = case_mask(adata, keys)[m]
    d = donors.groupby(keys.donor_key).first()
    keep = []
    for _, grp in d.groupby(keys.batch_key):
        cases = sorted(grp.index[grp["case"]])
        ctrls = sorted(grp.index[~grp["case"]])
        n = min(len(cases), len(ctrls))
        keep += cases[:n] + ctrls[:n]
    within = []
    is_case = case_mask(adata, keys)
    for _, idx in obs[m].groupby(keys.batch_key, observed=True).indices.items():
        rows = np.flatnonzero(m)[idx]
        if len(set(is_case[rows])) == 2:
            within.append(float(roc_auc_score(is_case[rows], probs[rows])))
    out: dict[str, Any] = {"n_balanced_donors": len(keep),
                           "within_batch_cell_auroc": float(np.mean(within)) if within
                           else float("nan")}
    if len(keep) >= 2 and len({d.loc[k, "case"] for k in keep}) == 2:
        dm = pd.Series(probs[m]).groupby(donors[keys.donor_key].to_numpy()).mean()
        out["balanced_donor_auroc"] = float(roc_auc_score(
            [bool(d.loc[k, "case"]) for k in keep], dm.loc[keep].to_numpy()))
    else:
        out["balanced_donor_auroc"] = float("nan")
    return out


def propose_similar(sae: SparseAutoencoder, annotations: pd.DataFrame, marked: list[int], *,
                    min_cosine: float = 0.5) -> list[dict[str, Any]]:
    """Features similar to the marked ones: decoder cosine >= ``min_cosine`` or the same
    artifact gene set in their enrichment. Proposals only; the scientist confirms."""
    dirs = sae.decoder_directions.detach().numpy()
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    ann = annotations.set_index("index")
    sets = {i: ann.loc[i, "top_set"] for i in marked if i in ann.index}
    out = []
    for j in range(dirs.shape[0]):
        if j in marked or ann.loc[j, "frac_active"] == 0:
            continue
        cos = float(max(dirs[j] @ dirs[i] for i in marked))
        same_set = (ann.loc[j, "top_set_category"] == "artifact"
                    and ann.loc[j, "top_set"] in set(sets.values()))
        if cos >= min_cosine or same_set:
            out.append({"feature": str(ann.loc[j, "feature"]), "index": int(j),
                        "cosine": cos, "same_artifact_set": bool(same_set),
                        "label": str(ann.loc[j, "label"])})
    return sorted(out, key=lambda r: -r["cosine"])


def fit_check(annotations: pd.DataFrame, marked: list[int], *,
              covariate: str = "batch") -> dict[str, Any]:
    """Turn marked examples into a rule for every feature: ``r2_<covariate> > r2_label`` and
    ``r2_<covariate> >= t``, with t the smallest value among the marked features (so every
    marked example passes). Returns the rule, its threshold and the features it flags."""
    col = f"r2_{covariate}"
    if col not in annotations:
        return {"rule": None, "why": f"annotations have no {col} column"}
    ann = annotations.set_index("index")
    vals = [float(ann.loc[i, col] or 0.0) for i in marked if i in ann.index]
    if not vals:
        return {"rule": None, "why": "no marked feature in the annotations"}
    t = min(vals)
    r2 = ann[col].fillna(0.0).astype(float)
    lab = ann["r2_label"].fillna(0.0).astype(float)
    hits = ann.index[(r2 >= t) & (r2 > lab) & (ann["frac_active"] > 0)]
    return {"rule": f"{col} > r2_label and {col} >= {t:.4f}", "covariate": covariate,
            "threshold": t, "flags": [str(ann.loc[i, "feature"]) for i in hits
                                      if i not in marked]}


def artifact_genes(adata: Any, annotations: pd.DataFrame, marked: list[int], *,
                   covariate: str, genes: list[str], n_signature: int = 20,
                   scope: str = "panel",
                   alpha: float = 0.05, min_effect: float | str = "auto",
                   min_cells: int = 5) -> dict[str, Any]:
    """Input genes that carry the artifact of the ``marked`` features.

    Candidates: the top ``n_signature`` genes of each marked feature's signature (gradient x
    input through the model, :mod:`discovery.tl.annotate`) that are in ``genes`` (the model's
    panel) and, with ``scope="panel"`` (default), every other panel gene: the expert's reason
    becomes a check applied to every input (a marked feature's top signature misses artifact
    genes that other, unmarked features carry, and the retrained model finds them). Each is tested at donor level: pseudobulk mean expression per (donor, cell type) over
    the discovery donors (train + val), centred per cell type and averaged per donor, in a
    linear model on the label and the covariate. A gene is withheld when the covariate's term is
    significant (F-test, BH q < ``alpha`` over the candidates), its partial R² exceeds the
    label's, and its effect exceeds ``min_effect`` log-expression units. ``min_effect="auto"``
    (default) derives that floor from the data: the covariate's effect is computed for every
    panel gene and the floor is the upper edge of its typical reach, median + 3 MADs
    (:func:`discovery.tl.stats.robust_upper`). A technical covariate nudges every gene a little
    (through library size and normalisation); a gene it shifts far beyond that is one it
    carries. A number fixes the floor instead. Returns the withheld genes, the floor used
    (``min_effect``) and the table of every candidate.
    """
    keys = get_keys(adata)
    ann = annotations.set_index("index")
    cands: list[str] = []
    panel = set(genes)
    if scope not in ("signatures", "panel"):
        msg = f"scope must be 'signatures' or 'panel', got {scope!r}"
        raise InputError(msg)
    for i in marked:
        if i in ann.index:
            for g in list(ann.loc[i, "signature"] or [])[:n_signature]:
                if g in panel and g not in cands:
                    cands.append(g)
    from_marked = set(cands)
    if scope == "panel":
        cands += [g for g in genes if g not in from_marked]
    if not (min_effect == "auto" or isinstance(min_effect, (int, float))):
        msg = f"min_effect must be 'auto' or a number of log units, got {min_effect!r}"
        raise InputError(msg)
    floor_rule = ("the covariate's median + 3 MADs over the panel's genes"
                  if min_effect == "auto" else f"{min_effect} log units")
    out: dict[str, Any] = {"covariate": covariate, "candidates": len(cands),
                           "from_marked_features": len(from_marked), "genes": [],
                           "min_effect": None, "table": [],
                           "rule": f"{covariate} term F-test BH q < {alpha}, partial R² of "
                                   f"{covariate} > label's, effect > {floor_rule} (donor "
                                   "pseudobulk, discovery donors)"}
    if not cands or covariate not in adata.obs:
        return out
    obs = adata.obs
    disc = obs["split"].isin(["train", "val"]).to_numpy()
    ct = (obs[keys.cell_type_key].astype(str).to_numpy() if keys.cell_type_key
          else np.full(adata.n_obs, "all"))
    donor = obs[keys.donor_key].astype(str).to_numpy()
    unit = donor + "\x1f" + ct
    # every panel gene is aggregated: the candidates are tested, all of them set the floor
    tested = set(cands)
    background = cands + [g for g in genes if g not in tested]
    names, pb, n = aggregate_by(adata[disc][:, background].X, unit[disc], how="mean")
    ok = n >= min_cells
    # one value per donor: the pseudobulks with each cell type's mean removed, averaged over the
    # donor's cell types (cell types of one donor share its random effects, so testing
    # donor x cell type units as if independent would inflate the evidence)
    unit_ct = pd.Series([u.split("\x1f", 1)[1] for u in names[ok]])
    centred = pd.DataFrame(pb[ok]) - pd.DataFrame(pb[ok]).groupby(unit_ct).transform("mean")
    unit_donor = [u.split("\x1f", 1)[0] for u in names[ok]]
    y = centred.groupby(unit_donor).mean()
    numeric = pd.api.types.is_numeric_dtype(obs[covariate])
    cells = pd.DataFrame({"donor": donor[disc], "case": case_mask(adata, keys)[disc],
                          "cov": obs[covariate].to_numpy()[disc] if numeric
                          else obs[covariate].astype(str).to_numpy()[disc]})
    per_donor = cells.groupby("donor").agg(case=("case", "first"),
                                           cov=("cov", "mean" if numeric else "first"))
    per_donor = per_donor.loc[y.index]
    # a numeric covariate (a QC metric) enters as its donor mean, a categorical one as dummies
    cov = (per_donor["cov"].to_numpy(float)[:, None] if numeric
           else pd.get_dummies(per_donor["cov"], drop_first=True).to_numpy(float))
    terms = {"label": per_donor["case"].to_numpy(float)[:, None], "cov": cov}
    if terms["cov"].shape[1] == 0 or len(set(terms["label"][:, 0])) < 2:
        return out
    pb = y.to_numpy()
    cell_types = np.empty((len(pb), 0))
    res = [partial_f_tests(pb[:, j], terms, cell_types) for j in range(len(cands))]
    # effect size of the covariate in the full model, in log-expression units: the largest
    # |coefficient| of its dummies, or coefficient x donor SD for a numeric covariate
    design = np.column_stack([np.ones(len(pb)), terms["label"], terms["cov"]])
    beta, *_ = np.linalg.lstsq(design, pb, rcond=None)
    scale = terms["cov"].std(0) if numeric else np.ones(terms["cov"].shape[1])
    effect = np.abs(beta[2:] * scale[:, None]).max(0)
    floor = robust_upper(effect) if min_effect == "auto" else float(min_effect)
    out["min_effect"] = round(floor, 4)
    q = bh_fdr(np.array([r["cov"][1] for r in res]))
    for g, r, qj, eff in zip(cands, res, q, effect[:len(cands)]):
        withheld = bool(qj < alpha and r["cov"][0] > r["label"][0] and eff > floor)
        out["table"].append({"gene": g, f"r2_{covariate}": round(r["cov"][0], 4),
                             "r2_label": round(r["label"][0], 4), "q": float(qj),
                             "effect": round(float(eff), 4), "withheld": withheld,
                             "source": "marked feature" if g in from_marked else "check"})
        if withheld:
            out["genes"].append(g)
    return out


#: technical per-cell covariates :func:`aligned_technical` tests beside the gene-group QC metrics
DEPTH_COVARIATE = "total_counts"


def aligned_technical(adata: Any, *, alpha: float = 0.05, min_auroc_shift: float = 0.2,
                      covariates: tuple[str, ...] | None = None,
                      values: dict[str, np.ndarray] | None = None) -> list[dict[str, Any]]:
    """Per-cell technical covariates whose donor-level values differ between the labels.

    A model retrained without one shortcut takes the next one the data offers: on a cohort
    whose cases also have more mitochondrial reads, a model withheld the batch genes reads the
    mitochondrial fraction instead (benchmarks/results/feedback.md). A refinement should act on
    every technical covariate that carries label information, not only the one an expert named.
    Each covariate (default: the QC metrics of :data:`QC_GENE_GROUPS` and
    :data:`DEPTH_COVARIATE` present in ``obs``) is reduced to one value per discovery donor
    (train + val: test donors' labels are never read) — its per-cell-type median, centred per
    cell type, averaged over the donor's cell types — and the cases' values are compared with
    the controls' (two-sided Mann-Whitney U, BH over the covariates tested). A covariate
    counts when q < ``alpha`` and its donor AUROC is at least ``min_auroc_shift`` from 0.5 (a
    difference large enough to be a shortcut, not only detectable in a large cohort). Returns,
    for each, its donor AUROC (> 0.5: higher in cases), p, q and the donor counts, strongest
    first. ``values``: per-cell values of covariates not in ``obs`` (name -> array). Data
    without donors (every cell its own unit) return nothing: cells are not donors.
    """
    from scipy.stats import mannwhitneyu

    keys = get_keys(adata)
    obs = adata.obs
    if covariates is None:
        covariates = (*QC_GENE_GROUPS, DEPTH_COVARIATE)
    disc = obs["split"].isin(["train", "val"]).to_numpy() if "split" in obs else np.ones(
        adata.n_obs, bool)
    from discovery.io.contract import CELL_UNIT_KEY

    if keys.donor_key in (None, CELL_UNIT_KEY) or disc.sum() == 0:
        return []
    values = values or {}
    ct = (obs[keys.cell_type_key].astype(str).to_numpy() if keys.cell_type_key
          else np.full(adata.n_obs, "all"))
    frame = pd.DataFrame({"donor": obs[keys.donor_key].astype(str).to_numpy(), "ct": ct,
                          "case": case_mask(adata, keys)})[disc]
    case = frame.groupby("donor")["case"].first()
    if case.nunique() < 2:
        return []
    tested = []
    for cov in covariates:
        if cov in values:
            x = np.asarray(values[cov], float)
        elif cov in obs and pd.api.types.is_numeric_dtype(obs[cov]):
            x = obs[cov].to_numpy(float)
        else:
            continue
        v = frame.assign(v=x[disc])
        med = v.groupby(["donor", "ct"])["v"].median().rename("m").reset_index()
        med["m"] -= med.groupby("ct")["m"].transform("mean")
        per_donor = med.groupby("donor")["m"].mean().loc[case.index]
        a, b = per_donor[case.to_numpy()], per_donor[~case.to_numpy()]
        if not np.isfinite(per_donor).all() or per_donor.nunique() < 2:
            continue
        u = mannwhitneyu(a, b, alternative="two-sided")
        tested.append({"covariate": cov, "donor_auroc": round(float(u.statistic) /
                                                            (len(a) * len(b)), 4),
                       "p": float(u.pvalue), "n_case": len(a), "n_control": len(b)})
    if not tested:
        return []
    q = bh_fdr(np.array([r["p"] for r in tested]))
    out = [{**r, "q": float(qq)} for r, qq in zip(tested, q)
           if qq < alpha and abs(r["donor_auroc"] - 0.5) >= min_auroc_shift]
    return sorted(out, key=lambda r: r["p"])


def _normalize_params(adata: Any) -> dict[str, Any]:
    """How ``X`` was normalised (``uns['normalize']['params']``; empty when unrecorded)."""
    return adata.uns.get("normalize", {}).get("params", {})


def match_depth(adata: Any, by: str, *, seed: int = 0, min_ratio: float = 1.1,
                min_cells: int = 20, target_quantile: float = 0.0) -> dict[str, Any]:
    """Equalise sequencing depth across the levels of ``by`` by thinning counts; in place.

    A batch is not only the genes it shifts: libraries of one batch are often sequenced deeper,
    and depth reaches every gene of a log-normalised profile (how many genes are detected, how
    far a single count is from zero), so a model withheld the batch's genes can still read the
    batch from depth. Within each cell type, when the median total count (outside the genes the
    normalisation leaves out of the size, if any) of the deepest level exceeds the shallowest by ``min_ratio`` or more, every cell of a level is binomially thinned
    with probability (shallowest median / its level's median) — downsampling to a common depth,
    as Cell Ranger ``aggr`` does across libraries. ``layers['counts']`` is replaced by the
    thinned counts, the QC metrics are recomputed and ``X`` is renormalised the way it was
    (keeping a gene group left out of the size). Deterministic for a ``seed``.
    ``target_quantile`` > 0 thins every level deeper than that quantile of the levels' medians
    to it and leaves shallower levels as they are (for many levels, e.g. donors, where the
    shallowest one would cost every other level most of its counts).

    Returns, for the audit trail, the per cell type and level median depth before and the
    thinning probability applied (empty ``thinned`` when no cell type differs enough).
    """
    if "counts" not in adata.layers:
        msg = ("matching depth needs raw counts (layers['counts']); this run was made from "
               "log-normalised input")
        raise InputError(msg)
    if by not in adata.obs:
        msg = f"obs has no column {by!r} to match depth across"
        raise InputError(msg)
    keys = get_keys(adata)
    counts = sp.csr_matrix(adata.layers["counts"])
    # depth as the model sees it: outside the genes left out of the library size (withheld
    # technical genes raise a batch's totals without raising what the other genes are read from)
    without = _normalize_params(adata).get("size_without")
    inside = (~adata.var[without].to_numpy(bool) if without and without in adata.var
              else np.ones(adata.n_vars, bool))
    total = np.asarray(counts[:, np.flatnonzero(inside)].sum(axis=1)).ravel()
    ct = (adata.obs[keys.cell_type_key].astype(str).to_numpy() if keys.cell_type_key
          else np.full(adata.n_obs, "all"))
    level = adata.obs[by].astype(str).to_numpy()
    prob = np.ones(adata.n_obs)
    table = []
    for c in np.unique(ct):
        cells = {lv: (ct == c) & (level == lv) for lv in np.unique(level[ct == c])}
        med = {lv: float(np.median(total[m])) for lv, m in cells.items() if m.sum() >= min_cells}
        if len(med) < 2 or min(med.values()) <= 0:
            continue
        low = (min(med.values()) if target_quantile <= 0 else
               float(np.quantile(list(med.values()), target_quantile)))
        if max(med.values()) / low < min_ratio:
            continue
        for lv, m in med.items():
            prob[cells[lv]] = min(1.0, low / m)
            table.append({"cell_type": c, "level": lv, "median_depth": m,
                          "keep_probability": round(min(1.0, low / m), 4)})
    out = {"by": by, "min_ratio": min_ratio, "thinned": table}
    if target_quantile > 0:
        out["target_quantile"] = target_quantile
    if not table:
        return out
    rng = np.random.default_rng(seed)
    thinned = counts.astype(np.int64, copy=True)
    rows = np.repeat(np.arange(adata.n_obs), np.diff(thinned.indptr))
    thinned.data = rng.binomial(thinned.data, prob[rows])
    thinned.eliminate_zeros()
    adata.layers["counts"] = thinned.astype(np.float32)
    qc_metrics(adata)
    params = _normalize_params(adata)
    normalize(adata, target_sum=float(params.get("target_sum", 1e4)),
              size_without=params.get("size_without"))
    out["median_depth_after"] = float(np.median(adata.obs["total_counts"]))
    return out


def reselect_panel(adata: Any, withheld: set[str] | list[str], *, n_top_genes: int,
                   pin_genes: tuple[str, ...] | list[str] = (),
                   previous: set[str] | None = None) -> dict[str, Any]:
    """Choose the gene panel again on the corrected data, without the ``withheld`` genes.

    The parent's panel was chosen by variance on data whose variance the artifact inflated:
    the artifact's genes (and genes it reaches through depth) took panel slots that genes
    varying for other reasons would have had. After the correction (thinning, renormalising)
    the highly variable genes are selected again among the genes not withheld, as
    :func:`discovery.pp.select_genes` does (pins kept). ``var['highly_variable']`` then
    marks the new selection together with the withheld genes — the panel before withholding,
    so that a later refinement still finds what was withheld (panel = highly variable −
    withheld). Returns the genes that entered and left the panel, against ``previous`` (e.g.
    the parent model's panel when the selection is repeated; default: the current selection).
    """
    withheld = set(withheld)
    old = (set(previous) if previous is not None else
           set(adata.var_names[adata.var["highly_variable"].to_numpy(bool)])) - withheld
    keep = [g for g in adata.var_names if g not in withheld]
    sub = ad.AnnData(X=adata[:, keep].X, var=pd.DataFrame(index=keep))
    sub.uns["log1p"] = {"base": None}
    select_genes(sub, n_top_genes=n_top_genes, pin_genes=[g for g in pin_genes if g in keep])
    new = set(sub.var_names[sub.var["highly_variable"].to_numpy(bool)])
    adata.var["highly_variable"] = adata.var_names.isin(sorted(new | withheld))
    return {"n_top_genes": int(n_top_genes), "n_panel": len(new),
            "entered": sorted(new - old), "left": sorted(old - new)}


def renormalise_without(adata: Any, group: str) -> dict[str, Any]:
    """Recompute ``X`` with the ``var[group]`` genes left out of each cell's size
    (:func:`discovery.pp.normalize` with ``size_without``); in place.

    Needs ``layers['counts']`` (count input). Returns the group's genes and the median change of
    the size factor, for the audit trail.
    """
    if "counts" not in adata.layers:
        msg = ("renormalising without a gene group needs raw counts (layers['counts']); this run "
               "was made from log-normalised input: use --mode retrain with a batch reason, or "
               "--mode ablate")
        raise InputError(msg)
    target = float(_normalize_params(adata).get("target_sum", 1e4))
    size = normalize(adata, target_sum=target, size_without=group)
    total = np.asarray(adata.layers["counts"].sum(axis=1)).ravel()
    return {"group": group, "genes": list(adata.var_names[adata.var[group].to_numpy(bool)]),
            "median_size_ratio": float(np.median(size / np.maximum(total, 1)))}
