"""Cohort attribution graphs: cell graphs aggregated over a population, pruned by influence.

A cohort graph answers "why does the model call these cells cases?" for a population (AD
microglia, or any obs mask): nodes are input genes, SAE features at each SAE hook, one error
node per SAE hook and the case logit; an edge ``s -> t`` carries the mean direct effect of ``s``
on ``t`` (:mod:`discovery.tl.attribution`, exact per cell; edges into a feature count only in cells
where the feature is active). Means are taken per donor first, then over donors (each donor
weighs the same), and every kept edge gets a donor-bootstrap standard error and 95% interval.

Influence and pruning follow circuit-tracer: ``A_n`` = |A| with each target's incoming weights
normalised to sum to one; the influence of every node on the logit is the logit's row of
``(I - A_n)^-1 - I`` (the sum over all paths A_n + A_n^2 + ...). Nodes are kept in order of
influence until ``node_threshold`` of the total is covered (error nodes and the logit always
stay); edges between kept nodes are scored by ``A_n[t, s] * (influence_t + [t is the logit])``
and kept until ``edge_threshold`` of the total score is covered.

Scores, as circuit-tracer defines them, on the unpruned graph: *replacement* = influence from
genes / influence from genes and error nodes; *completeness* = the influence-weighted share of
incoming normalised weight that does not come from error nodes.

Predicted ablation effects (used by :func:`discovery.tl.interventions.validate_graph`): for every
feature and error node, the graph's linear prediction of the change in the mean case logit when
the node is set to its mean over a reference population (attribution patching through the
frozen graph: ``(mu - f) * dlogit/df`` per cell, averaged over cells).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import anndata as ad
import networkx as nx
import numpy as np
import torch
from tqdm.auto import tqdm

from discovery.io.contract import InputError, case_mask, get_keys
from discovery.io.graph_files import AttributionGraph
from discovery.io.layout import GRAPH_SCHEMA_VERSION, feature_id
from discovery.tl.attribution import SAEHook, attribute_block, check_sae_hooks
from discovery.tl.classifier import encode
from discovery.tl.stats import logit

log = logging.getLogger(__name__)

__all__ = [
    "GRAPH_SCHEMA_VERSION",
    "AttributionGraph",
    "GraphSpec",
    "Population",
    "case_populations",
    "cohort_graph",
    "default_reference",
    "example_cells",
    "influence",
    "logit_shares",
    "population_mask",
    "slugify",
    "reference_means",
]




@dataclass
class GraphSpec:
    """Pruning and uncertainty settings of a cohort graph."""

    node_threshold: float = 0.8
    edge_threshold: float = 0.98
    n_boot: int = 200
    batch_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("node_threshold", "edge_threshold"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                msg = f"{name} must be in (0, 1], got {v}"
                raise InputError(msg)


def population_mask(adata: ad.AnnData, *, cell_type: str | None = None,
                    label: str | None = None, split: str | None = None) -> np.ndarray:
    """Boolean mask of a population: one cell type, ``label`` ``"case"``/``"control"`` (``None``
    or ``"all"``: both), a split.

    Reads the keys stored by :func:`discovery.io.contract.validate`. Raises a clear error when the
    population is empty or the cell type is unknown.
    """
    keys = get_keys(adata)
    m = np.ones(adata.n_obs, dtype=bool)
    if cell_type is not None:
        ct = adata.obs[keys.cell_type_key].astype(str).to_numpy()
        if cell_type not in set(ct):
            msg = (f"cell type {cell_type!r} not found in obs[{keys.cell_type_key!r}]; "
                   f"present: {sorted(set(ct))}")
            raise InputError(msg)
        m &= ct == cell_type
    if label is not None and label != "all":
        if label not in ("case", "control"):
            msg = f"label must be 'case', 'control' or 'all', got {label!r}"
            raise InputError(msg)
        cm = case_mask(adata, keys)
        m &= cm if label == "case" else ~cm
    if split is not None:
        if "split" not in adata.obs:
            msg = "obs['split'] is missing; run discovery.pp.split_donors first"
            raise InputError(msg)
        m &= (adata.obs["split"] == split).to_numpy()
    if not m.any():
        msg = f"the population (cell_type={cell_type}, label={label}, split={split}) has no cells"
        raise InputError(msg)
    return m


@dataclass(frozen=True)
class Population:
    """A population that gets a cohort graph: the case cells of one cell type."""

    name: str  # "Microglia, AD cells"
    slug: str  # file-name stem, "microglia_case"
    cell_type: str
    mask: np.ndarray  # (cells,) bool


def logit_shares(g: nx.DiGraph) -> dict[str, tuple[float, float]]:
    """Each feature's direct edge into the output node: feature id -> (its share of the total
    |attribution| into the output, SAE error included; the signed weight). Empty without an
    output node or attribution."""
    if "output" not in g:
        return {}
    inc = {u: d["weight"] for u, _, d in g.in_edges("output", data=True)}
    total = sum(abs(w) for w in inc.values())
    if total <= 0:
        return {}
    return {u: (abs(w) / total, w) for u, w in inc.items()
            if g.nodes[u].get("kind") == "feature"}


def slugify(text: str) -> str:
    """A file-name stem: non-alphanumerics become ``_``, lower case."""
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower()


def case_populations(adata: ad.AnnData, *, min_cells: int = 20) -> list[Population]:
    """The case cells of each cell type with at least ``min_cells`` cells, in cell-type order.

    Reads the label and cell-type columns (``uns['discovery']['keys']``). Writes nothing.
    """
    keys = get_keys(adata)
    out = []
    for ct in sorted(adata.obs[keys.cell_type_key].astype(str).unique()):
        mask = population_mask(adata, cell_type=ct, label="case")
        if mask.sum() >= min_cells:
            out.append(Population(f"{ct}, {keys.case} cells", slugify(f"{ct}_case"), ct, mask))
    return out


def example_cells(adata: ad.AnnData, mask: np.ndarray, *, n: int = 1) -> list[str]:
    """The ``n`` cells of a population that the model calls most confidently case.

    Reads ``obs['case_prob']`` (written by :func:`discovery.tl.classifier.train`). Writes nothing.
    """
    if "case_prob" not in adata.obs:
        msg = "obs['case_prob'] is missing: run discovery.tl.train (the model stage) first"
        raise InputError(msg)
    logits = logit(adata.obs["case_prob"].to_numpy())
    top = np.argsort(-logits[mask])[:n]
    return [str(c) for c in adata.obs_names[mask][top]]


def default_reference(adata: ad.AnnData, mask: np.ndarray) -> np.ndarray:
    """Cells whose means define mean ablation: controls of the population's cell types.

    Falls back to all cells of those cell types when there are no controls among them.
    """
    keys = get_keys(adata)
    ct = adata.obs[keys.cell_type_key].astype(str)
    same = ct.isin(set(ct[np.asarray(mask, dtype=bool)])).to_numpy()
    ref = same & ~case_mask(adata, keys)
    return ref if ref.any() else same


def model_input(adata: ad.AnnData, model: torch.nn.Module) -> torch.Tensor:
    """Log-normalised expression over the model's genes, in the model's dtype."""
    dtype = next(model.parameters()).dtype
    return encode(adata, list(model.config.gene_names)).to(dtype)


@torch.no_grad()
def reference_means(adata: ad.AnnData, model: torch.nn.Module, saes: list[SAEHook], *,
                    batch_size: int = 1024) -> dict[str, dict[str, torch.Tensor]]:
    """Mean feature activations and mean error vector at each SAE hook over ``adata``'s cells.

    Returns ``{hook: {"features": (d_sae,), "error": (d,)}}`` — the values a mean ablation
    sets a node to.
    """
    x = model_input(adata, model)
    sums: dict[str, dict[str, torch.Tensor]] = {}
    model.eval()
    for _, _, cache in model.iter_cache(x, [s.hook for s in saes], batch_size=batch_size):
        for s in saes:
            a = cache[s.hook]
            f = s.sae.encode(a)
            e = a - s.sae.decode(f)
            acc = sums.setdefault(s.hook, {"features": torch.zeros(s.d_sae, dtype=a.dtype),
                                           "error": torch.zeros(a.shape[1], dtype=a.dtype)})
            acc["features"] += f.sum(0)
            acc["error"] += e.sum(0)
    return {h: {k: v / len(x) for k, v in d.items()} for h, d in sums.items()}


def influence(adj: np.ndarray, output: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-normalised |A| and each node's influence on node ``output``.

    ``adj[t, s]`` is the direct effect of ``s`` on ``t``. Influence = the output's row of
    ``(I - A_n)^-1 - I``: the total normalised weight of all paths from the node to the output.
    """
    a = np.abs(adj)
    rows = a.sum(1, keepdims=True)
    a_n = np.divide(a, rows, out=np.zeros_like(a), where=rows > 0)
    e = np.zeros(len(a))
    e[output] = 1.0
    x = np.linalg.solve((np.eye(len(a)) - a_n).T, e)
    return a_n, x - e


def _keep_share(scores: np.ndarray, share: float) -> np.ndarray:
    """Mask of the highest scores whose cumulative sum first reaches ``share`` of the total."""
    keep = np.zeros(len(scores), dtype=bool)
    total = scores.sum()
    if total <= 0:
        return keep
    order = np.argsort(-scores, kind="stable")
    cum = np.cumsum(scores[order]) / total
    n = int(np.searchsorted(cum, share - 1e-12) + 1)
    keep[order[:n]] = True
    return keep & (scores > 0)


class _Accumulator:
    """Per-donor sums of everything a cohort graph needs, filled block by block."""

    def __init__(self, n_donors: int, saes: list[SAEHook], n_genes: int,
                 ref: dict[str, dict[str, torch.Tensor]] | None) -> None:
        f64 = torch.float64
        self.saes = saes
        self.ref = ref
        n_t = [s.d_sae for s in saes] + [1]
        n_src = [n_genes] + [s.d_sae for s in saes]
        self.edges = [torch.zeros(n_donors, t, s, dtype=f64) for t, s in zip(n_t, n_src)]
        self.err = [None] + [torch.zeros(n_donors, t, dtype=f64) for t in n_t[1:]]
        self.bias = [torch.zeros(n_donors, t, dtype=f64) for t in n_t]
        self.value = [torch.zeros(n_donors, t, dtype=f64) for t in n_t]
        self.feat = [torch.zeros(n_donors, s.d_sae, dtype=f64) for s in saes]
        self.active = [torch.zeros(n_donors, s.d_sae, dtype=f64) for s in saes]
        self.err_norm = torch.zeros(n_donors, len(saes), dtype=f64)
        self.genes = torch.zeros(n_donors, n_genes, dtype=f64)
        self.logit = torch.zeros(n_donors, dtype=f64)
        self.count = torch.zeros(n_donors, dtype=f64)
        self.pred_feat = [torch.zeros(s.d_sae, dtype=f64) for s in saes]
        self.pred_err = torch.zeros(len(saes), dtype=f64)
        self.pred_feat_tot = [torch.zeros(s.d_sae, dtype=f64) for s in saes]
        self.pred_err_tot = torch.zeros(len(saes), dtype=f64)
        self.n_cells = 0
        self.worst = 0.0

    def add(self, b: Any, donor: torch.Tensor, x: torch.Tensor) -> None:
        self.worst = max(self.worst, b.completeness_error())
        L = len(self.saes)
        masks = [(f > 0).to(torch.float64) for f in b.features] + [None]
        for s in range(L + 1):
            m = masks[s]
            edges = b.source_edges[s].to(torch.float64)
            bias, val = b.bias[s].to(torch.float64), b.targets[s].to(torch.float64)
            err = None if b.error_edges[s] is None else b.error_edges[s].to(torch.float64)
            if m is not None:
                edges = edges * m[:, :, None]
                bias, val = bias * m, val * m
                err = None if err is None else err * m
            self.edges[s].index_add_(0, donor, edges)
            self.bias[s].index_add_(0, donor, bias)
            self.value[s].index_add_(0, donor, val)
            if err is not None:
                self.err[s].index_add_(0, donor, err)
        for i, f in enumerate(b.features):
            self.feat[i].index_add_(0, donor, f.to(torch.float64))
            self.active[i].index_add_(0, donor, masks[i])
        norms = torch.stack([e.norm(dim=1) for e in b.errors], 1).to(torch.float64)
        self.err_norm.index_add_(0, donor, norms)
        self.genes.index_add_(0, donor, x.to(torch.float64))
        self.logit.index_add_(0, donor, b.logits.to(torch.float64))
        self.count.index_add_(0, donor, torch.ones(len(donor), dtype=torch.float64))
        self.n_cells += len(donor)
        if self.ref is not None:
            self._add_predictions(b, masks)

    def _add_predictions(self, b: Any, masks: list[torch.Tensor | None]) -> None:
        """Predicted mean-ablation effects, (mu - f) * dlogit/df per cell, two ways.

        ``graph``: through the graph's paths only (downstream features where active; error
        nodes fixed, as the graph treats them). ``total``: through the whole frozen model
        (downstream error nodes respond too), the linearisation of the real model's response.
        """
        L = len(self.saes)
        u = b.unit[L][:, 0, :]  # dlogit / df for the last SAE
        g = b.error_dir[L][:, 0, :]  # dlogit / da at the last SAE hook
        g_tot = g
        for layer in range(L - 1, -1, -1):
            s = self.saes[layer]
            mu_f = self.ref[s.hook]["features"].to(u.dtype)
            mu_e = self.ref[s.hook]["error"].to(u.dtype)
            dirs = s.sae.decoder_directions.detach().to(u.dtype)
            df, de = mu_f - b.features[layer], mu_e - b.errors[layer]
            self.pred_feat[layer] += (df * u).sum(0).double()
            self.pred_err[layer] += float((de * g).sum())
            self.pred_feat_tot[layer] += (df * (g_tot @ dirs.T)).sum(0).double()
            self.pred_err_tot[layer] += float((de * g_tot).sum())
            if layer > 0:
                w = u * masks[layer].to(u.dtype)  # passes a feature only where it is active
                g = torch.einsum("bt,btd->bd", w, b.error_dir[layer])
                u = torch.einsum("bt,bts->bs", w, b.unit[layer])
                g_tot = torch.einsum("bt,btd->bd", g_tot, b.jac[layer])


def _donor_means(sums: torch.Tensor, count: torch.Tensor) -> np.ndarray:
    shape = (-1,) + (1,) * (sums.ndim - 1)
    return (sums / count.view(shape)).numpy()


def cohort_graph(
    adata: ad.AnnData,
    model: torch.nn.Module,
    saes: list[SAEHook],
    *,
    mask: np.ndarray | None = None,
    name: str = "cohort",
    reference: np.ndarray | None = None,
    labels: dict[str, str] | None = None,
    spec: GraphSpec | None = None,
) -> AttributionGraph:
    """The pruned attribution graph of the population ``mask`` (all cells when None).

    ``reference``: mask of the cells whose mean feature activations define mean ablation (default:
    the control cells of the population's cell types). ``labels``: feature id -> readable label
    (e.g. from the feature annotations). Reads log-normalised ``X``, the donor, label and
    cell-type columns. Writes nothing to ``adata``.

    Graph attributes: ``schema_version``, ``name``, counts, ``hooks``, ``replacement_score``,
    ``completeness_score``, ``max_completeness_error`` (worst per-cell relative error of
    contributions + error + bias vs value), thresholds, ``ablation_predictions`` (node id ->
    predicted change of the mean logit under mean ablation, every feature and error node).
    Nodes: ``kind`` (gene | feature | error | output), ``label``, ``layer``, ``activation``,
    ``influence`` (+ ``hook``, ``bias``, ``value`` for targets). Edges: ``weight`` (mean direct
    effect), ``weight_se``, ``ci_low``, ``ci_high``, ``donor_sign_agreement``.
    """
    spec = spec or GraphSpec()
    keys = get_keys(adata)
    saes = check_sae_hooks(model, saes)
    mask = np.ones(adata.n_obs, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != (adata.n_obs,) or not mask.any():
        msg = f"population mask must be a non-empty boolean vector over the {adata.n_obs} cells"
        raise InputError(msg)
    sub = adata[mask]
    reference = default_reference(adata, mask) if reference is None else reference
    ref = reference_means(adata[np.asarray(reference, dtype=bool)], model, saes)
    donors = sub.obs[keys.donor_key].astype(str).to_numpy()
    donor_names, donor_idx = np.unique(donors, return_inverse=True)
    x = model_input(sub, model)
    genes = list(model.config.gene_names)
    acc = _Accumulator(len(donor_names), saes, len(genes), ref)
    didx = torch.from_numpy(donor_idx.astype(np.int64))
    bs = spec.batch_size
    for i in tqdm(range(0, len(x), bs), desc=f"graph {name}", disable=not log.isEnabledFor(logging.INFO), leave=False):
        block = attribute_block(model, x[i:i + bs], saes)
        acc.add(block, didx[i:i + bs], x[i:i + bs])
    return _build_graph(acc, saes, genes, donor_names, name=name, labels=labels or {},
                        spec=spec, extra={"n_cells": int(mask.sum()),
                                          "n_reference_cells": int(np.sum(reference))})


def _build_graph(acc: _Accumulator, saes: list[SAEHook], genes: list[str],
                 donor_names: np.ndarray, *, name: str, labels: dict[str, str],
                 spec: GraphSpec, extra: dict[str, Any]) -> nx.DiGraph:
    L = len(saes)
    count = acc.count
    # node layout: genes, features of each SAE, one error node per SAE, the logit
    ids: list[str] = [f"gene:{g}" for g in genes]
    offsets = []
    for s in saes:
        offsets.append(len(ids))
        ids += [feature_id(s.hook, i) for i in range(s.d_sae)]
    err0 = len(ids)
    ids += [f"{s.hook}:error" for s in saes]
    out = len(ids)
    ids.append("output")
    n = len(ids)
    # donor-level means of every block of edges, then the mean over donors
    donor_edges = [_donor_means(e, count) for e in acc.edges]
    donor_err = [None] + [_donor_means(e, count) for e in acc.err[1:]]
    adj = np.zeros((n, n))
    tgt_rows = [np.arange(offsets[s], offsets[s] + saes[s].d_sae) for s in range(L)] + [
        np.array([out])]
    src_cols = [np.arange(len(genes))] + [
        np.arange(offsets[s], offsets[s] + saes[s].d_sae) for s in range(L)]
    for s in range(L + 1):
        adj[np.ix_(tgt_rows[s], src_cols[s])] = donor_edges[s].mean(0)
        if s > 0:
            adj[tgt_rows[s], err0 + s - 1] = donor_err[s].mean(0)
    a_n, infl = influence(adj, out)
    # scores on the unpruned graph (circuit-tracer definitions)
    gene_infl = infl[: len(genes)].sum()
    err_infl = infl[err0:out].sum()
    replacement = float(gene_infl / (gene_infl + err_infl)) if gene_infl + err_infl > 0 else 0.0
    non_error = 1.0 - a_n[:, err0:out].sum(1)
    w = infl.copy()
    w[out] += 1.0
    has_in = a_n.sum(1) > 0
    completeness = float((non_error * w)[has_in].sum() / w[has_in].sum())
    # prune nodes by influence, then edges by influence-weighted normalised weight
    prunable = np.ones(n, dtype=bool)
    prunable[err0:] = False
    keep = _keep_share(np.where(prunable, infl, 0.0), spec.node_threshold)
    keep[err0:] = True
    scores = a_n * w[:, None]
    scores[~keep, :] = 0.0
    scores[:, ~keep] = 0.0
    flat = scores.ravel()
    edge_keep = _keep_share(flat, spec.edge_threshold).reshape(scores.shape)
    has_edge = edge_keep.any(0) | edge_keep.any(1)
    has_edge[out] = True
    node_keep = keep & has_edge
    edge_keep &= node_keep[:, None] & node_keep[None, :]
    # node values
    donor_genes = _donor_means(acc.genes, count).mean(0)
    donor_feat = [_donor_means(f, count).mean(0) for f in acc.feat]
    donor_active = [_donor_means(f, count).mean(0) for f in acc.active]
    donor_errn = _donor_means(acc.err_norm, count).mean(0)
    donor_bias = [_donor_means(b, count).mean(0) for b in acc.bias]
    donor_value = [_donor_means(v, count).mean(0) for v in acc.value]
    preds: dict[str, float] = {}
    preds_tot: dict[str, float] = {}
    if acc.ref is not None:
        for layer, s in enumerate(saes):
            p = (acc.pred_feat[layer] / acc.n_cells).numpy()
            pt = (acc.pred_feat_tot[layer] / acc.n_cells).numpy()
            for i in np.flatnonzero(donor_feat[layer] > 0):
                preds[feature_id(s.hook, i)] = float(p[i])
                preds_tot[feature_id(s.hook, i)] = float(pt[i])
            preds[f"{s.hook}:error"] = float(acc.pred_err[layer] / acc.n_cells)
            preds_tot[f"{s.hook}:error"] = float(acc.pred_err_tot[layer] / acc.n_cells)

    g = AttributionGraph()
    g.graph.update({
        "schema_version": GRAPH_SCHEMA_VERSION, "name": name,
        "n_donors": len(donor_names), "donors": [str(d) for d in donor_names], **extra,
        "hooks": [s.hook for s in saes], "replacement_score": replacement,
        "completeness_score": completeness, "max_completeness_error": acc.worst,
        "node_threshold": spec.node_threshold, "edge_threshold": spec.edge_threshold,
        "n_boot": spec.n_boot, "mean_logit": float(_donor_means(acc.logit, count).mean()),
        "ablation_predictions": preds, "ablation_predictions_total": preds_tot,
    })
    for j in np.flatnonzero(node_keep):
        attrs: dict[str, Any] = {"influence": float(infl[j])}
        if j < len(genes):
            attrs.update(kind="gene", label=genes[j], layer=0, activation=float(donor_genes[j]))
        elif j < err0:
            layer = max(i for i, o in enumerate(offsets) if o <= j)
            i = j - offsets[layer]
            fid = ids[j]
            attrs.update(kind="feature", label=labels.get(fid, fid), layer=layer + 1,
                         hook=saes[layer].hook, feature=int(i),
                         activation=float(donor_feat[layer][i]),
                         frac_active=float(donor_active[layer][i]),
                         bias=float(donor_bias[layer][i]), value=float(donor_value[layer][i]))
        elif j < out:
            layer = j - err0
            attrs.update(kind="error", label=f"SAE error at {saes[layer].hook}",
                         layer=layer + 1, hook=saes[layer].hook,
                         activation=float(donor_errn[layer]))
        else:
            attrs.update(kind="output", label="case logit", layer=L + 1,
                         activation=g.graph["mean_logit"], bias=float(donor_bias[L][0]),
                         value=float(donor_value[L][0]))
        if ids[j] in preds:
            attrs["predicted_ablation"] = preds[ids[j]]
        g.add_node(ids[j], **attrs)
    _add_edges(g, acc, edge_keep, adj, tgt_rows, src_cols, err0, out, ids, spec)
    return g


def _add_edges(g: nx.DiGraph, acc: _Accumulator, edge_keep: np.ndarray, adj: np.ndarray,
               tgt_rows: list[np.ndarray], src_cols: list[np.ndarray], err0: int, out: int,
               ids: list[str], spec: GraphSpec) -> None:
    """Kept edges with donor-bootstrap uncertainty (donors resampled with replacement)."""
    count = acc.count
    rng = np.random.default_rng(spec.seed)
    n_donors = len(count)
    boot = rng.integers(0, n_donors, size=(spec.n_boot, n_donors)) if spec.n_boot else None
    for s in range(len(tgt_rows)):
        rows, cols = tgt_rows[s], src_cols[s]
        sub = edge_keep[np.ix_(rows, cols)]
        ti, si = np.nonzero(sub)
        per_donor = [(_donor_means(acc.edges[s][:, ti, si], count),
                      [(ids[cols[c]], ids[rows[t]]) for t, c in zip(ti, si)])]
        if s > 0:
            err_col = err0 + s - 1
            te = np.flatnonzero(edge_keep[rows, err_col])
            if len(te):
                per_donor.append((_donor_means(acc.err[s][:, te], count),
                                  [(ids[err_col], ids[rows[t]]) for t in te]))
        for vals, pairs in per_donor:
            if not pairs:
                continue
            est = vals.mean(0)
            if boot is not None:
                reps = vals[boot].mean(1)  # (n_boot, n_edges)
                se = reps.std(0, ddof=1)
                lo, hi = np.percentile(reps, [2.5, 97.5], axis=0)
            else:
                se = lo = hi = np.full(len(est), np.nan)
            agree = (np.sign(vals) == np.sign(est)).mean(0)
            for k, (u, v) in enumerate(pairs):
                g.add_edge(u, v, weight=float(est[k]), weight_se=float(se[k]),
                           ci_low=float(lo[k]), ci_high=float(hi[k]),
                           donor_sign_agreement=float(agree[k]))
