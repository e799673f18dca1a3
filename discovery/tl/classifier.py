"""Train and evaluate the cell classifiers on an AnnData, honestly: donors never shared.

Steps of :func:`train`:

1. Gene panel: the highly variable genes (``var['highly_variable']``) become the model's
   vocabulary; :func:`encode` turns log-normalised ``X`` into ``expr: (cells, panel)``.
2. Split: ``obs['split']`` (donor-held-out, from :func:`discovery.pp.split_donors`):
   train on ``train`` donors, early-stop on ``val`` donors, report on ``test`` donors.
3. Fit (:func:`models.training.train_classifier`) with class-balanced weights.
4. Predict every cell (``obs['case_prob']``) and compute test-donor metrics: cell-level AUROC,
   donor-level AUROC (mean case probability per donor), accuracy, expected calibration error.
5. Shortcut probe (:func:`shortcut_probe`): how well the pooled representation predicts batch
   and QC covariates, within each label, with donor-grouped cross-validation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import balanced_accuracy_score, r2_score, roc_auc_score
from sklearn.model_selection import GroupKFold

from discovery.io.contract import InputError, Keys, case_mask, get_keys
from discovery.tl.shortcuts import shortcut_findings
from models import CLASSIFIERS, load_classifier
from models.budget import check_memory, parameter_count
from models.configs import check_known
from models.fileperms import make_readable
from models.pretrained import from_bert_checkpoint, trainable_share
from models.training import (
    TrainConfig,
    TrainHistory,
    class_balance_weights,
    group_balance_weights,
    train_classifier,
)

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ARCH",
    "TrainedClassifier",
    "checked_config",
    "donor_auroc_interval",
    "shortcut_findings",
    "encode",
    "evaluate",
    "load",
    "predict",
    "shortcut_probe",
    "train",
]

#: default model sizes per architecture: small enough for 2 CPU cores in minutes
#: (chosen on the bundled cohort's validation donors: strong dropout, because 24 training donors
#: are easy to memorise; early stopping on validation AUROC, see models.training)
DEFAULT_ARCH: dict[str, dict[str, Any]] = {
    "transformer": {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 128, "max_tokens": 96,
                    "dropout": 0.2, "token_dropout": 0.3, "token_selection": "absolute"},
    "mlp": {"d_model": 128, "n_layers": 2, "d_ff": 256, "dropout": 0.5, "input_dropout": 0.5},
    # sizes come from the checkpoint; ``checkpoint`` (a local directory) is required
    "pretrained": {"checkpoint": None, "freeze": True, "max_tokens": 64, "pooling": "mean",
                   "token_selection": "relative", "dropout": 0.1, "min_coverage": 0.5,
                   "gene_id_column": None},
}
DEFAULT_TRAIN: dict[str, dict[str, Any]] = {
    "transformer": {"epochs": 20, "batch_size": 128, "lr": 2e-3, "weight_decay": 0.1,
                    "patience": 6, "balance": "class_batch"},
    "mlp": {"epochs": 40, "batch_size": 128, "lr": 1e-3, "weight_decay": 0.1, "patience": 6,
            "balance": "class_batch"},
    "pretrained": {"epochs": 10, "batch_size": 128, "lr": 1e-3, "weight_decay": 0.01,
                   "patience": 4, "balance": "class_batch"},
}


@dataclass
class TrainedClassifier:
    """A fitted classifier with its history and test-donor metrics."""

    kind: str
    model: torch.nn.Module
    history: TrainHistory
    metrics: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        self.model.save_pretrained(path, safe_serialization=True)
        make_readable(path)  # safetensors writes 0600


# ---------------------------------------------------------------------------------- encoding
def encode(adata: ad.AnnData, genes: list[str] | None = None) -> torch.Tensor:
    """Log-normalised expression of ``genes`` (default: HVGs), as ``(cells, genes)`` float32.

    Reads ``X`` (log-normalised) and ``var['highly_variable']``. Raises :class:`InputError`
    naming how many and which genes of a model's vocabulary are missing from ``adata``.
    """
    if genes is None:
        if "highly_variable" not in adata.var:
            msg = "adata has no var['highly_variable']; run `discovery.pp.preprocess` first"
            raise InputError(msg)
        genes = adata.var_names[adata.var["highly_variable"].to_numpy()].tolist()
    missing = [g for g in genes if g not in adata.var_names]
    if missing:
        msg = (
            f"{len(missing)} of the model's {len(genes)} genes are missing from the data "
            f"(e.g. {missing[:10]}). Use data measured on the same gene panel, or retrain the "
            "model on this data."
        )
        raise InputError(msg)
    x = adata[:, genes].X
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    if not np.isfinite(x).all():
        msg = "expression holds NaN/Inf values; re-run preprocessing on raw counts"
        raise InputError(msg)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _check_split(adata: ad.AnnData, keys: Keys) -> None:
    if "split" not in adata.obs:
        msg = "adata has no obs['split']; run `discovery.pp.preprocess` first"
        raise InputError(msg)
    per_donor = adata.obs.groupby(keys.donor_key, observed=True)["split"].nunique()
    leaked = per_donor.index[per_donor > 1].tolist()
    if leaked:
        msg = (f"donor(s) {leaked[:5]} have cells in more than one split; a donor must be in one "
               "split only (re-run `discovery.pp.split_donors`)")
        raise InputError(msg)
    for s in ("train", "val", "test"):
        m = (adata.obs["split"] == s).to_numpy()
        y = case_mask(adata, keys)[m]
        if m.sum() == 0 or y.all() or not y.any():
            msg = f"split {s!r} lacks cells of both classes; re-run the donor split"
            raise InputError(msg)


#: fewest training donors a (class, batch) cell needs before batch-balanced weights are used:
#: with one, a quarter of the loss would hang on a single donor
MIN_DONORS_PER_CLASS_BATCH = 2


def _balance(adata: ad.AnnData, keys: Keys, train_mask: np.ndarray, asked: str) -> dict[str, Any]:
    """Which loss weighting is used, and why (``metrics['training']['balance']``)."""
    out: dict[str, Any] = {"asked": asked, "used": "class"}
    if asked != "class_batch":
        return out
    if not keys.batch_key or keys.batch_key not in adata.obs:
        out["why"] = "no batch key: class-balanced weights"
        log.warning("balance 'class_batch' needs a batch key; using class-balanced weights")
        return out
    obs = adata.obs.loc[train_mask]
    donors = (obs.assign(case=case_mask(adata, keys)[train_mask])
              .groupby(["case", keys.batch_key], observed=True)[keys.donor_key].nunique()
              .unstack(fill_value=0).stack())  # a class missing from a batch counts as 0
    out["donors_per_class_batch"] = {f"{'case' if c else 'control'} x {b}": int(n)
                                     for (c, b), n in donors.items()}
    if donors.min() < MIN_DONORS_PER_CLASS_BATCH:
        out["why"] = (f"a class x batch cell of the training donors holds "
                      f"{int(donors.min())} donor(s) (< {MIN_DONORS_PER_CLASS_BATCH}): "
                      "class-balanced weights")
        log.warning("batch-balanced weights skipped: %s", out["why"])
        return out
    out["used"] = "class_batch"
    return out


# ---------------------------------------------------------------------------------- training
def checked_config(kind: str, genes: list[str], arch: dict[str, Any] | None = None) -> Any:
    """The HF config of a ``kind`` classifier (``mlp`` / ``transformer``) over ``genes`` with
    ``arch`` on top of :data:`DEFAULT_ARCH`, once its training is known to fit in memory
    (:func:`models.budget.check_memory`, counted on the meta device: nothing allocated)."""
    cfg_cls, model_cls = CLASSIFIERS[kind]
    cfg = cfg_cls(gene_names=genes, **{**DEFAULT_ARCH[kind], **(arch or {})})
    check_memory(parameter_count(model_cls, cfg), f"the {kind} classifier", purpose="train",
                 fix="Lower model.arch (d_model, d_ff, n_layers).")
    return cfg


def train(
    adata: ad.AnnData,
    *,
    kind: str = "transformer",
    arch: dict[str, Any] | None = None,
    train_config: TrainConfig | None = None,
    key_added: str = "case_prob",
    exclude_genes: list[str] | None = None,
) -> TrainedClassifier:
    """Train a classifier on ``train`` donors, early-stop on ``val``, evaluate on ``test``.

    ``exclude_genes`` are withheld from the gene panel (expert feedback: genes that carry an
    artifact, see :func:`discovery.tl.refine.artifact_genes`).

    Reads ``uns['discovery']['keys']``, ``obs['split']``, log-normalised ``X``,
    ``var['highly_variable']``. Writes ``obs[key_added]`` (case probability of every cell) and
    ``uns['model']['params']`` (kind, architecture, training config, metrics).
    """
    if kind not in CLASSIFIERS:
        msg = f"unknown model {kind!r}; choose one of {', '.join(CLASSIFIERS)}"
        raise InputError(msg)
    keys = get_keys(adata)
    _check_split(adata, keys)
    train_config = train_config or TrainConfig(**DEFAULT_TRAIN[kind])
    genes = adata.var_names[adata.var["highly_variable"].to_numpy()].tolist()
    if exclude_genes:
        withheld = set(exclude_genes)
        genes = [g for g in genes if g not in withheld]
    torch.manual_seed(train_config.seed)
    if kind == "pretrained":
        model = _from_checkpoint(adata, genes, {**DEFAULT_ARCH[kind], **(arch or {})})
        genes = list(model.config.gene_names)
    else:
        _, model_cls = CLASSIFIERS[kind]
        model = model_cls(checked_config(kind, genes, arch))
    x = encode(adata, genes)
    y = torch.from_numpy(case_mask(adata, keys).astype(np.float32))
    split = adata.obs["split"].to_numpy()
    tr, va = split == "train", split == "val"
    xt = x[torch.from_numpy(tr)]
    if hasattr(model, "gene_scale"):
        # typical non-zero level of each gene in the training cells (token choice, Geneformer-like)
        nz = (xt > 0).float()
        scale = (xt.sum(0) / nz.sum(0).clamp(min=1)).clamp(min=1e-3)
        model.gene_scale.copy_(scale)
    if hasattr(model, "gene_mean"):
        model.gene_mean.copy_(xt.mean(0))
        model.gene_std.copy_(xt.std(0).clamp(min=1e-2))

    balance = _balance(adata, keys, tr, train_config.balance)

    def part(mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = torch.from_numpy(mask)
        w = (group_balance_weights(y[m].numpy(), adata.obs[keys.batch_key].to_numpy()[mask])
             if balance["used"] == "class_batch" else class_balance_weights(y[m].numpy()))
        return x[m], y[m], torch.from_numpy(w)

    hist = train_classifier(model, part(tr), part(va), train_config)
    model.to("cpu")
    probs = predict(adata, model)
    adata.obs[key_added] = probs
    metrics = {split_name: evaluate(adata, probs, split=split_name, keys=keys)
               for split_name in ("val", "test")}
    if kind == "pretrained":
        metrics["pretrained"] = {**model.config.source,
                                 "trainable_share": round(trainable_share(model), 5)}
    metrics["training"] = {"seconds": round(hist.seconds, 3),
                           "cells_per_second": round(hist.cells_per_second, 1),
                           "best_epoch": hist.best_epoch, "epochs_run": len(hist.val_loss),
                           "n_train_cells": int(tr.sum()), "balance": balance}
    adata.uns["model"] = {"params": {"kind": kind, "arch": {**DEFAULT_ARCH[kind], **(arch or {})},
                                     "train": train_config.to_dict(), "n_genes": len(genes),
                                     "n_excluded": len(exclude_genes or []),
                                     "key_added": key_added},
                          "metrics": _json_safe(metrics)}
    return TrainedClassifier(kind, model, hist, metrics)


def _from_checkpoint(adata: ad.AnnData, genes: list[str], arch: dict[str, Any]) -> torch.nn.Module:
    """The pretrained-checkpoint classifier over the panel ``genes`` (see models.pretrained)."""
    check_known(arch, DEFAULT_ARCH["pretrained"], "pretrained model settings", error=InputError)
    arch = dict(arch)
    checkpoint, col = arch.pop("checkpoint"), arch.pop("gene_id_column")
    if not checkpoint:
        msg = ("model kind 'pretrained' needs model.arch.checkpoint: a local Hugging Face "
               "directory (config.json, model.safetensors, token_dictionary.json)")
        raise InputError(msg)
    identifiers = None
    if col is not None:
        if col not in adata.var:
            msg = (f"gene_id_column {col!r} is not a var column; available: "
                   f"{list(adata.var.columns)[:20]}")
            raise InputError(msg)
        identifiers = adata.var.loc[genes, col].astype(str).tolist()
    model = from_bert_checkpoint(checkpoint, genes, identifiers=identifiers, **arch)
    cov = model.config.source["coverage"]
    log.info("pretrained checkpoint %s: %d of %d panel genes in its vocabulary (%.0f%%)",
             checkpoint, cov["n_mapped"], cov["n_panel"], 100 * cov["coverage"])
    return model


def load(path: str | Path) -> torch.nn.Module:
    """Load a saved classifier (``config.json`` + ``model.safetensors``)."""
    return load_classifier(path)


@torch.no_grad()
def predict(adata: ad.AnnData, model: torch.nn.Module, *, batch_size: int = 1024) -> np.ndarray:
    """Case probability of every cell of ``adata`` under ``model``.

    Reads log-normalised ``X`` over the model's genes (``model.config.gene_names``). Writes
    nothing. Raises :class:`InputError` when the model's genes are missing from ``adata``.
    """
    x = encode(adata, list(model.config.gene_names))
    model.eval()
    device = next(model.parameters()).device
    out = [torch.sigmoid(model(x[i:i + batch_size].to(device)).logits).cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy().astype(np.float64)


# -------------------------------------------------------------------------------- evaluation
def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """ECE = sum over equal-width probability bins of |bin| / n * |mean(y) - mean(p)|."""
    bins = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(y[m].mean() - p[m].mean())
    return float(ece)


def evaluate(
    adata: ad.AnnData,
    probs: np.ndarray,
    *,
    split: str = "test",
    keys: Keys | None = None,
) -> dict[str, float]:
    """Cell- and donor-level metrics of case probabilities ``probs`` on one split's donors.

    Reads ``obs['split']`` and the label / donor columns. Writes nothing.
    """
    keys = keys or get_keys(adata)
    m = (adata.obs["split"] == split).to_numpy()
    y = case_mask(adata, keys)[m]
    p = np.asarray(probs)[m]
    donors = adata.obs[keys.donor_key].astype(str).to_numpy()[m]
    per_donor = pd.DataFrame({"d": donors, "p": p, "y": y}).groupby("d").agg(p=("p", "mean"),
                                                                            y=("y", "first"))
    auc = float(roc_auc_score(per_donor["y"], per_donor["p"]))
    lo, hi = donor_auroc_interval(per_donor["y"].to_numpy(bool), per_donor["p"].to_numpy(float))
    return {
        "n_cells": int(m.sum()),
        "n_donors": int(len(per_donor)),
        "cell_auroc": float(roc_auc_score(y, p)),
        "donor_auroc": auc,
        "donor_auroc_ci": [lo, hi],
        "n_case_donors": int(per_donor["y"].sum()),
        "n_control_donors": int((~per_donor["y"].astype(bool)).sum()),
        "at_chance": bool(lo <= 0.5),
        "accuracy": float(((p >= 0.5) == y).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(y, p >= 0.5)),
        "donor_accuracy": float(((per_donor["p"] >= 0.5) == per_donor["y"]).mean()),
        "ece": expected_calibration_error(y.astype(float), p),
    }


def donor_auroc_interval(y: np.ndarray, p: np.ndarray, *, n_boot: int = 2000,
                         seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the donor AUROC, resampling case and control donors
    separately (each resample keeps both classes). With 3 test donors per class the interval is
    wide by construction: it says how little a small test set can measure."""
    y = np.asarray(y, bool)
    cases, controls = np.asarray(p)[y], np.asarray(p)[~y]
    if len(cases) == 0 or len(controls) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    a = cases[rng.integers(0, len(cases), (n_boot, len(cases)))]
    b = controls[rng.integers(0, len(controls), (n_boot, len(controls)))]
    # AUROC = P(case > control) + 0.5 P(tie), per resample
    gt = (a[:, :, None] > b[:, None, :]).mean((1, 2))
    eq = (a[:, :, None] == b[:, None, :]).mean((1, 2))
    aucs = gt + 0.5 * eq
    return (float(np.quantile(aucs, 0.025)), float(np.quantile(aucs, 0.975)))


@torch.no_grad()
def pooled_representation(adata: ad.AnnData, model: torch.nn.Module, *,
                          batch_size: int = 1024) -> np.ndarray:
    """Activations at the ``pooled`` hook, ``(cells, d_model)``."""
    x = encode(adata, list(model.config.gene_names))
    reps = [cache["pooled"] for _, _, cache in
            model.iter_cache(x, ["pooled"], batch_size=batch_size)]
    return torch.cat(reps).numpy()


def shortcut_probe(
    adata: ad.AnnData,
    model: torch.nn.Module,
    *,
    covariates: tuple[str, ...] = ("pct_counts_mt", "total_counts"),
    n_splits: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Linear probes from the pooled representation to batch and QC covariates.

    A first look at whether the model encodes an "alien heuristic". Each probe is fitted within
    one label group (so the label cannot explain it), cross-validated with folds grouped by donor
    (so the probe cannot memorise donors), and reported next to its chance level. Batch: balanced
    accuracy (chance 1 / number of batches). Covariates: R² of a ridge regression (chance 0).

    Reads ``uns['discovery']['keys']``, ``obs[batch_key, *covariates]``, the label and donor
    columns, log-normalised ``X``. Writes nothing.
    """
    keys = get_keys(adata)
    rep = pooled_representation(adata, model)
    rep = (rep - rep.mean(0)) / (rep.std(0) + 1e-8)
    donors = adata.obs[keys.donor_key].astype(str).to_numpy()
    is_case = case_mask(adata, keys)
    out: dict[str, Any] = {"n_splits": n_splits}
    targets: list[tuple[str, str]] = []
    if keys.batch_key:
        targets.append(("batch", keys.batch_key))
    targets += [("covariate", c) for c in covariates if c in adata.obs]
    for kind, col in targets:
        res = {}
        for group, gmask in (("case", is_case), ("control", ~is_case)):
            yv = adata.obs[col].to_numpy()[gmask]
            groups = donors[gmask]
            n_folds = min(n_splits, len(np.unique(groups)))
            if kind == "batch" and len(np.unique(yv.astype(str))) < 2 or n_folds < 2:
                res[group] = None
                continue
            pred = np.empty(len(yv), dtype=object if kind == "batch" else float)
            for trn, tst in GroupKFold(n_splits=n_folds).split(rep[gmask], yv, groups):
                if kind == "batch":
                    if len(np.unique(yv[trn].astype(str))) < 2:
                        pred[tst] = yv[trn][0]
                        continue
                    clf = LogisticRegression(max_iter=500, C=1.0, class_weight="balanced")
                    clf.fit(rep[gmask][trn], yv[trn].astype(str))
                    pred[tst] = clf.predict(rep[gmask][tst])
                else:
                    reg = Ridge(alpha=1.0).fit(rep[gmask][trn], yv[trn].astype(float))
                    pred[tst] = reg.predict(rep[gmask][tst])
            if kind == "batch":
                yb = yv.astype(str)
                res[group] = {"balanced_accuracy": float(balanced_accuracy_score(yb, pred.astype(str))),
                              "chance": 1.0 / len(np.unique(yb))}
            else:
                res[group] = {"r2": float(r2_score(yv.astype(float), pred.astype(float))),
                              "chance": 0.0}
        out[col] = {"kind": kind, **res}
    return out


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
