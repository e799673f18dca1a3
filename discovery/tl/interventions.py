"""Interventions that check attribution graphs: feature edits, circuits, in-silico gene perturbation.

- :func:`intervene`: ablate (``zero`` / ``mean``), ``clamp`` or ``scale`` SAE features (or an SAE's
  error node) at one or several hook points, for any population; the rest of the model runs as
  is. At an edited hook the activation becomes ``decode(f') + e'`` where ``f = encode(a)`` and
  ``e = a - decode(f)`` (the error is kept unless it is edited itself), so an empty edit leaves
  the model unchanged.
- :func:`circuit_logit`: every feature and error node *not* in a circuit set to its mean over a
  reference population (Sparse Feature Circuits' mean ablation).
- :func:`perturb_genes`: in-silico knock-down, knock-up or deletion of genes in the input, with a
  null distribution from random genes matched on expression level and detection rate, and BH
  FDR across the tested genes (as Geneformer's in-silico perturbation tests shifts against
  random genes).
- :func:`validate_graph`: the graph's predicted ablation effects vs measured ones (Spearman over
  the top features), and faithfulness / completeness curves of pruned circuits:
  ``faithfulness(C) = (m(C) - m(empty)) / (m(M) - m(empty))``, ``completeness(C)`` = the
  faithfulness of the complement ``M \\ C`` (near 0 for a complete circuit), with ``m`` the mean
  case logit over the population.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import anndata as ad
import networkx as nx
import numpy as np
import pandas as pd
import torch
from scipy.stats import pearsonr, spearmanr
from tqdm.auto import tqdm

from discovery.io.contract import InputError, get_keys
from discovery.io.layout import feature_id
from discovery.tl.attribution import SAEHook, check_sae_hooks
from discovery.tl.graphs import default_reference, model_input, reference_means
from discovery.tl.stats import bh_fdr

log = logging.getLogger(__name__)

__all__ = [
    "FeatureEdit",
    "circuit_logit",
    "intervene",
    "perturb_genes",
    "validate_graph",
    "validation_summary",
]

_MODES = ("zero", "mean", "clamp", "scale")


@dataclass(frozen=True)
class FeatureEdit:
    """One edit: ``feature`` index at ``hook`` (``None`` = the SAE's error node).

    ``mode``: ``zero``, ``mean`` (set to the reference mean), ``clamp`` (set to ``value``) or
    ``scale`` (multiply by ``value``; steering when > 1).
    """

    hook: str
    feature: int | None
    mode: str = "zero"
    value: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            msg = f"edit mode must be one of {_MODES}, got {self.mode!r}"
            raise InputError(msg)

    @classmethod
    def parse(cls, node: str, mode: str = "zero", value: float = 0.0) -> FeatureEdit:
        """From a graph node id: ``"pooled:F12"`` or ``"pooled:error"``."""
        hook, _, rest = node.rpartition(":")
        if not hook or not (rest == "error" or (rest.startswith("F") and rest[1:].isdigit())):
            msg = f"node id {node!r} is not a feature ('HOOK:F12') or error ('HOOK:error') node"
            raise InputError(msg)
        return cls(hook, None if rest == "error" else int(rest[1:]), mode, value)


def _splice(sae_hook: SAEHook, edit_f: Callable[[torch.Tensor], torch.Tensor],
            edit_e: Callable[[torch.Tensor], torch.Tensor]):  # noqa: ANN202 - hook function
    sae = sae_hook.sae

    def fn(act: torch.Tensor, name: str) -> torch.Tensor:
        f = sae.encode(act)
        err = act - sae.decode(f)
        return sae.decode(edit_f(f)) + edit_e(err)

    return fn


def _edit_hooks(saes: list[SAEHook], edits: Iterable[FeatureEdit],
                means: dict[str, dict[str, torch.Tensor]] | None,
                clean_errors: dict[str, torch.Tensor] | None = None) -> dict:
    """Hook functions applying ``edits``; with ``clean_errors`` every SAE hook keeps its error
    node at the given (clean) value, as the attribution graph treats error nodes."""
    by_hook: dict[str, list[FeatureEdit]] = {}
    for e in edits:
        by_hook.setdefault(e.hook, []).append(e)
    sae_by = {s.hook: s for s in saes}
    fns = {}
    for hook, es in by_hook.items():
        if hook not in sae_by:
            msg = f"no SAE at hook {hook!r}; SAEs are at {list(sae_by)}"
            raise InputError(msg)
        d_sae = sae_by[hook].d_sae
        for e in es:
            if e.feature is not None and not 0 <= e.feature < d_sae:
                msg = f"feature {e.feature} out of range for the SAE at {hook} (d_sae={d_sae})"
                raise InputError(msg)
            if e.mode == "mean" and means is None:
                msg = "mean ablation needs reference means"
                raise InputError(msg)
    for hook in sae_by if clean_errors is not None else by_hook:
        es = by_hook.get(hook, [])

        def target(e: FeatureEdit, cur: torch.Tensor, hook: str = hook) -> torch.Tensor:
            key = "error" if e.feature is None else "features"
            if e.mode == "zero":
                return torch.zeros_like(cur)
            if e.mode == "mean":
                m = means[hook][key]
                return (m if e.feature is None else m[e.feature]).to(cur.dtype).expand_as(cur)
            if e.mode == "clamp":
                return torch.full_like(cur, e.value)
            return cur * e.value

        def edit_f(f: torch.Tensor, es: list[FeatureEdit] = es) -> torch.Tensor:
            f = f.clone()
            for e in es:
                if e.feature is not None:
                    f[:, e.feature] = target(e, f[:, e.feature])
            return f

        def edit_e(err: torch.Tensor, es: list[FeatureEdit] = es, hook: str = hook) -> torch.Tensor:
            if clean_errors is not None:
                err = clean_errors[hook]
            for e in es:
                if e.feature is None:
                    err = target(e, err)
            return err

        fns[hook] = _splice(sae_by[hook], edit_f, edit_e)
    return fns


@torch.no_grad()
def _logits(model: torch.nn.Module, x: torch.Tensor, fns: dict, batch_size: int) -> np.ndarray:
    model.eval()
    out = []
    with model.hooks(fns):
        for i in range(0, len(x), batch_size):
            out.append(model(x[i:i + batch_size]).logits)
    return torch.cat(out).double().numpy()


class _Evaluator:
    """Case logits of fixed cells under many edits.

    When every edit is at ``pooled`` (the default SAE hook), the trunk runs once: its ``pooled``
    activations are cached and each edit only re-runs the SAE and the linear head. Otherwise each
    evaluation is a full forward pass with hooks.
    """

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, saes: list[SAEHook],
                 batch_size: int) -> None:
        self.model, self.x, self.saes, self.batch_size = model, x, saes, batch_size
        self.pooled_only = all(s.hook == "pooled" for s in saes)
        self.pooled = None
        if self.pooled_only:
            model.eval()
            with torch.no_grad():
                self.pooled = torch.cat([c["pooled"] for _, _, c in model.iter_cache(
                    x, ["pooled"], batch_size=batch_size)])

    @torch.no_grad()
    def logits(self, fns: dict) -> np.ndarray:
        if self.pooled_only and set(fns) <= {"pooled"}:
            act = self.pooled if "pooled" not in fns else fns["pooled"](self.pooled, "pooled")
            return self.model.logits_from_pooled(act).double().numpy()
        return _logits(self.model, self.x, fns, self.batch_size)

    def clean_errors(self) -> dict[str, torch.Tensor]:
        """SAE error vectors of the clean forward pass, all cells (for ``freeze_errors``)."""
        if self.pooled_only:
            s = self.saes[0]
            return {"pooled": self.pooled - s.sae.decode(s.sae.encode(self.pooled))}
        out: dict[str, list[torch.Tensor]] = {s.hook: [] for s in self.saes}
        with torch.no_grad():
            for _, _, cache in self.model.iter_cache(self.x, list(out),
                                                     batch_size=self.batch_size):
                for s in self.saes:
                    a = cache[s.hook]
                    out[s.hook].append(a - s.sae.decode(s.sae.encode(a)))
        return {h: torch.cat(v) for h, v in out.items()}


def _edited_logits(ev: _Evaluator, edits: list[FeatureEdit], means: dict | None, *,
                   freeze_errors: bool) -> np.ndarray:
    """Case logits under ``edits``; ``freeze_errors``: SAE error nodes fixed at clean values."""
    if not freeze_errors:
        return ev.logits(_edit_hooks(ev.saes, edits, means))
    if ev.pooled_only:
        return ev.logits(_edit_hooks(ev.saes, edits, means, ev.clean_errors()))
    errs = ev.clean_errors()
    out = []
    for i in range(0, len(ev.x), ev.batch_size):
        sl = slice(i, i + ev.batch_size)
        fns = _edit_hooks(ev.saes, edits, means, {h: e[sl] for h, e in errs.items()})
        out.append(_logits(ev.model, ev.x[sl], fns, ev.batch_size))
    return np.concatenate(out)


def intervene(
    adata: ad.AnnData,
    model: torch.nn.Module,
    saes: list[SAEHook],
    *,
    edits: Iterable[FeatureEdit],
    mask: np.ndarray | None = None,
    reference: np.ndarray | None = None,
    batch_size: int = 1024,
) -> pd.DataFrame:
    """Case logits of the population ``mask`` before and after ``edits``.

    ``reference``: cells whose means a ``mean`` edit uses (default: the control cells of the
    population's cell types). Returns one row per cell (index = obs names) with ``logit``,
    ``logit_edited``, ``delta``, ``p_case``, ``p_case_edited``. Writes nothing to ``adata``.
    """
    saes = check_sae_hooks(model, saes)
    edits = list(edits)
    mask = np.ones(adata.n_obs, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    means = None
    if any(e.mode == "mean" for e in edits):
        ref = default_reference(adata, mask) if reference is None else reference
        means = reference_means(adata[ref], model, saes)
    sub = adata[mask]
    ev = _Evaluator(model, model_input(sub, model), saes, batch_size)
    before = ev.logits({})
    after = ev.logits(_edit_hooks(saes, edits, means))
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    return pd.DataFrame({"logit": before, "logit_edited": after, "delta": after - before,
                         "p_case": sig(before), "p_case_edited": sig(after)},
                        index=sub.obs_names)


def _circuit_hooks(saes: list[SAEHook], keep: set[str],
                   means: dict[str, dict[str, torch.Tensor]]) -> dict:
    fns = {}
    for s in saes:
        keep_f = torch.tensor([feature_id(s.hook, i) in keep for i in range(s.d_sae)])
        keep_e = f"{s.hook}:error" in keep
        mu_f, mu_e = means[s.hook]["features"], means[s.hook]["error"]

        def edit_f(f: torch.Tensor, keep_f=keep_f, mu_f=mu_f) -> torch.Tensor:
            return torch.where(keep_f, f, mu_f.to(f.dtype))

        def edit_e(e: torch.Tensor, keep_e=keep_e, mu_e=mu_e) -> torch.Tensor:
            return e if keep_e else mu_e.to(e.dtype).expand_as(e)

        fns[s.hook] = _splice(s, edit_f, edit_e)
    return fns


def circuit_logit(model: torch.nn.Module, x: torch.Tensor, saes: list[SAEHook], *,
                  keep: set[str], means: dict[str, dict[str, torch.Tensor]],
                  batch_size: int = 1024,
                  evaluator: _Evaluator | None = None) -> float:
    """Mean case logit over ``x`` with every node outside ``keep`` mean-ablated."""
    ev = evaluator or _Evaluator(model, x, saes, batch_size)
    return float(ev.logits(_circuit_hooks(saes, keep, means)).mean())


def validate_graph(
    adata: ad.AnnData,
    model: torch.nn.Module,
    saes: list[SAEHook],
    *,
    graph: nx.DiGraph,
    mask: np.ndarray,
    reference: np.ndarray | None = None,
    n_top: int = 50,
    sizes: tuple[int, ...] = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200),
    batch_size: int = 1024,
) -> dict:
    """Check a cohort graph against interventions on the same population.

    1. For the ``n_top`` features with the largest predicted effect (graph attribute
       ``ablation_predictions``), measure the change of the mean case logit when each is
       mean-ablated alone; report Spearman and Pearson correlation and sign agreement, two ways:
       ``graph`` (the graph's path prediction vs ablation with every SAE error node held at its
       clean value, the graph's own semantics) and ``model`` (the frozen-linearised total effect
       vs ablation in the real model, downstream errors free). With one SAE at ``pooled`` both
       are exact by construction (the head is linear); deeper SAEs make them real checks.
    2. Rank all feature and error nodes by |predicted effect|; for each circuit size in
       ``sizes``, mean-ablate every node outside the top-n circuit (faithfulness) and every node
       inside it (completeness). Report the curves and the smallest circuit with
       faithfulness >= 0.8.
    ``mask`` and ``reference`` must be those the graph was built with.
    """
    saes = check_sae_hooks(model, saes)
    mask = np.asarray(mask, dtype=bool)
    ref = default_reference(adata, mask) if reference is None else reference
    means = reference_means(adata[ref], model, saes)
    x = model_input(adata[mask], model)
    preds = graph.graph.get("ablation_predictions") or {}
    if not preds:
        msg = "the graph has no ablation predictions; build it with discovery.tl.graphs.cohort_graph"
        raise InputError(msg)
    preds_tot = graph.graph.get("ablation_predictions_total") or preds
    ev = _Evaluator(model, x, saes, batch_size)
    clean = ev.logits({}).mean()
    feats = [k for k in preds if not k.endswith(":error")]
    top = sorted(feats, key=lambda k: -abs(preds[k]))[:n_top]
    checks = {}
    for check, freeze, pred in (("graph", True, preds), ("model", False, preds_tot)):
        measured = []
        for node in tqdm(top, desc=f"ablations ({check})", disable=not log.isEnabledFor(logging.INFO), leave=False):
            lg = _edited_logits(ev, [FeatureEdit.parse(node, "mean")], means,
                                freeze_errors=freeze)
            measured.append(float(lg.mean() - clean))
        predicted = [pred[k] for k in top]
        checks[check] = {
            "predicted": predicted, "measured": measured,
            "spearman": float(spearmanr(predicted, measured).statistic) if len(top) > 2
            else float("nan"),
            "pearson": float(pearsonr(predicted, measured).statistic) if len(top) > 2
            else float("nan"),
            "sign_agreement": float(np.mean(np.sign(predicted) == np.sign(measured)))
            if top else float("nan"),
        }

    ranked = sorted(preds, key=lambda k: -abs(preds[k]))
    m_empty = circuit_logit(model, x, saes, keep=set(), means=means, evaluator=ev)
    denom = clean - m_empty
    curve = []
    for n in sorted({min(s, len(ranked)) for s in sizes}):
        circuit = set(ranked[:n])
        m_c = circuit_logit(model, x, saes, keep=circuit, means=means, evaluator=ev)
        m_rest = circuit_logit(model, x, saes, keep=set(ranked) - circuit, means=means,
                               evaluator=ev)
        curve.append({"n_nodes": n,
                      "n_features": sum(not k.endswith(":error") for k in circuit),
                      "includes_error": any(k.endswith(":error") for k in circuit),
                      "faithfulness": float((m_c - m_empty) / denom) if denom else float("nan"),
                      "completeness": float((m_rest - m_empty) / denom) if denom else float("nan"),
                      })
    reach = [c["n_features"] for c in curve if c["faithfulness"] >= 0.8]
    return {
        "n_cells": int(mask.sum()),
        "m_full": float(clean), "m_empty": float(m_empty),
        "ablation": {"nodes": top, **checks},
        "circuit_curve": curve,
        "features_for_faithfulness_0.8": min(reach) if reach else None,
    }


def validation_summary(val: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of :func:`validate_graph` (stored on the graph and in its index)."""
    ab = val["ablation"]
    return {"spearman_graph": ab["graph"]["spearman"], "spearman_model": ab["model"]["spearman"],
            "sign_agreement_model": ab["model"]["sign_agreement"], "n_checked": len(ab["nodes"]),
            "features_for_faithfulness_0.8": val["features_for_faithfulness_0.8"],
            "m_full": val["m_full"], "m_empty": val["m_empty"],
            "circuit_curve": val["circuit_curve"]}


def _expression_bins(x: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin genes by mean log-expression and detection rate (quantile bins of each, combined)."""
    mean = x.mean(0)
    det = (x > 0).mean(0)
    q = np.linspace(0, 1, n_bins + 1)[1:-1]
    b_mean = np.searchsorted(np.quantile(mean, q), mean, side="right")
    b_det = np.searchsorted(np.quantile(det, [1 / 3, 2 / 3]), det, side="right")
    return b_mean * 3 + b_det


def perturb_genes(
    adata: ad.AnnData,
    model: torch.nn.Module,
    genes: Iterable[str],
    *,
    mode: str = "down",
    factor: float | None = None,
    mask: np.ndarray | None = None,
    n_null: int = 50,
    n_bins: int = 5,
    seed: int = 0,
    batch_size: int = 1024,
) -> pd.DataFrame:
    """In-silico perturbation of each gene in ``genes``, tested against expression-matched nulls.

    ``mode``: ``down`` (counts x ``factor``, default 0.25), ``up`` (counts x ``factor``, default
    4) or ``delete`` (expression set to 0: the token disappears for the transformer). Values are
    changed in log-normalised space as ``log1p(expm1(x) * factor)``. The effect of a gene is the
    change of the case logit averaged over the population's cells that express it, per donor
    first, then over donors. Null: ``n_null`` random genes from the same expression bin (mean
    level x detection rate; one random set per bin, shared by the tested genes of that bin),
    perturbed the same way; empirical two-sided p, BH q over ``genes``.

    Returns one row per gene: ``gene``, ``effect``, ``n_cells``, ``n_donors``, ``null_mean``,
    ``null_sd``, ``z``, ``p``, ``q``. Reads log-normalised ``X``; writes nothing.
    """
    if mode not in ("down", "up", "delete"):
        msg = f"mode must be 'down', 'up' or 'delete', got {mode!r}"
        raise InputError(msg)
    factor = {"down": 0.25, "up": 4.0, "delete": 0.0}[mode] if factor is None else factor
    if factor < 0:
        msg = f"factor must be >= 0, got {factor}"
        raise InputError(msg)
    vocab = list(model.config.gene_names)
    pos = {g: i for i, g in enumerate(vocab)}
    genes = list(dict.fromkeys(genes))
    missing = [g for g in genes if g not in pos]
    if missing:
        msg = (f"{len(missing)} gene(s) are not in the model's vocabulary: "
               f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
        raise InputError(msg)
    if not genes:
        msg = "no genes to perturb"
        raise InputError(msg)
    keys = get_keys(adata)
    mask = np.ones(adata.n_obs, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    sub = adata[mask]
    x = model_input(sub, model)
    donors = sub.obs[keys.donor_key].astype(str).to_numpy()
    base = _logits(model, x, {}, batch_size)
    xn = x.double().numpy()

    def effect(j: int) -> tuple[float, int, int]:
        expressed = xn[:, j] > 0
        if not expressed.any():
            return float("nan"), 0, 0
        xe = x[expressed].clone()
        col = xe[:, j].double()
        xe[:, j] = torch.log1p(torch.expm1(col) * factor).to(xe.dtype)
        delta = _logits(model, xe, {}, batch_size) - base[expressed]
        per_donor = pd.Series(delta).groupby(donors[expressed]).mean()
        return float(per_donor.mean()), int(expressed.sum()), int(len(per_donor))

    bins = _expression_bins(xn, n_bins)
    rng = np.random.default_rng(seed)
    tested = {pos[g] for g in genes}
    null_cache: dict[int, float] = {}
    null_picks: dict[int, np.ndarray] = {}  # one null set per expression bin, shared by its genes
    rows = []
    for g in genes:
        j = pos[g]
        eff, n_cells, n_donors = effect(j)
        if bins[j] not in null_picks:
            pool = np.array([k for k in np.flatnonzero(bins == bins[j]) if k not in tested])
            null_picks[bins[j]] = (rng.choice(pool, size=min(n_null, len(pool)), replace=False)
                                   if len(pool) else np.array([], dtype=int))
        picks = null_picks[bins[j]]
        for k in picks:
            if int(k) not in null_cache:
                null_cache[int(k)] = effect(int(k))[0]
        null = np.array([null_cache[int(k)] for k in picks])
        null = null[np.isfinite(null)]
        if np.isfinite(eff) and len(null):
            p = (1 + np.sum(np.abs(null) >= abs(eff))) / (len(null) + 1)
            sd = null.std(ddof=1) if len(null) > 1 else np.nan
            z = (eff - null.mean()) / sd if sd and np.isfinite(sd) and sd > 0 else np.nan
        else:
            p, z = np.nan, np.nan
        rows.append({"gene": g, "effect": eff, "n_cells": n_cells, "n_donors": n_donors,
                     "null_mean": float(null.mean()) if len(null) else np.nan,
                     "null_sd": float(null.std(ddof=1)) if len(null) > 1 else np.nan,
                     "n_null": len(null), "z": z, "p": p})
    out = pd.DataFrame(rows)
    ok = out["p"].notna().to_numpy()
    out["q"] = np.nan
    if ok.any():
        out.loc[ok, "q"] = bh_fdr(out.loc[ok, "p"].to_numpy())
    return out
