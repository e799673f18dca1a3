"""Candidate hypotheses from cohort graphs and feature annotations, with their evidence.

A hypothesis is a feature — or a *supernode* of co-acting features — that the model uses to call
the case cells of one cell type cases. It is built only from measured facts:

1. **Candidates**: in each cell type's cohort graph (case cells), the features whose direct
   effect on the case logit is at least ``min_share`` of the total |attribution| into the logit
   (SAE error included). A feature can be a candidate in several cell types (one direction of
   the model may carry a different program in each). Candidates of one population are merged
   into a supernode when their decoder directions have cosine >= ``merge_cosine``, or when they
   are enriched for the same gene set, and their donor-level effects point the same way; and,
   once their genes are known (step 2), when they share >= ``merge_overlap`` (30%) of their top
   ``n_genes`` genes in the same direction: one program, one hypothesis, every contributing
   feature kept. Mechanism honesty then weighs how much of its attribution flows through
   artifact-explained features (``evidence.extra['artifact_share']``, per feature in
   ``evidence.extra['feature_roles']``).
2. **Genes**: every measured gene (not only the model's input panel: a program's genes need not
   be model inputs) is correlated with the hypothesis's activation (sum over its features)
   across the cells of its cell type from the *discovery* donors (train + validation), after
   regressing both on batch and on each cell's mitochondrial fraction (so genes that merely
   share a technical axis with the feature drop out). Cells, not donor means, because a feature
   usually marks a cell state that only part of a donor's cells are in; genes detected in fewer
   than half of the discovery donors' pseudobulks (without donors: in fewer than 5% of the
   cells) are left out. The program is the genes that rise with the activation — what a
   non-negative feature detects — unless those that fall with it correlate ``against_ratio``
   (2) times more strongly (a feature that marks a loss, like synaptic genes down); the top
   genes of that side form the program, both sides' top genes are kept in
   ``evidence.gene_sides``, and ``direction`` is whether the program is higher or lower in case
   donors. (The inference stays at donor level: the tests in step 3 are on donor means.)
3. **Evidence** (hypotheses.json ``evidence``): attribution share; ablation effect (all features
   of the hypothesis mean-ablated in its population, measured, next to the graph's prediction);
   donor-level test on discovery donors (Welch on donor means; q = BH over hypotheses);
   replication on the held-out test donors (same direction, one-sided p < 0.05) and the
   distilled biomarker's test-donor AUROC; stability across SAE seeds; a cross-check panel (ranks
   of its genes under Wilcoxon, pseudobulk, L1 logistic regression, Integrated Gradients, and
   in-silico deletion against random-gene nulls) with an agreement score; confound checks at
   donor level (partial R² of batch, QC covariates, sex, age, cell-type composition vs the label;
   single-donor influence).
4. **Distilled biomarker**: the mean z-scored pseudobulk expression of the top genes (signed by
   direction) in the cell type — computable without the model; its AUROC on test donors next to
   the model's. ``kind`` = ``biomarker`` when the simple score reaches AUROC >= 0.8, else
   ``mechanism`` (the signal needs the model).

Status and score: :data:`STATUS_RULES` (decided in :func:`_status_and_score`, nowhere else)
and :func:`discovery.tl.records.score_hypothesis` (:data:`SCORE_FORMULA`). Hypotheses are
:class:`discovery.tl.records.Hypothesis` records.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import anndata as ad
import networkx as nx
import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from discovery.io import bundled
from discovery.io.contract import case_mask, cell_units, get_keys
from discovery.io.layout import feature_index, sae_key
from discovery.tl.attribution import SAEHook, integrated_gradients
from discovery.tl.classifier import encode
from discovery.tl.donor_tests import donor_gene_tests, usable_covariates
from discovery.tl.graphs import logit_shares
from discovery.tl.interventions import FeatureEdit, intervene, perturb_genes
from discovery.tl.records import SCORE_FORMULA, Evidence, Flag, Hypothesis, score_hypothesis
from discovery.tl.stats import bh_fdr, label_test, partial_r2, residualise, welch_t

#: a hypothesis whose top-10 genes hold this many of one artifact gene set (mitochondrial,
#: ribosomal, dissociation stress, heat shock; data/gene_sets.yaml) is flagged
ARTIFACT_PROGRAM_GENES = 3
#: a hypothesis gene must be detected in this share of the discovery donors' pseudobulks ...
MIN_DETECTED_DONORS = 0.5
#: ... or, without donors (every cell its own unit), in this share of the cells
MIN_DETECTED_CELLS = 0.05

log = logging.getLogger(__name__)

__all__ = ["HypothesisSpec", "SCORE_FORMULA", "STATUS_RULES", "evidence_ranking",
           "hypotheses_to_ranking", "propose_hypotheses", "status_rules"]

TECHNICAL = ("batch", "pct_counts_mt", "total_counts")


@dataclass
class HypothesisSpec:
    """Settings of hypothesis generation (defaults documented in the module docstring)."""

    min_share: float = 0.03
    max_per_population: int = 6
    merge_cosine: float = 0.5
    #: hypotheses of one cell type and direction sharing this share of their top n_genes genes
    #: are one program (merged)
    merge_overlap: float = 0.3
    #: a hypothesis whose leading feature, or more than this share of its attribution, is
    #: artifact-explained cannot be supported
    max_artifact_share: float = 0.3
    n_genes: int = 20
    #: a hypothesis's genes are those that rise with its activation (what a non-negative feature
    #: detects) unless the genes that fall with it correlate this many times more strongly
    #: (a feature that marks a loss, e.g. synaptic genes down)
    against_ratio: float = 2.0
    alpha: float = 0.05
    min_stability: float = 0.4
    #: the program genes must carry the signal too: test-donor AUROC of the distilled biomarker
    min_gene_auroc: float = 0.7
    biomarker_auroc: float = 0.8
    n_perturb: int = 5
    n_null: int = 30
    ig_cells: int = 200
    min_cells_per_donor: int = 5

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def status_rules(spec: HypothesisSpec) -> dict[str, str]:
    """The status rules with a run's thresholds, as hypotheses.json states them (decided in
    :func:`_status_and_score`)."""
    return {
        "supported": f"donor-level q < {spec.alpha:g} (discovery donors), replicates on held-out "
                     f"test donors (same direction, one-sided p < {spec.alpha:g}), its genes' "
                     "distilled biomarker reaches "
                     f"AUROC ≥ min_gene_auroc ({spec.min_gene_auroc:g}) on test donors, "
                     "stability ≥ min_stability, and no flag at all (a flag always demotes "
                     "and has a non-zero strength: a single influential donor, a covariate "
                     "such as sex, age or composition that explains the signal as well as the "
                     "label, or artifact_mechanism — the leading feature, or more than "
                     f"{spec.max_artifact_share:.0%} of the attribution, flows through "
                     "features explained by batch / QC in the hypothesis's cell type or "
                     "annotated as artifacts where they act)",
        "flagged": "a technical covariate (batch, QC) explains the donor-level signal better "
                   "than the label, or one of its features is explained by batch / QC in the "
                   "hypothesis's cell type and the donor-level check agrees, or its top-10 "
                   "genes hold >= "
                   f"{ARTIFACT_PROGRAM_GENES} genes of one artifact gene set (mitochondrial, "
                   "ribosomal, dissociation, heat shock) AND at least half of its tested top "
                   "genes are explained by technical covariates at donor level "
                   "(donor_tests.csv 'technical'); never supported. Gene-set membership alone "
                   "is a caveat, not a flag",
        "candidate": "everything else with a causal effect on the case logit; and every "
                     "de_only hypothesis (a program donor-level statistics see, q < "
                     f"{spec.alpha:g} beyond the technical covariates, that the model does not "
                     "use)",
        "caveats": "notes that never change the status (strength may be 0): gene-set "
                   "membership without technical evidence, artifact-explained features that "
                   f"carry at most {spec.max_artifact_share:.0%} of the attribution and do "
                   "not lead, genes no donor-level test sees, what the shortcut probe finds "
                   "in the model",
        "rejected": "an expert rejected it (feedback)",
    }


#: the status rules at the default thresholds
STATUS_RULES = status_rules(HypothesisSpec())

class _Union:
    def __init__(self, items: list[str]) -> None:
        self.parent = {i: i for i in items}

    def find(self, i: str) -> str:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


class _Cohort:
    """Donor-level views of the cohort shared by every hypothesis."""

    def __init__(self, adata: ad.AnnData, model: torch.nn.Module, min_cells: int) -> None:
        keys = get_keys(adata)
        self.adata = adata
        self.keys = keys
        # every measured gene (a program's genes need not be model inputs); the model's panel
        # is a column subset of it
        self.model_genes = list(model.config.gene_names)
        self.genes = list(adata.var_names)
        pos = {g: i for i, g in enumerate(self.genes)}
        if any(g not in pos for g in self.model_genes):
            encode(adata, self.model_genes)  # raises the error naming the missing genes
        self.model_cols = np.array([pos[g] for g in self.model_genes])
        self.x = encode(adata, self.genes).numpy()
        self.ct = adata.obs[keys.cell_type_key].astype(str).to_numpy()
        self.donor = adata.obs[keys.donor_key].astype(str).to_numpy()
        self.is_case = case_mask(adata, keys)
        self.split = adata.obs["split"].astype(str).to_numpy()
        self.min_cells = min_cells
        d = pd.DataFrame({"donor": self.donor, "case": self.is_case, "split": self.split,
                          "ct": self.ct})
        first = d.groupby("donor").first()
        self.donor_case = first["case"]
        self.donor_split = first["split"]
        # donor-level technical and biological covariates
        cov: dict[str, pd.Series] = {}
        if keys.batch_key:
            b = adata.obs[keys.batch_key].astype(str)
            cov["batch"] = b.groupby(self.donor).agg(lambda s: s.mode().iloc[0])
        for c in ("pct_counts_mt", "total_counts"):
            if c in adata.obs:
                v = adata.obs[c].astype(float)
                v = np.log1p(v) if c == "total_counts" else v
                cov[c] = pd.Series(v.to_numpy()).groupby(self.donor).mean()
        for c in ("sex", "age", *keys.covariate_keys):
            if c in adata.obs and c not in cov:
                col = adata.obs[c]
                if pd.api.types.is_numeric_dtype(col):
                    cov[c] = pd.Series(col.to_numpy(float)).groupby(self.donor).mean()
                else:
                    cov[c] = col.astype(str).groupby(self.donor).agg(lambda s: s.mode().iloc[0])
        self.covariates = cov
        self._pb: dict[str, pd.DataFrame] = {}
        #: (feature, cell type) -> (confounded_by, strength) where the annotation describes
        #: another cell type
        self.feature_confounds: dict[tuple[str, str], tuple[Any, Any]] = {}

    def covariate_matrix(self, donors: pd.Index, names: tuple[str, ...]) -> np.ndarray:
        cols = []
        for n in names:
            if n not in self.covariates:
                continue
            s = self.covariates[n].reindex(donors)
            if s.dtype == object:
                cols.append(pd.get_dummies(s, drop_first=True).to_numpy(float))
            else:
                cols.append(s.to_numpy(float)[:, None])
        return np.column_stack(cols) if cols else np.empty((len(donors), 0))

    def pseudobulk(self, cell_type: str) -> pd.DataFrame:
        """Mean log-normalised expression per donor in ``cell_type`` (donors with enough cells)."""
        if cell_type not in self._pb:
            m = self.ct == cell_type
            df = pd.DataFrame(self.x[m], columns=self.genes)
            g = df.groupby(self.donor[m])
            counts = g.size()
            self._pb[cell_type] = g.mean()[counts >= self.min_cells]
        return self._pb[cell_type]

    def donor_values(self, values: np.ndarray, cell_type: str) -> pd.Series:
        m = self.ct == cell_type
        s = pd.Series(values[m]).groupby(self.donor[m])
        return s.mean()[s.size() >= self.min_cells]

    def cell_rows(self, cell_type: str, donors: pd.Index) -> np.ndarray:
        """Row indices of the cells of ``cell_type`` from ``donors``."""
        return np.flatnonzero((self.ct == cell_type) & np.isin(self.donor, np.asarray(donors)))

    def cell_covariate(self, name: str, rows: np.ndarray) -> np.ndarray:
        """A numeric per-cell covariate as a ``(rows, 0 or 1)`` matrix (none when absent)."""
        if name not in self.adata.obs:
            return np.empty((len(rows), 0))
        return self.adata.obs[name].to_numpy(float)[rows][:, None]

    def cell_batch(self, rows: np.ndarray) -> np.ndarray:
        """Batch of each cell as dummy columns (none without a batch key)."""
        if not self.keys.batch_key:
            return np.empty((len(rows), 0))
        b = self.adata.obs[self.keys.batch_key].astype(str).to_numpy()[rows]
        return pd.get_dummies(b, drop_first=True).to_numpy(float)

    def composition(self, cell_type: str) -> pd.Series:
        share = pd.Series(self.ct == cell_type).groupby(self.donor).mean()
        return share


def _welch(values: pd.Series, case: pd.Series) -> dict[str, float]:
    c = case.reindex(values.index).astype(bool).to_numpy()
    v = values.to_numpy(float)
    if c.sum() < 2 or (~c).sum() < 2:
        return {"effect": float("nan"), "t": float("nan"), "p": float("nan"),
                "n_case": int(c.sum()), "n_control": int((~c).sum())}
    r = welch_t(v[c][:, None], v[~c][:, None])
    return {"effect": float(r.effect[0]), "t": float(r.t[0]), "p": float(r.p[0]),
            "n_case": int(c.sum()), "n_control": int((~c).sum())}


def _candidates(graphs: dict[str, nx.DiGraph],
                spec: HypothesisSpec) -> dict[str, dict[str, dict]]:
    """cell type -> {feature id -> its share, weight and predicted ablation in that population}.

    A feature can be a candidate in several cell types: the same direction in the model may
    carry a different program in each (its genes are found per cell type).
    """
    out: dict[str, dict[str, dict]] = {}
    for name, g in graphs.items():
        ct = g.graph.get("cell_type")
        if ct is None:
            continue
        feats = sorted(logit_shares(g).items(), key=lambda t: -t[1][0])
        for u, (share, w) in feats[: spec.max_per_population]:
            if share >= spec.min_share:
                out.setdefault(ct, {})[u] = {
                    "cell_type": ct, "graph": name, "share": share, "weight": w,
                    "predicted_ablation": g.nodes[u].get("predicted_ablation"),
                    "mean_logit": g.graph.get("mean_logit")}
    return out


def _group(feats: list[str], sae: SAEHook, ann: pd.DataFrame, effects: dict[str, float],
           spec: HypothesisSpec) -> list[list[str]]:
    """Supernodes: decoder cosine >= merge_cosine or the same enriched gene set, same sign."""
    idx = {f: feature_index(f) for f in feats}
    dirs = sae.sae.decoder_directions.detach().numpy()
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    top_set = ann.set_index("feature")["top_set"].to_dict() if "top_set" in ann else {}
    uf = _Union(feats)
    for i, a in enumerate(feats):
        for b in feats[i + 1:]:
            if np.sign(effects[a]) != np.sign(effects[b]):
                continue
            cos = float(dirs[idx[a]] @ dirs[idx[b]])
            same_set = top_set.get(a) and top_set.get(a) == top_set.get(b)
            if cos >= spec.merge_cosine or same_set:
                uf.join(a, b)
    groups: dict[str, list[str]] = {}
    for f in feats:
        groups.setdefault(uf.find(f), []).append(f)
    return list(groups.values())


def propose_hypotheses(
    adata: ad.AnnData,
    model: torch.nn.Module,
    sae: SAEHook,
    *,
    graphs: dict[str, nx.DiGraph],
    annotations: pd.DataFrame,
    rankings: pd.DataFrame | None = None,
    donor_tests: pd.DataFrame | None = None,
    model_test_auroc: float | None = None,
    spec: HypothesisSpec | None = None,
    seed: int = 0,
) -> list[Hypothesis]:
    """Ranked hypotheses (:class:`discovery.tl.records.Hypothesis`; ``to_dict`` gives the
    hypotheses.json record, DESIGN.md schema plus extra fields).

    ``graphs``: cohort graphs by name, each with ``graph['cell_type']`` (the run's graphs).
    ``annotations``: the feature table of :func:`discovery.tl.annotate.annotate_features`.
    ``rankings``: the baseline rankings (cross-check panel). ``donor_tests``: the
    technical-covariate-adjusted donor-level gene tests
    (:func:`discovery.tl.donor_tests.donor_gene_tests`; computed when None): they turn
    gene-set artifact flags into caveats unless the genes' signal is technical, and programs the
    model does not use become ``de_only`` hypotheses. Reads log-normalised ``X``,
    ``obsm['X_sae_<hook>']``, ``obs['split']`` and the key columns. Writes nothing.
    """
    # tiny or unbalanced cohorts give empty donor groups: their statistics are NaN by design
    # (status candidate, statement "not testable"), not a numerical accident worth a warning
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if donor_tests is None:
            donor_tests = donor_gene_tests(adata)
        return _propose(adata, model, sae, graphs=graphs, annotations=annotations,
                        rankings=rankings, donor_tests=donor_tests,
                        model_test_auroc=model_test_auroc, spec=spec or HypothesisSpec(),
                        seed=seed)


def _propose(adata: ad.AnnData, model: torch.nn.Module, sae: SAEHook, *,
             graphs: dict[str, nx.DiGraph], annotations: pd.DataFrame,
             rankings: pd.DataFrame | None, donor_tests: pd.DataFrame,
             model_test_auroc: float | None, spec: HypothesisSpec,
             seed: int) -> list[Hypothesis]:
    key = sae_key(sae.hook)
    if key not in adata.obsm:
        from discovery.tl.features import encode_cells

        encode_cells(adata, model, sae.sae, hook=sae.hook)
    acts = np.asarray(adata.obsm[key])
    no_donors = cell_units(get_keys(adata))
    # without donors every cell is its own unit: a "donor" of one cell
    cohort = _Cohort(adata, model, 1 if no_donors else spec.min_cells_per_donor)
    ann = annotations.set_index("feature", drop=False)
    disc = cohort.donor_split.isin(["train", "val"])
    hyps: list[Hypothesis] = []
    for ct, cands in sorted(_candidates(graphs, spec).items()):
        feats = list(cands)
        effects = {}
        for f in feats:
            dv = cohort.donor_values(acts[:, feature_index(f)], ct)
            effects[f] = _welch(dv[disc.reindex(dv.index).fillna(False)],
                                cohort.donor_case)["effect"]
        groups = _group(feats, sae, ann, effects, spec)
        evs = [_evidence(cohort, acts, ct, g, cands, ann, spec) for g in groups]
        # second merge: one program, one hypothesis: features whose programs share >=
        # merge_overlap of their top n_genes genes in the same direction are one hypothesis,
        # whatever their technical status (mechanism honesty then weighs the artifact share)
        merged = True
        while merged:
            merged = False
            for i in range(len(evs)):
                for j in range(i + 1, len(evs)):
                    if evs[i].direction == evs[j].direction and \
                            gene_overlap(evs[i].genes, evs[j].genes, spec.n_genes) >= \
                            spec.merge_overlap:
                        group = sorted(evs[i].features + evs[j].features,
                                       key=lambda f: -cands[f]["share"])
                        evs[i] = _evidence(cohort, acts, ct, group, cands, ann, spec)
                        del evs[j]
                        merged = True
                        break
                if merged:
                    break
        hyps.extend(evs)
    for h in hyps:
        _adjusted_activation_test(h, cohort)
        _evidence_based_artifacts(h, donor_tests, spec)
    de_only = _de_only(hyps, donor_tests, cohort, spec)
    if not hyps and not de_only:
        return []
    qs = bh_fdr(np.array([h.evidence.donor_level["p"] for h in hyps]))
    max_share = max((h.evidence.attribution for h in hyps), default=0.0)
    ig_cache: dict[str, pd.Series] = {}
    # in-silico perturbation once per (cell type, mode) over every hypothesis's top genes, so
    # the random-gene nulls are shared
    wanted: dict[tuple[str, str], list[str]] = {}
    for h in hyps:
        mode = "delete" if h.direction == "up" else "up"
        genes = _model_inputs(h, cohort)[: spec.n_perturb]
        wanted.setdefault((h.cell_type, mode), []).extend(genes)
    pert_tables: dict[tuple[str, str], pd.DataFrame] = {}

    def perturbations(ct: str, mode: str) -> pd.DataFrame:
        if (ct, mode) not in pert_tables:
            pop = (cohort.ct == ct) & cohort.is_case
            genes = list(dict.fromkeys(wanted.get((ct, mode), [])))
            pert_tables[ct, mode] = (
                perturb_genes(adata, model, genes, mode=mode, mask=pop, n_null=spec.n_null,
                              seed=seed) if genes
                else pd.DataFrame(columns=["gene", "effect", "n_cells", "n_donors", "null_mean",
                                           "null_sd", "z", "p", "q"]))
        return pert_tables[ct, mode]

    for h, q in tqdm(list(zip(hyps, qs)), desc="hypotheses", disable=not log.isEnabledFor(logging.INFO), leave=False):
        h.evidence.donor_level["q"] = float(q)
        _cross_check(h, adata, model, sae, cohort, rankings, ig_cache, perturbations, spec, seed)
        h.evidence.replication["model_auroc_test"] = model_test_auroc
        _status_and_score(h, max_share, spec)
    for h in de_only:
        h.score, h.score_parts = score_hypothesis(h.evidence, max_share=max_share or 1.0,
                                                  flagged=False)
    hyps = hyps + de_only
    hyps.sort(key=lambda h: h.sort_key)
    for i, h in enumerate(hyps, 1):
        h.id, h.rank = f"H{i}", i
        h.statement = (_statement(h, str(cohort.keys.case)) if h.kind != "de_only"
                       else _de_only_statement(h, str(cohort.keys.case)))
    return hyps


def _evidence(cohort: _Cohort, acts: np.ndarray, ct: str, group: list[str],
              cands: dict[str, dict], ann: pd.DataFrame, spec: HypothesisSpec) -> Hypothesis:
    idx = [feature_index(f) for f in group]
    activation = acts[:, idx].sum(1)
    dv = cohort.donor_values(activation, ct)
    pb = cohort.pseudobulk(ct).reindex(dv.index).dropna()
    dv = dv.reindex(pb.index)
    split = cohort.donor_split.reindex(dv.index)
    disc = split.isin(["train", "val"]).to_numpy()
    test = (split == "test").to_numpy()
    case = cohort.donor_case
    donor_level = _welch(dv[disc], case)
    direction_sign = 1.0 if donor_level["effect"] >= 0 else -1.0
    # genes: partial correlation with the activation across the cells of the cell type in the
    # discovery donors, given batch and each cell's mitochondrial fraction
    rows = cohort.cell_rows(ct, dv.index[disc])
    tech = np.column_stack([cohort.cell_covariate("pct_counts_mt", rows),
                            cohort.cell_batch(rows)])
    y = residualise(activation[rows].astype(np.float64)[:, None], tech)[:, 0]
    X = residualise(cohort.x[rows].astype(np.float64), tech)
    # a donor pseudobulk detects nearly every real gene; a single cell (no-donor mode) detects
    # a cell-type marker only in its own cells, so there the bar is a share of cells
    min_detected = MIN_DETECTED_CELLS if cell_units(cohort.keys) else MIN_DETECTED_DONORS
    expressed = (pb[disc] > 0).mean(0).to_numpy() >= min_detected
    sd = X.std(0) * y.std()
    r = np.divide((X - X.mean(0)).T @ (y - y.mean()) / len(y), sd, out=np.zeros(X.shape[1]),
                  where=sd > 0)
    r[~expressed] = 0.0
    pos, neg = np.sort(r)[::-1][:10], np.sort(-r)[::-1][:10]
    side = -1.0 if neg.mean() >= spec.against_ratio * max(pos.mean(), 0.0) else 1.0
    sides = {"with_activation": [cohort.genes[i] for i in np.argsort(-r, kind="stable")[:5]],
             "against_activation": [cohort.genes[i] for i in np.argsort(r, kind="stable")[:5]],
             "mean_r_top10": [float(pos.mean()), float(-neg.mean())]}
    order = np.argsort(-side * r, kind="stable")[: spec.n_genes]
    genes = [{"symbol": cohort.genes[i], "weight": float(side * r[i])} for i in order]
    direction = "up" if direction_sign * side > 0 else "down"
    # distilled biomarker: mean z-scored pseudobulk of the top genes, signed by direction
    top = [cohort.genes[i] for i in order[:10]]
    # with fewer than 2 discovery donors in the cell type the spread is undefined: no scaling
    spread = pb[top][disc].std().fillna(1.0).replace(0, 1)
    z = ((pb[top] - pb[top][disc].mean().fillna(0.0)) / spread).fillna(0.0)
    score = z.mean(1) * (1 if direction == "up" else -1)
    yt = case.reindex(dv.index).astype(bool).to_numpy()
    biomarker_auc = (float(roc_auc_score(yt[test], score[test]))
                     if test.any() and len(set(yt[test])) == 2 else float("nan"))
    rep = _welch(dv[test], case)
    same = np.sign(rep["effect"]) == np.sign(donor_level["effect"])
    p_one = rep["p"] / 2 if same else 1 - rep["p"] / 2
    stab = [ann.loc[f, "stability"] for f in group if f in ann.index]
    stab = [s for s in stab if s is not None and np.isfinite(s)]
    confounds = _confounds(cohort, dv, ct, disc)
    share = sum(cands[f]["share"] for f in group)
    pred = [cands[f]["predicted_ablation"] for f in group]
    evidence = Evidence(
        attribution=float(share),
        attribution_weight=float(sum(cands[f]["weight"] for f in group)),
        ablation_predicted=float(sum(p for p in pred if p is not None)),
        donor_level={**donor_level, "n_donors": donor_level["n_case"]
                     + donor_level["n_control"], "donors": "train+val"},
        stability=float(np.mean(stab)) if stab else float("nan"),
        replication={"effect": rep["effect"], "p_one_sided": float(p_one),
                     "n_donors": rep["n_case"] + rep["n_control"],
                     "same_direction": bool(same),
                     "replicated": bool(same and p_one < spec.alpha),
                     "biomarker_auroc_test": biomarker_auc},
        confounds=confounds,
        gene_sides=sides,
        # +1: the program's genes rise with the features' activity; -1: they fall as it rises
        extra={"gene_side": int(side)},
    )
    batch = cohort.covariates.get("batch")
    h = Hypothesis(
        cell_type=ct, direction=direction, genes=genes, features=group,
        feature_labels={f: str(ann.loc[f, "label"]) if f in ann.index else f for f in group},
        population_graph=cands[group[0]]["graph"],
        evidence=evidence,
        biomarker={"genes": top, "direction": direction,
                   "definition": f"mean z-scored pseudobulk expression of {len(top)} genes "
                                 f"in {ct} ({'higher' if direction == 'up' else 'lower'} = "
                                 f"more case-like)", "auroc_test": biomarker_auc},
        donors=[{"donor": str(d), "activation": float(v), "case": bool(case.get(d, False)),
                 "split": str(split.get(d, "")),
                 "batch": None if batch is None else str(batch.get(d)),
                 "biomarker": float(score.get(d, np.nan))}
                for d, v in dv.items()],
        flags=[],
    )
    h.flags, h.caveats = _flags(h, ann, _feature_roles(cohort, acts, ct, group, cands, ann),
                                spec)
    if cell_units(cohort.keys):
        h.flags.append(Flag("no_donors", "design", 1.0,
                            "the data has no donor structure: statistics are over cells of one "
                            "sample, so the finding cannot be generalised beyond it (never "
                            "'supported')"))
    return h


def _confounds(cohort: _Cohort, dv: pd.Series, ct: str, disc: np.ndarray) -> dict[str, Any]:
    """Partial R² of each covariate vs the label for the donor-level activation (all donors)."""
    y = dv.to_numpy(float)
    label = cohort.donor_case.reindex(dv.index).astype(float).to_numpy()
    out: dict[str, Any] = {}
    names = [n for n in cohort.covariates if n not in ("label",)]
    for n in names:
        cov = cohort.covariate_matrix(dv.index, (n,))
        if cov.shape[1] == 0 or np.allclose(cov.std(0), 0):
            continue
        r2_cov, r2_label = partial_r2(y, label, cov)
        out[n] = {"r2": float(r2_cov), "r2_label": float(r2_label)}
    comp = cohort.composition(ct).reindex(dv.index).to_numpy(float)[:, None]
    if comp.std() > 0:
        r2_cov, r2_label = partial_r2(y, label, comp)
        out["composition"] = {"r2": float(r2_cov), "r2_label": float(r2_label)}
    # single-donor influence: the largest drop in |t| when one discovery donor is left out
    idx = np.flatnonzero(disc)
    base = _welch(dv.iloc[idx], cohort.donor_case)
    worst, who = 0.0, None
    for i in idx:
        keep = [j for j in idx if j != i]
        t = _welch(dv.iloc[keep], cohort.donor_case)["t"]
        if np.isfinite(t) and np.isfinite(base["t"]):
            drop = (abs(base["t"]) - abs(t)) / max(abs(base["t"]), 1e-9)
            if drop > worst:
                worst, who = drop, str(dv.index[i])
    out["donor"] = {"max_t_drop": float(worst), "donor": who}
    return out


def _model_inputs(h: Hypothesis, cohort: _Cohort) -> list[str]:
    """The hypothesis's genes that the model reads (in-silico perturbation can only move those)."""
    panel = set(cohort.model_genes)
    return [g["symbol"] for g in h.genes if g["symbol"] in panel]


def _cross_check(h: Hypothesis, adata: ad.AnnData, model: torch.nn.Module, sae: SAEHook,
                 cohort: _Cohort, rankings: pd.DataFrame | None, ig_cache: dict[str, pd.Series],
                 perturbations: Any, spec: HypothesisSpec, seed: int) -> None:
    ct, direction = h.cell_type, h.direction
    top = [g["symbol"] for g in h.genes[:10]]
    panel: dict[str, dict[str, int | None]] = {}
    if rankings is not None and len(rankings):
        for method, sub in rankings.groupby("method"):
            s = sub[(sub["cell_type"] == ct) & (sub["direction"] == direction)]
            rank = dict(zip(s["gene"], s["rank"]))
            panel[str(method)] = {g: (int(rank[g]) if g in rank else None) for g in top}
    pop = (cohort.ct == ct) & cohort.is_case
    if ct not in ig_cache:
        rng = np.random.default_rng(seed)
        cells = np.flatnonzero(pop)
        cells = rng.choice(cells, size=min(spec.ig_cells, len(cells)), replace=False)
        dtype = next(model.parameters()).dtype
        x = torch.from_numpy(cohort.x[np.sort(cells)][:, cohort.model_cols]).to(dtype)
        ig_cache[ct] = pd.Series(integrated_gradients(model, x).mean(0),
                                 index=cohort.model_genes)
    ig = ig_cache[ct] * (1 if direction == "up" else -1)
    ig_rank = ig.rank(ascending=False, method="first").astype(int)
    # genes outside the model's panel have no attribution: rank None
    panel["integrated_gradients"] = {g: (int(ig_rank[g]) if g in ig_rank.index else None)
                                     for g in top}
    # in-silico: move each top gene to the control side (delete a gene that is up in cases,
    # raise 4x one that is down); if the model relies on it the case logit must drop
    mode = "delete" if direction == "up" else "up"
    pert = perturbations(ct, mode).set_index("gene")
    pert = pert.loc[_model_inputs(h, cohort)[: spec.n_perturb]].reset_index()
    hits = [(row.q < 0.1 if np.isfinite(row.q) else False) and row.effect < 0
            for row in pert.itertuples()]
    h.evidence.in_silico = {
        "mode": mode, "genes": pert["gene"].tolist(),
        "effect": [float(v) for v in pert["effect"]], "q": [float(v) for v in pert["q"]],
        "mean_effect": float(np.nanmean(pert["effect"])) if len(pert) else float("nan"),
    }
    agree = []
    for ranks in panel.values():
        agree.append(np.mean([r is not None and r <= 50 for r in ranks.values()]))
    agree.append(float(np.mean(hits)) if hits else 0.0)
    h.evidence.cross_check = {"ranks": panel, "in_silico_hits": int(sum(hits)),
                                    "agreement": float(np.mean(agree))}
    # measured ablation of all the hypothesis's features in its population
    edits = [FeatureEdit.parse(f, "mean") for f in h.features]
    res = intervene(adata, model, [sae], edits=edits, mask=pop)
    per_donor = res["delta"].groupby(cohort.donor[pop]).mean()
    h.evidence.ablation_delta = float(per_donor.mean())


def gene_overlap(a: list[dict[str, Any]], b: list[dict[str, Any]], n: int = 20) -> float:
    """Share of the smaller of two hypotheses' top-``n`` gene lists (``genes`` records) that
    the other holds too."""
    ga = {g["symbol"] for g in a[:n]}
    gb = {g["symbol"] for g in b[:n]}
    return len(ga & gb) / max(min(len(ga), len(gb)), 1)


def _feature_roles(cohort: _Cohort, acts: np.ndarray, ct: str, group: list[str],
                   cands: dict[str, dict], ann: pd.DataFrame) -> list[dict[str, Any]]:
    """Each feature of a hypothesis in its cell type: attribution share, and whether it is
    artifact-explained there — batch or a QC covariate explains its activation better than the
    label in ``ct``'s cells (cell-level partial R², as the annotation measures it; computed in
    ``ct`` when the annotation describes another cell type), or its annotation (where it acts)
    is an artifact label."""
    from discovery.tl.annotate import confound_scores

    out = []
    for f in group:
        row = ann.loc[f] if f in ann.index else None
        described = None if row is None else (row.get("cell_type") or row.get("home_cell_type"))
        if row is not None and described == ct:
            by, strength = row.get("confounded_by"), row.get("confound_strength")
        else:
            key = (f, ct)
            if key not in cohort.feature_confounds:
                c = confound_scores(cohort.adata, acts[:, [feature_index(f)]], np.array([ct]),
                                    keys=cohort.keys).iloc[0]
                cohort.feature_confounds[key] = (c.get("confounded_by"),
                                                 c.get("confound_strength"))
            by, strength = cohort.feature_confounds[key]
        label = "" if row is None else str(row.get("label", ""))
        by = by if isinstance(by, str) and by else None
        out.append({"feature": f, "share": float(cands[f]["share"]),
                    "label": label, "confounded_by": by,
                    "confound_strength": float(strength or 0.0),
                    "artifact": by is not None or label.startswith("artifact")})
    return out


def _mechanism(h: Hypothesis, roles: list[dict[str, Any]],
               spec: HypothesisSpec) -> tuple[list[Flag], list[Flag]]:
    """Mechanism honesty: the share of the hypothesis's attribution that flows through
    artifact-explained features (``evidence.extra['artifact_share']``). A leading artifact
    feature, or a share above ``max_artifact_share``, is an ``artifact_mechanism`` flag (the
    hypothesis cannot be supported; the gene-level donor evidence may still be real biology
    seen through a confounded model); a smaller share is a caveat. Returns (flags, caveats)."""
    total = sum(r["share"] for r in roles) or 1.0
    bad = [r for r in roles if r["artifact"]]
    share = sum(r["share"] for r in bad) / total
    h.evidence.extra["artifact_share"] = float(share)
    h.evidence.extra["feature_roles"] = roles
    if not bad:
        return [], []
    lead = max(roles, key=lambda r: r["share"])

    def why(r: dict[str, Any]) -> str:
        what = (f"explained by {r['confounded_by']} in {h.cell_type}" if r["confounded_by"]
                else f"annotated '{r['label']}'")
        return f"{r['feature']} ({what}; {r['share'] / total:.0%} of its attribution)"

    named = "; ".join(why(r) for r in bad)
    if lead["artifact"] or share > spec.max_artifact_share:
        causes = sorted({r["confounded_by"] or "artifact-annotated" for r in bad})
        cause = lead["confounded_by"] or causes[0]
        what = " / ".join(c if c == "artifact-annotated" else f"{c}-explained" for c in causes)
        return [Flag("artifact_mechanism", cause, max(share, 1e-3),
                     f"the model reaches this through a {what} feature: {share:.0%} "
                     f"of its attribution flows through artifact-explained features ({named})"
                     + ("; its leading feature is one of them" if lead["artifact"] else "")
                     + ". The gene-level donor evidence may still be real biology seen through "
                     "a confounded model")], []
    return [], [Flag("artifact_features", None, 0.0,
                     f"{share:.0%} of its attribution flows through artifact-explained features "
                     f"({named}); the leading feature is not one of them")]


def _flags(h: Hypothesis, ann: pd.DataFrame, roles: list[dict[str, Any]],
           spec: HypothesisSpec) -> tuple[list[Flag], list[Flag]]:
    """Confound and artifact flags of a hypothesis (each demotes, with a non-zero strength) and
    its caveats (informational). Returns (flags, caveats)."""
    ev = h.evidence
    flags, caveats = [], []
    for name, c in ev.confounds.items():
        if name in TECHNICAL and c["r2"] > c["r2_label"] and c["r2"] > 0.1:
            flags.append(Flag(kind="confounded", by=name,
                          strength=float(c["r2"] / (c["r2"] + c["r2_label"] + 1e-12)),
                          detail=f"{name} explains {c['r2']:.0%} of the donor-level "
                                    f"variance of the activation beyond the label; the label "
                                    f"{c['r2_label']:.0%} beyond {name}"))
    for r in roles:
        by = r["confounded_by"]
        if by:
            donor = ev.confounds.get(by)
            # cells are not independent: a donor-level check that favours the label wins
            label_wins = donor is None or donor["r2_label"] >= donor["r2"]
            if not label_wins:
                flags.append(Flag(kind="confounded", by=str(by),
                                  strength=max(float(r["confound_strength"]), 1e-3),
                                  detail=f"feature {r['feature']} is explained by {by} within "
                                         f"{h.cell_type} cells (cell-level partial R²), and at "
                                         f"donor level {by} explains the activation better "
                                         f"than the label ({donor['r2']:.2f} vs "
                                         f"{donor['r2_label']:.2f})"))
        row = ann.loc[r["feature"]] if r["feature"] in ann.index else None
        if row is not None and row.get("top_set_category") == "artifact":
            caveats.append(Flag(kind="artifact_genes", by=str(row.get("top_set")),
                                strength=0.0,
                                detail=f"the attribution signature of {r['feature']} is "
                                       f"enriched for {row.get('top_set')} (an artifact gene "
                                       "set); the donor-level checks do not explain the signal "
                                       "by it"))
    more_flags, more_caveats = _mechanism(h, roles, spec)
    flags += more_flags
    caveats += more_caveats
    top = {g["symbol"] for g in h.genes[:10]}
    for gs in bundled.gene_sets(category="artifact"):
        hits = sorted(top & set(gs.genes))
        if len(hits) >= ARTIFACT_PROGRAM_GENES:
            flags.append(Flag(kind="artifact_program", by=gs.name,
                          strength=len(hits) / 10,
                          detail=f"{len(hits)} of its top-10 genes ({', '.join(hits)}) are "
                                    f"{gs.name}, a technical gene set: the program reads as "
                                    "an artifact, however well it separates the donors"))
    for name in ("sex", "age", "composition"):
        c = ev.confounds.get(name)
        if c and c["r2"] > c["r2_label"] and c["r2"] > 0.1:
            flags.append(Flag(kind="covariate", by=name,
                          strength=float(c["r2"] / (c["r2"] + c["r2_label"] + 1e-12)),
                          detail=f"{name} explains the donor-level signal at least as well "
                                    f"as the label (partial R² {c['r2']:.2f} vs "
                                    f"{c['r2_label']:.2f})"))
    d = ev.confounds.get("donor", {})
    if d.get("max_t_drop", 0) > 0.5:
        flags.append(Flag(kind="single_donor", by=d.get("donor"),
                      strength=float(d["max_t_drop"]),
                      detail=f"leaving out donor {d.get('donor')} removes "
                                f"{d['max_t_drop']:.0%} of the donor-level t statistic"))
    return flags, caveats


def _adjusted_activation_test(h: Hypothesis, cohort: _Cohort) -> None:
    """The activation's case effect beyond the technical covariates (discovery donors):
    ``evidence.donor_level['adjusted']``."""
    d = pd.DataFrame(h.donors, columns=["donor", "activation", "case", "split"])
    d = d.set_index("donor")
    d = d[d["split"].isin(["train", "val"])]
    label = d["case"].astype(float).to_numpy()
    covs = {n: cohort.covariate_matrix(d.index, (n,)) for n in TECHNICAL}
    covs = {n: x for n, x in covs.items() if x.shape[1]}
    used = usable_covariates(covs, label)
    X = np.column_stack([covs[n] for n in used]) if used else np.empty((len(d), 0))
    res = label_test(d["activation"].to_numpy(float), label, X)
    h.evidence.donor_level["adjusted"] = {
        "effect": float(res.effect[0]), "t": float(res.t[0]), "p": float(res.p[0]),
        "df": res.df, "covariates": used, "r2_technical": float(res.r2_covariates[0]),
        "r2_label": float(res.r2_label[0])}


def _tests_of(donor_tests: pd.DataFrame, ct: str) -> pd.DataFrame:
    return donor_tests[donor_tests["cell_type"] == ct].set_index("gene")


def _evidence_based_artifacts(h: Hypothesis, donor_tests: pd.DataFrame,
                              spec: HypothesisSpec) -> None:
    """Gene-set membership is a caveat; it demotes only with donor-level technical evidence.

    An ``artifact_program`` flag (>= 3 top genes of an artifact gene set) stays a flag only when
    at least half of the hypothesis's tested top-10 genes are ``technical`` in the donor tests
    (the covariates explain them better than the label), or the activation itself is explained
    by a technical covariate; otherwise it becomes a caveat. ``artifact_genes`` notes (an
    enriched artifact set, written by :func:`_flags`) stay caveats. A hypothesis whose genes no
    donor-level test sees gets a caveat saying so.
    """
    t = _tests_of(donor_tests, h.cell_type)
    top = [g["symbol"] for g in h.genes[:10] if g["symbol"] in t.index]
    tech_share = float(t.loc[top, "technical"].mean()) if top else 0.0
    confounded = any(f.kind == "confounded" for f in h.flags)
    keep, caveats = [], list(h.caveats)
    for f in h.flags:
        if f.kind == "artifact_program" and tech_share < 0.5 and not confounded:
            caveats.append(Flag(f.kind, f.by, f.strength,
                                f.detail + (f"; but only {tech_share:.0%} of its tested top "
                                            "genes are explained by technical covariates at "
                                            "donor level, so this is a caveat, not a flag")))
        else:
            keep.append(f)
    h.flags = keep
    if top:
        sign = 1.0 if h.direction == "up" else -1.0
        seen = t.loc[top]
        q_dir = f"q_{h.direction}"
        seen = (seen[seen[q_dir] < spec.alpha] if q_dir in seen
                else seen[(seen["q"] < spec.alpha) & (np.sign(seen["effect"]) == sign)])
        if seen.empty:
            caveats.append(Flag("no_donor_signal", None, 0.0,
                                f"no donor-level test sees its top genes in {h.cell_type} "
                                f"(none has q < {spec.alpha:g} {'higher' if sign > 0 else 'lower'}"
                                " in cases after the technical covariates): the model uses a "
                                "signal that donor means do not show"))
    h.caveats = caveats


#: fewest genes a de_only program needs
MIN_DE_GENES = 3


def _de_only(hyps: list[Hypothesis], donor_tests: pd.DataFrame, cohort: _Cohort,
             spec: HypothesisSpec) -> list[Hypothesis]:
    """Programs that donor-level statistics see but no model hypothesis carries.

    Per (cell type, direction): the genes with q < alpha, not technical, in that direction; if
    at least :data:`MIN_DE_GENES` of its top ``n_genes`` are not among the top genes of a model
    hypothesis of the same cell type and direction, they become one ``de_only`` hypothesis
    ("the model does not use it"), ranked by its own evidence.
    """
    from scipy.stats import norm

    out: list[Hypothesis] = []
    if donor_tests.empty:
        return out
    for (ct, direction), t in _directed_tests(donor_tests):
        sig = t[(t["q"] < spec.alpha) & ~t["technical"]].sort_values("p", kind="mergesort")
        covered = {g["symbol"] for h in hyps if h.cell_type == ct and h.direction == direction
                   for g in h.genes[:spec.n_genes]}
        new = sig[~sig["gene"].isin(covered)].head(spec.n_genes)
        if len(new) < MIN_DE_GENES:
            continue
        lead = new.iloc[0]
        p_lead = float(lead["p"])
        q_lead = float(lead["q"])
        # a gene's weight is its directed evidence (signed by the direction), not its mean
        # effect: a gene seen by its tail test can have a mean effect of either sign
        z = norm.isf(np.clip(new["p"].to_numpy(float), 1e-300, 1.0))
        genes = [{"symbol": str(r.gene), "weight": float((1 if direction == "up" else -1) * zz),
                  "mean_effect": float(r.effect)} for r, zz in zip(new.itertuples(), z)]
        ev = Evidence(
            attribution=0.0, attribution_weight=0.0, ablation_predicted=0.0,
            donor_level={"effect": float(new["effect"].mean()), "t": float(lead["t"]),
                         "p": p_lead, "q": q_lead, "n_donors": int(lead["n_case"] +
                                                                   lead["n_control"]),
                         "n_case": int(lead["n_case"]), "n_control": int(lead["n_control"]),
                         "donors": "all",
                         "test": "adjusted pseudobulk mean and tail tests (lead gene)",
                         "covariates": str(lead["covariates"])},
            stability=float("nan"),
            replication={"effect": float("nan"), "p_one_sided": float("nan"), "n_donors": 0,
                         "same_direction": False, "replicated": False,
                         "biomarker_auroc_test": float("nan")},
            confounds={}, gene_sides={},
            extra={"genes_q": {str(r.gene): float(r.q) for r in new.itertuples()}})
        h = Hypothesis(
            cell_type=str(ct), direction=direction, genes=genes, features=[],
            feature_labels={}, population_graph="", evidence=ev,
            biomarker={"genes": [g["symbol"] for g in genes[:10]], "direction": direction,
                       "definition": "", "auroc_test": float("nan")},
            donors=[], flags=[], kind="de_only",
            caveats=[Flag("model_does_not_use", None, 0.0,
                          "the model does not use it: no feature the model relies on in "
                          f"{ct} carries these genes; the evidence is donor-level statistics "
                          "alone")])
        out.append(h)
    return out


def _directed_tests(donor_tests: pd.DataFrame) -> list[tuple[tuple[str, str], pd.DataFrame]]:
    """Per (cell type, direction), the donor tests with ``p`` / ``q`` of that direction's
    combined evidence (``p_up`` / ``p_down``: mean and tail tests) and the genes whose evidence
    points that way; older tables without them split the mean test by the sign of its effect."""
    out = []
    for ct, t in donor_tests.groupby("cell_type", sort=True):
        for direction, sign in (("up", 1.0), ("down", -1.0)):
            if f"p_{direction}" in t:
                sub = t.assign(p=t[f"p_{direction}"], q=t[f"q_{direction}"])
                # a gene counts for the direction its strongest evidence points to
                other = "down" if direction == "up" else "up"
                sub = sub[sub[f"p_{direction}"] <= sub[f"p_{other}"]]
            else:
                sub = t[np.sign(t["effect"]) == sign]
            out.append(((str(ct), direction), sub))
    return out


def _de_only_statement(h: Hypothesis, case: str) -> str:
    dl = h.evidence.donor_level
    genes = ", ".join(g["symbol"] for g in h.genes[:5])
    return (f"In {h.cell_type}, {len(h.genes)} genes ({genes}, ...) are "
            f"{'higher' if h.direction == 'up' else 'lower'} in {case} donors, on average or "
            f"in a share of their cells (donor-level mean and tail tests), beyond the "
            f"technical covariates ({dl['covariates']}; lead gene q = {dl['q']:.2g}, "
            f"{dl['n_donors']} donors). The model does not use them: no feature it relies on "
            "carries them.")


def _status_and_score(h: Hypothesis, max_share: float, spec: HypothesisSpec) -> None:
    """Status (the only place it is decided; see STATUS_RULES) and score of ``h``."""
    ev = h.evidence
    dl, rep = ev.donor_level, ev.replication
    stable = np.isfinite(ev.stability) and ev.stability >= spec.min_stability
    kinds = {f.kind for f in h.flags}
    if kinds & {"confounded", "artifact_program"}:
        status = "flagged"
    elif (np.isfinite(dl["q"]) and dl["q"] < spec.alpha and rep["replicated"] and stable
          and np.isfinite(rep["biomarker_auroc_test"])
          and rep["biomarker_auroc_test"] >= spec.min_gene_auroc
          and not h.flags):
        status = "supported"
    else:
        status = "candidate"
    h.status = status
    auc = rep["biomarker_auroc_test"]
    h.kind = "biomarker" if np.isfinite(auc) and auc >= spec.biomarker_auroc else "mechanism"
    h.score, h.score_parts = score_hypothesis(ev, max_share=max_share,
                                              flagged=status == "flagged")


def _statement(h: Hypothesis, case: str) -> str:
    """The hypothesis in words: feature activity and gene expression are stated separately,
    each as "higher / lower in <case>", with how the genes move with the activity."""
    ev = h.evidence
    dl, rep = ev.donor_level, ev.replication
    genes = ", ".join(g["symbol"] for g in h.genes[:5])
    n = len(h.features)
    what = f"feature {h.features[0]}" if n == 1 else f"{n} co-acting features"
    it = "it" if n == 1 else "them"
    its = "its" if n == 1 else "their"
    rep_txt = ("replicated in held-out test donors" if rep["replicated"] else
               "not replicated in held-out test donors")
    side = ev.extra.get("gene_side", 1)
    flag = next((f" Flagged: {f.detail}." for f in h.flags if f.kind == "confounded"), "")
    mech = next((f" Mechanism: {f.detail}." for f in h.flags if f.kind == "artifact_mechanism"),
                "")
    activity = (f"Feature activity is {'higher' if dl['effect'] > 0 else 'lower'} in {case} "
                f"donors (donor-level effect {dl['effect']:+.2f}, q = {dl['q']:.2g}, "
                f"{dl['n_donors']} donors; {rep_txt}). " if np.isfinite(dl["effect"]) else
                f"Feature activity is not testable at donor level ({dl['n_donors']} donors "
                "with enough cells). ")
    return (f"In {h.cell_type}, the model's {case} call relies on {what} "
            f"({ev.attribution:.0%} of the attribution to the case logit; ablating {it} moves "
            f"the logit by {ev.ablation_delta:+.2f}). " + activity
            + f"Gene expression: {genes} {'rise' if side > 0 else 'fall'} as {its} activity "
            f"rises and are {'higher' if h.direction == 'up' else 'lower'} in {case}."
            + flag + mech)


def hypotheses_to_ranking(hypotheses: list[dict[str, Any] | Hypothesis], *,
                          method: str = "discovery",
                          include_flagged: bool = False) -> pd.DataFrame:
    """Gene ranking per (cell type, direction) from hypotheses in rank order (yardstick input).

    Flagged hypotheses are left out (they are shortcuts, not findings) unless
    ``include_flagged``. Within a hypothesis genes keep their weight order; a gene listed by an
    earlier hypothesis keeps its first position.
    """
    rows = []
    hypotheses = [h.to_dict() if isinstance(h, Hypothesis) else h for h in hypotheses]
    for h in sorted(hypotheses, key=lambda h: h["rank"]):
        if h["status"] in ("flagged", "rejected") and not include_flagged:
            continue
        for g in h["genes"]:
            rows.append({"method": method, "cell_type": h["cell_type"],
                         "direction": h["direction"], "gene": g["symbol"],
                         "score": h["score"] * g["weight"],
                         "pval": h["evidence"]["donor_level"]["p"],
                         "qval": h["evidence"]["donor_level"]["q"], "hypothesis": h["id"]})
    df = pd.DataFrame(rows, columns=["method", "cell_type", "direction", "gene", "score", "pval",
                                     "qval", "hypothesis"])
    df = df.drop_duplicates(["cell_type", "direction", "gene"], keep="first")
    df["rank"] = df.groupby(["cell_type", "direction"]).cumcount() + 1
    return df.reset_index(drop=True)


def evidence_ranking(hypotheses: list[dict[str, Any] | Hypothesis], donor_tests: pd.DataFrame,
                     *, alpha: float = 0.05, demote: float = 0.1,
                     method: str = "discovery") -> pd.DataFrame:
    """Discovery's gene ranking per (cell type, direction): donor-level evidence, promoted by the
    model, demoted by technical evidence.

    1. Every tested gene starts from its adjusted donor-level evidence of a change in the list's
       direction (``donor_tests``: the mean and tail tests combined, ``p_up`` / ``p_down``), as a
       normal score z_g = Φ⁻¹(1 - p): the model explains, it never filters out what donor-level
       statistics see. (Tables without those columns use the mean test, z_g = sign(effect) *
       Φ⁻¹(1 - p/2).)
    2. A gene whose donor-level variance the technical covariates explain better than the label
       (``technical``) keeps ``demote`` (0.1) of its score.
    3. A model hypothesis (not flagged, not rejected, not ``de_only``) whose activation differs
       between case and control donors beyond the technical covariates (BH q of its adjusted
       test < ``alpha``, z_h = Φ⁻¹(1 - p/2)) promotes each of its genes to
       max(z, (z + w z_h) / sqrt(1 + w²)) in its direction, w = the gene's weight over the
       hypothesis's largest (Stouffer's combination): a program that only single cells show (a
       rare state) rises, a gene is never pushed down by the model.

    Returns :data:`discovery.tl.baselines.RANKING_COLUMNS` plus ``promoted_by`` (hypothesis id).
    """
    from scipy.stats import norm

    recs = [h.to_dict() if isinstance(h, Hypothesis) else h for h in hypotheses]
    model = [h for h in recs if h.get("kind") != "de_only"
             and h["status"] not in ("flagged", "rejected")
             and np.isfinite(h["evidence"]["donor_level"].get("adjusted", {}).get("p", np.nan))]
    qs = bh_fdr(np.array([h["evidence"]["donor_level"]["adjusted"]["p"] for h in model]))
    promoters = [(h, q) for h, q in zip(model, qs) if q < alpha]
    frames = []
    cell_types = sorted(set(donor_tests["cell_type"]) | {h["cell_type"] for h, _ in promoters})
    for ct in cell_types:
        t = donor_tests[donor_tests["cell_type"] == ct]
        technical = t["technical"].to_numpy(bool)
        by_gene = t.set_index("gene")
        for direction, sign in (("up", 1.0), ("down", -1.0)):
            if f"p_{direction}" in t:
                z = norm.isf(np.clip(t[f"p_{direction}"].to_numpy(float), 1e-300, 1.0))
            else:
                p = np.clip(t["p"].to_numpy(float), 1e-300, 1.0)
                z = sign * np.sign(t["effect"].to_numpy(float)) * norm.isf(p / 2)
            z = np.nan_to_num(z)
            z = np.where(technical & (z > 0), demote * z, z)
            score = pd.Series(z, index=t["gene"].to_numpy(), dtype=float)
            by = pd.Series("", index=score.index, dtype=object)
            for h, _ in promoters:
                if h["cell_type"] != ct or h["direction"] != direction:
                    continue
                adj = h["evidence"]["donor_level"]["adjusted"]
                z_h = float(norm.isf(max(adj["p"], 1e-300) / 2))
                wmax = max(abs(g["weight"]) for g in h["genes"]) or 1.0
                for g in h["genes"]:
                    w = abs(g["weight"]) / wmax
                    z_g = float(score.get(g["symbol"], 0.0))
                    comb = (z_g + w * z_h) / np.sqrt(1 + w * w)
                    if comb > z_g:
                        score[g["symbol"]] = comb
                        by[g["symbol"]] = h["id"]
            order = np.argsort(-score.to_numpy(), kind="mergesort")
            genes = score.index.to_numpy()[order]
            col = f"_{direction}" if f"p_{direction}" in by_gene else ""
            pv = by_gene[f"p{col}"].reindex(genes).to_numpy(float)
            qv = by_gene[f"q{col}"].reindex(genes).to_numpy(float)
            frames.append(pd.DataFrame({
                "method": method, "cell_type": ct, "direction": direction,
                "rank": np.arange(1, len(genes) + 1), "gene": genes,
                "score": score.to_numpy()[order], "pval": pv, "qval": qv,
                "promoted_by": by.reindex(genes).to_numpy()}))
    cols = ["method", "cell_type", "direction", "rank", "gene", "score", "pval", "qval",
            "promoted_by"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
