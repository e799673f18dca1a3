"""Randomised cohorts: scenarios drawn from wide priors, so no method can fit the simulator.

The three named scenarios (:data:`discovery.io.simulate.SCENARIOS`) are fixed regression points
with fixed gene lists. A method tuned on them may have learnt the simulator rather than the
biology; the yardstick of generalisation is a suite of cohorts drawn here, each from its own
seed:

- **Design**: 12-80 donors (log-uniform), 30-70% cases (at least 4 per class), 50-500 cells
  per donor (log-uniform), 800-1500 genes. Gene symbols are random (real symbols only for the
  bundled marker, disease, housekeeping and artifact genes); the obs column names and the two
  label values are drawn from the spellings real cohorts use.
- **Programs** (0-5), each in a random cell type with at least 10 expected cells per donor (at
  most one per cell type and direction), on random genes from the genes expressed in
  that cell type (sometimes including heat-shock or immediate-early genes: those can be real
  biology), up or down, with one of three kinds:

  - ``shift``: in 40-100% of case donors, 20-100% of the cell type's cells shift the genes by
    0.3-2.0 log units (the kind donor means see);
  - ``rare``: a rare disease state: 5-20% of the cell type's cells, strongly shifted (1.5-3.0);
  - ``coexpression``: a state whose genes rise together in 20-50% of the cells while the other
    cells of the type fall slightly, so each gene's donor mean barely moves.

  ``rare`` and ``coexpression`` are where donor-mean statistics are weak by construction: a
  model that reads single cells has to show there what pseudobulk cannot.
- **Artifacts** (1-2), each aligned 0-90% with diagnosis: a batch program (in every cell type
  of one batch: immediate-early / heat-shock genes, or in about half the scenarios as many
  random genes outside every bundled gene set, so that a gene-set check cannot reject it by
  name), ambient RNA (one cell type's markers in
  the other cell types of one batch), a mitochondrial / library-size shift, a composition shift
  (one cell type's share changes in cases: no gene moves), and one outlier donor (a donor with
  random genes shifted in every cell).

Alignment ``a`` means P(technical side | case) = (1 + a) / 2 and P(technical side | control) =
(1 - a) / 2. The truth (programs, artifacts, the design and a difficulty summary) is written to
``uns['simulation']`` exactly as :func:`discovery.io.simulate.truth` reads it; nothing in the
counts or obs reveals it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from discovery.io import bundled
from discovery.io.simulate import CELL_TYPES, _Cohort, _counts, _symbols, real_gene_origin
from models.errors import InputError

__all__ = ["ArtifactSpec", "ProgramSpec", "RandomScenario", "draw_scenario", "random_suite",
           "simulate_scenario"]

PROGRAM_KINDS = ("shift", "rare", "coexpression")
#: share of batch programs whose genes lie outside every bundled gene set
UNLISTED_BATCH_SHARE = 0.5
ARTIFACT_KINDS = ("batch_program", "ambient", "qc_shift", "composition", "outlier_donor")

_LABEL_KEYS = ("diagnosis", "disease", "condition", "status", "group", "pathology")
_DONOR_KEYS = ("donor", "individual", "subject", "patient_id", "projid", "donor_id")
_CELL_TYPE_KEYS = ("cell_type", "celltype", "broad_type", "major_celltype", "annotation")
_BATCH_KEYS = ("batch", "seq_batch", "library_prep", "run", "chemistry_lot")
_LABELS = (("AD", "Control"), ("Alzheimer", "Healthy"), ("case", "control"), ("AD", "CTRL"),
           ("disease", "normal"))


@dataclass(frozen=True)
class ProgramSpec:
    """One planted disease program."""

    name: str
    kind: str  # shift | rare | coexpression
    cell_type: str
    direction: str  # up | down (in case donors)
    genes: tuple[str, ...]
    effect: float  # log shift of the genes in a program cell
    responder_fraction: float  # share of case donors affected
    state_fraction: tuple[float, float]  # share of the cell type's cells in the state


@dataclass(frozen=True)
class ArtifactSpec:
    """One planted technical artifact (or a biological nuisance: composition)."""

    kind: str
    alignment: float  # 0 (independent of diagnosis) .. 0.9
    effect: float
    genes: tuple[str, ...] = ()
    cell_type: str | None = None  # ambient: the source; composition: the shifted type


@dataclass(frozen=True)
class RandomScenario:
    """Everything drawn for one randomised cohort (the counts follow from ``seed``)."""

    seed: int
    n_donors: int
    n_cases: int
    cells_per_donor: int
    genes: tuple[str, ...]
    origin: dict[str, str]
    keys: dict[str, str]
    labels: tuple[str, str]  # (case, control)
    programs: tuple[ProgramSpec, ...]
    artifacts: tuple[ArtifactSpec, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"random-{self.seed}"

    def difficulty(self) -> dict[str, Any]:
        """The strata the generalisation report splits by."""
        effects = [p.effect for p in self.programs]
        align = max((a.alignment for a in self.artifacts), default=0.0)
        return {
            "n_programs": len(self.programs),
            "min_effect": float(min(effects)) if effects else None,
            "n_donors": self.n_donors,
            "max_alignment": float(align),
            "kinds": sorted({p.kind for p in self.programs}),
            "artifacts": sorted({a.kind for a in self.artifacts}),
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("genes")
        d.pop("origin")
        return d


# ------------------------------------------------------------------------------------------ draw
def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _universe(rng: np.random.Generator, n_genes: int) -> tuple[list[str], dict[str, str]]:
    """The named simulator's real symbols, random symbols for the rest."""
    origin = real_gene_origin()
    genes = list(origin)
    genes += _symbols(rng, n_genes - len(genes), set(genes))
    return genes, origin


def draw_scenario(seed: int, *, max_programs: int = 5, donors: tuple[int, int] = (12, 80),
                  cells_per_donor: tuple[int, int] = (50, 500),
                  n_genes: tuple[int, int] = (800, 1500)) -> RandomScenario:
    """Draw one scenario from the priors in the module docstring (deterministic for ``seed``).

    ``donors``, ``cells_per_donor`` and ``n_genes`` bound the design (smaller ranges give the
    quick suites of the tests); everything else follows the priors.
    """
    if donors[0] < 8 or donors[1] < donors[0]:
        msg = f"donors must be a range (lo, hi) with 8 <= lo <= hi; got {donors}"
        raise InputError(msg)
    rng = np.random.default_rng([seed, 7919])
    n_donors = int(round(_log_uniform(rng, *donors)))
    n_cases = int(np.clip(round(n_donors * rng.uniform(0.3, 0.7)), 4, n_donors - 4))
    cells = int(round(_log_uniform(rng, *cells_per_donor)))
    n_genes = int(rng.integers(n_genes[0], n_genes[1] + 1))
    genes, origin = _universe(rng, n_genes)
    ct_names = [c[0] for c in CELL_TYPES]
    keys = {"label_key": str(rng.choice(_LABEL_KEYS)), "donor_key": str(rng.choice(_DONOR_KEYS)),
            "cell_type_key": str(rng.choice(_CELL_TYPE_KEYS)),
            "batch_key": str(rng.choice(_BATCH_KEYS))}
    labels = _LABELS[int(rng.integers(len(_LABELS)))]
    # programs: genes drawn from the non-mitochondrial, non-marker genes (a program of another
    # type's markers would be an ambient artifact); immediate-early / heat-shock genes allowed
    markers = {g for g, o in origin.items() if o == "marker"}
    pool = [g for g in genes if not g.startswith("MT-") and g not in markers]
    n_prog = int(rng.integers(0, max_programs + 1))
    used: set[str] = set()
    programs = []
    # a program lives in a cell type with >= 10 expected cells per donor (fewer cannot be tested
    # at donor level by any method), at most one program per (cell type, direction) so that each
    # program has its own ranked list to be found in
    testable = [c[0] for c in CELL_TYPES if c[1] * cells >= 10]
    slots = [(c, d) for c in testable for d in ("up", "down")]
    slots = [slots[i] for i in rng.permutation(len(slots))]
    for i in range(min(n_prog, len(slots))):
        kind = str(rng.choice(PROGRAM_KINDS, p=[0.6, 0.2, 0.2]))
        size = int(rng.integers(5, 16))
        free = [g for g in pool if g not in used]
        chosen = [str(g) for g in rng.choice(free, size=size, replace=False)]
        used.update(chosen)
        if kind == "shift":
            effect, frac = rng.uniform(0.3, 2.0), (rng.uniform(0.2, 1.0),)
            frac = (float(frac[0]), float(min(1.0, frac[0] + 0.2)))
        elif kind == "rare":
            effect = rng.uniform(1.5, 3.0)
            lo = rng.uniform(0.05, 0.15)
            frac = (float(lo), float(lo + 0.05))
        else:
            effect = rng.uniform(0.8, 2.0)
            lo = rng.uniform(0.2, 0.45)
            frac = (float(lo), float(lo + 0.05))
        programs.append(ProgramSpec(
            name=f"program {i + 1} ({kind})", kind=kind,
            cell_type=slots[i][0], direction=slots[i][1], genes=tuple(chosen),
            effect=round(float(effect), 3), responder_fraction=round(float(rng.uniform(0.4, 1.0)),
                                                                    3),
            state_fraction=(round(frac[0], 3), round(frac[1], 3))))
    artifacts = []
    ieg_hs = [g for n in ("Dissociation stress (immediate-early genes)", "Heat shock")
              for g in bundled.gene_set(n).genes]
    for kind in rng.choice(ARTIFACT_KINDS, size=int(rng.integers(1, 3)), replace=False):
        kind = str(kind)
        align = round(float(rng.uniform(0.0, 0.9)), 3)
        if kind == "batch_program":
            k = int(rng.integers(8, len(ieg_hs) + 1))
            effect = round(float(rng.uniform(0.5, 1.6)), 3)
            chosen = [str(g) for g in rng.choice(ieg_hs, k, replace=False)]
            # in about half the scenarios the batch moves genes outside every bundled gene set
            # (a side stream: every other draw of the scenario stays as it was), so no method
            # can reject the artifact by its gene names alone
            side = np.random.default_rng([seed, 2_750_159])  # no other stream uses this key
            unnamed = [g for g in pool if g not in origin and g not in used]
            if side.random() < UNLISTED_BATCH_SHARE and len(unnamed) >= k:
                chosen = [str(g) for g in side.choice(unnamed, k, replace=False)]
            artifacts.append(ArtifactSpec(kind, align, effect, tuple(chosen)))
        elif kind == "ambient":
            src = str(rng.choice(ct_names[:4]))
            src_genes = bundled.gene_sets(category="marker", tissue="brain")
            g = next(s.genes for s in src_genes if s.cell_type == src)
            artifacts.append(ArtifactSpec(kind, align, round(float(rng.uniform(1.0, 2.5)), 3),
                                          tuple(g), cell_type=src))
        elif kind == "qc_shift":
            mt = tuple(g for g in genes if g.startswith("MT-"))
            artifacts.append(ArtifactSpec(kind, align, round(float(rng.uniform(0.5, 1.5)), 3),
                                          mt))
        elif kind == "composition":
            artifacts.append(ArtifactSpec(kind, align, round(float(rng.uniform(0.4, 0.8)), 3),
                                          cell_type=str(rng.choice(ct_names[:6]))))
        else:  # outlier donor: strong shifts of random genes in every cell of one donor
            g = [str(x) for x in rng.choice([x for x in pool if x not in used], 20,
                                            replace=False)]
            artifacts.append(ArtifactSpec(kind, align, round(float(rng.uniform(1.0, 2.0)), 3),
                                          tuple(g)))
    return RandomScenario(seed=seed, n_donors=n_donors, n_cases=n_cases, cells_per_donor=cells,
                          genes=tuple(genes), origin=origin, keys=keys, labels=labels,
                          programs=tuple(programs), artifacts=tuple(artifacts))


def random_suite(n: int, seed: int = 0, **kw: Any) -> list[RandomScenario]:
    """``n`` scenarios, drawn from seeds ``seed * 100_000 + i``."""
    return [draw_scenario(seed * 100_000 + i, **kw) for i in range(n)]


# -------------------------------------------------------------------------------------- simulate
def _aligned(rng: np.random.Generator, is_case: np.ndarray, alignment: float) -> np.ndarray:
    """Per donor: on the technical side, P = (1 + a) / 2 for cases and (1 - a) / 2 for controls."""
    out = np.zeros(len(is_case), bool)
    for flag, p in ((True, (1 + alignment) / 2), (False, (1 - alignment) / 2)):
        members = np.flatnonzero(is_case == flag)
        out[rng.permutation(members)[: int(round(len(members) * p))]] = True
    return out


def simulate_scenario(scenario: RandomScenario, *, clean: bool = False) -> ad.AnnData:
    """The cohort of a drawn scenario: counts in ``X`` (CSR float32), obs under the scenario's
    column names, truth in ``uns['simulation']`` (deterministic for the scenario).

    ``clean``: its twin with every artifact switched off at the source — the same random draws,
    so the same donors, batches, cells and program states, but no batch program, no ambient
    soup, no QC shift and no outlier donor: what a perfect de-confounding could at best recover
    (the upper bound the feedback benchmark compares a child run with). A composition shift
    stays: it changes which cells exist, not what they express, so no refinement of the model
    can remove it, and removing it would change the cells themselves.
    """
    off = 0.0 if clean else 1.0
    rng = np.random.default_rng([scenario.seed, 104729])
    genes = list(scenario.genes)
    gidx = {g: i for i, g in enumerate(genes)}
    n_g, n_d = len(genes), scenario.n_donors
    ct_names = [c[0] for c in CELL_TYPES]
    n_ct = len(ct_names)
    is_mt = np.array([g.startswith("MT-") for g in genes])

    is_case = np.zeros(n_d, bool)
    is_case[rng.permutation(n_d)[: scenario.n_cases]] = True
    donor_ids = [f"{p}{i:03d}" for p, i in zip(rng.choice(list("DPSR"), n_d), range(1, n_d + 1))]
    tech = _aligned(rng, is_case, next((a.alignment for a in scenario.artifacts
                                        if a.kind in ("batch_program", "ambient")), 0.0))

    # composition (and its artifact)
    base_prop = np.array([c[1] for c in CELL_TYPES])
    comp = next((a for a in scenario.artifacts if a.kind == "composition"), None)
    comp_side = _aligned(rng, is_case, comp.alignment) if comp else np.zeros(n_d, bool)
    n_cells_d = np.maximum(rng.poisson(scenario.cells_per_donor, n_d), 20)
    ct_of_cell, donor_of_cell = [], []
    for d in range(n_d):
        prop = base_prop.copy()
        if comp is not None and comp_side[d]:
            prop[ct_names.index(comp.cell_type)] *= comp.effect
        prop /= prop.sum()
        cts = rng.choice(n_ct, size=n_cells_d[d], p=rng.dirichlet(prop * 60.0))
        ct_of_cell.append(np.sort(cts))
        donor_of_cell.append(np.full(n_cells_d[d], d))
    ct_of_cell = np.concatenate(ct_of_cell)
    donor_of_cell = np.concatenate(donor_of_cell)
    n_cells = len(ct_of_cell)

    # expression profiles, as the named simulator draws them
    base = rng.normal(-1.0, 1.2, n_g)
    for g, kind in scenario.origin.items():
        base[gidx[g]] = {"housekeeping": rng.normal(3.0, 0.5), "artifact": rng.normal(1.0, 0.5),
                         "disease": rng.normal(0.8, 0.5)}.get(kind, base[gidx[g]])
    profile = np.tile(base, (n_ct, 1))
    structured = rng.random(n_g) < 0.15
    profile += np.where(structured, rng.normal(0, 1.0, (n_ct, n_g)),
                        rng.normal(0, 0.15, (n_ct, n_g)))
    for gs in bundled.gene_sets(category="marker", tissue="brain"):
        k = ct_names.index(gs.cell_type)
        for g in gs.genes:
            profile[:, gidx[g]] = rng.normal(-1.5, 0.3)
            profile[k, gidx[g]] = rng.normal(3.0, 0.4)
    # program genes must be measurable in their cell type: lift any that are nearly silent
    for p in scenario.programs:
        k = ct_names.index(p.cell_type)
        for g in p.genes:
            profile[k, gidx[g]] = max(profile[k, gidx[g]], rng.normal(0.8, 0.5))
    dispersion = np.exp(rng.normal(np.log(0.25), 0.4, n_g))
    mt_share = rng.dirichlet(np.full(int(is_mt.sum()), 5.0))
    donor_gene = rng.normal(0, 0.1, (n_d, n_g))

    edits: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    programs_truth: dict[str, Any] = {}
    case_donors = np.flatnonzero(is_case)
    for p in scenario.programs:
        k = ct_names.index(p.cell_type)
        cols = np.array([gidx[g] for g in p.genes])
        sign = 1.0 if p.direction == "up" else -1.0
        weights = rng.uniform(0.6, 1.4, len(cols))
        affected = np.sort(rng.permutation(case_donors)[
            : max(1, int(round(len(case_donors) * p.responder_fraction)))])
        for d in affected:
            cells = np.flatnonzero((donor_of_cell == d) & (ct_of_cell == k))
            frac = rng.uniform(*p.state_fraction)
            state = rng.random(len(cells)) < frac
            sev = rng.uniform(0.7, 1.3)
            edits.append((cells[state], cols, sign * p.effect * sev * weights))
            if p.kind == "coexpression" and (~state).any():
                # the other cells move the opposite way: the donor mean barely moves
                back = p.effect * sev * frac / max(1 - frac, 0.05)
                edits.append((cells[~state], cols, -sign * back * weights))
        programs_truth[p.name] = {
            "cell_type": p.cell_type, "direction": p.direction, "genes": list(p.genes),
            "gene_weights": [round(float(w), 4) for w in weights], "effect_size": p.effect,
            "kind": p.kind, "responder_fraction": p.responder_fraction,
            "state_fraction": list(p.state_fraction),
            "affected_donors": [donor_ids[d] for d in affected]}

    batch_cols, batch_shift = np.array([], int), np.array([])
    lib_median = np.array([c[2] for c in CELL_TYPES])[ct_of_cell]
    lib = lib_median * np.exp(rng.normal(0, 0.2, n_d))[donor_of_cell] * np.exp(
        rng.normal(0, 0.35, n_cells))
    logit_mt = (np.log(0.02 / 0.98) + rng.normal(0, 0.3, n_d)[donor_of_cell]
                + rng.normal(0, 0.5, n_cells))
    artifacts_truth: dict[str, Any] = {}
    for i, a in enumerate(scenario.artifacts):
        name = f"{a.kind} ({i + 1})"
        entry: dict[str, Any] = {"kind": a.kind, "alignment": a.alignment,
                                 "effect_size": a.effect if a.kind == "composition"
                                 else off * a.effect}
        if a.kind == "batch_program":
            batch_cols = np.array([gidx[g] for g in a.genes])
            batch_shift = off * a.effect * rng.uniform(0.6, 1.4, len(batch_cols))
            lib *= np.where(tech[donor_of_cell], 0.85 ** off, 1.0)
            entry.update(driven_by="batch", genes=list(a.genes))
        elif a.kind == "ambient":
            cols = np.array([gidx[g] for g in a.genes])
            src = ct_names.index(a.cell_type)
            for d in np.flatnonzero(tech):
                cells = np.flatnonzero((donor_of_cell == d) & (ct_of_cell != src))
                # a soup of the source type's transcripts: lifts its markers where they are low
                edits.append((cells, cols, np.full(len(cols), off * a.effect)))
            entry.update(driven_by="batch", genes=list(a.genes), source=a.cell_type)
        elif a.kind == "qc_shift":
            side = _aligned(rng, is_case, a.alignment)
            logit_mt += off * a.effect * side[donor_of_cell]
            lib *= np.where(side[donor_of_cell], np.exp(-0.4 * off * a.effect), 1.0)
            entry.update(driven_by="pct_counts_mt", genes=list(a.genes),
                         donors=[donor_ids[d] for d in np.flatnonzero(side)])
        elif a.kind == "composition":
            entry.update(driven_by="composition", genes=[], cell_type=a.cell_type,
                         donors=[donor_ids[d] for d in np.flatnonzero(comp_side)])
        else:
            # the outlier is a case with probability (1 + a) / 2
            pick_case = rng.random() < (1 + a.alignment) / 2
            d = int(rng.choice(np.flatnonzero(is_case == pick_case)))
            cols = np.array([gidx[g] for g in a.genes])
            edits.append((np.flatnonzero(donor_of_cell == d), cols,
                          off * a.effect * rng.choice([-1.0, 1.0], len(cols))))
            entry.update(driven_by="donor", genes=list(a.genes), donor=donor_ids[d])
        artifacts_truth[name] = entry
    f_mt = 1.0 / (1.0 + np.exp(-logit_mt))

    k = scenario.keys
    case, control = scenario.labels
    batch_names = sorted(_symbols(rng, 2, set()))
    width = max(6, len(str(n_cells - 1)))
    obs = pd.DataFrame({
        k["label_key"]: pd.Categorical(np.where(is_case, case, control)[donor_of_cell],
                                       categories=[control, case]),
        k["donor_key"]: pd.Categorical(np.array(donor_ids)[donor_of_cell], categories=donor_ids),
        k["cell_type_key"]: pd.Categorical(np.array(ct_names)[ct_of_cell], categories=ct_names),
        k["batch_key"]: pd.Categorical(np.where(tech, batch_names[1], batch_names[0])
                                       [donor_of_cell], categories=batch_names),
        "sex": pd.Categorical(rng.choice(["F", "M"], n_d)[donor_of_cell], categories=["F", "M"]),
        "age": np.round(rng.normal(80, 7, n_d), 0)[donor_of_cell].astype(np.float32),
    }, index=[f"c{i:0{width}d}" for i in range(n_cells)])
    cohort = _Cohort(genes=genes, origin=scenario.origin, ct_of_cell=ct_of_cell,
                     donor_of_cell=donor_of_cell, profile=profile, donor_gene=donor_gene,
                     edits=edits, batch_cols=batch_cols, batch_shift=batch_shift,
                     in_tech=tech[donor_of_cell], lib=lib, f_mt=f_mt, is_mt=is_mt,
                     mt_share=mt_share, dispersion=dispersion, obs=obs, truth={})
    var = pd.DataFrame(index=genes)
    adata = ad.AnnData(X=sp.csr_matrix(_counts(cohort, 0, n_cells, rng)), obs=obs, var=var)
    truth = {
        "scenario": scenario.name + ("-clean" if clean else ""), "seed": scenario.seed,
        "params": scenario.to_dict(), "clean": clean,
        "difficulty": scenario.difficulty(), "label_key": k["label_key"], "case": case,
        "keys": k, "programs": programs_truth, "artifacts": artifacts_truth,
        "donors": {d: {"diagnosis": case if is_case[i] else control,
                       "batch": batch_names[int(tech[i])]} for i, d in enumerate(donor_ids)},
    }
    adata.uns["simulation"] = {"truth_json": json.dumps(truth, sort_keys=True, default=str)}
    return adata
