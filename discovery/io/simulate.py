"""Simulated Alzheimer's cohorts whose truth is known.

The generative model, per scenario (see :data:`SCENARIOS`):

1. Donors: half cases (``AD``), half controls, each with sex, age, a batch (partly aligned with
   diagnosis, by scenario) and a library-size factor.
2. Composition: cell-type proportions per donor from a Dirichlet around brain-like proportions;
   in cases, excitatory neurons are depleted (neuronal loss).
3. Expression: a log-mean profile per cell type (real marker genes from ``data/gene_sets.yaml``
   high in their type, plus random cell-type structure over placeholder genes), donor random
   effects per gene, and negative-binomial (gamma-Poisson) counts with gene-wise dispersions and
   log-normal library sizes that differ by cell type.
4. Disease programs (bundled ``disease`` gene sets): in *affected* case donors (not all), a
   fraction of the cells of the program's cell type shift the program genes up or down.
5. Confounders: a technical program in every cell type of one batch, and a QC artifact: a higher
   mitochondrial fraction in cases. The technical program's genes are the bundled dissociation
   stress and heat shock sets (``technical_genes="listed"``) or, in the ``*_unlisted`` twins, genes
   that sit in no bundled gene set: the same cohort, count for count, with the gene names
   permuted so that the batch-shifted genes carry unlisted symbols and the dissociation / heat
   shock symbols label unaffected genes. A method that rejects artifacts because their names
   are in a gene set, not because of donor-level evidence, does worse on the twin.

Genes that no truth uses get random gene-like symbols (3-5 letters and 1-2 digits), not a
placeholder prefix: no prefix marks a gene as filler (a reader who knows real symbols can
still tell many of them apart; the methods here never read names except for gene sets).

The truth is written, JSON-safe, to ``uns['simulation']`` and read back with :func:`truth`.
"""

from __future__ import annotations

import json
import logging
import string
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.io import sparse_dataset, write_elem
from tqdm.auto import tqdm

from discovery.io import bundled
from models.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["CHUNKED_ABOVE_CELLS", "SCENARIOS", "Scenario", "chunk_size", "simulate", "truth",
           "write_simulated"]

#: (cell type, mean proportion, median library size of a nucleus); proportions follow the
#: prefrontal-cortex snRNA-seq of Mathys et al. 2019 with rare glia enriched so that every
#: donor has enough microglia and astrocytes for pseudobulk
CELL_TYPES: tuple[tuple[str, float, float], ...] = (
    ("Excitatory neurons", 0.36, 7000.0),
    ("Inhibitory neurons", 0.12, 5500.0),
    ("Astrocytes", 0.10, 3000.0),
    ("Oligodendrocytes", 0.24, 2800.0),
    ("OPC", 0.05, 3000.0),
    ("Microglia", 0.10, 2200.0),
    ("Endothelial", 0.03, 1800.0),
)

PROGRAMS = (
    "Disease-associated microglia",
    "Reactive astrocytes",
    "Synaptic genes",
    "Disease-associated oligodendrocytes",
)
BATCH_PROGRAM_SETS = ("Dissociation stress (immediate-early genes)", "Heat shock")
HOUSEKEEPING = ("ACTB", "GAPDH", "MALAT1", "TUBB", "EEF1A1", "TPT1", "UBC", "CALM1", "CALM2",
                "HSP90AB1", "PPIA", "FTL", "FTH1", "MT3", "CKB", "ENO2", "TUBA1A", "YWHAZ")


@dataclass(frozen=True)
class Scenario:
    """Parameters of one simulated cohort."""

    name: str
    description: str
    #: log-scale shift of program genes in program cells of affected donors (0: no disease)
    program_effect: float = 2.0
    #: fraction of case donors affected by each program
    affected_fraction: float = 0.85
    #: fraction of a cell type's cells in the disease state, per affected donor (low, high)
    state_fraction: tuple[float, float] = (0.75, 1.0)
    #: multiplier of the excitatory-neuron proportion in cases (1: no composition shift)
    neuron_loss: float = 0.65
    #: P(technical batch | case), P(technical batch | control)
    batch_alignment: tuple[float, float] = (0.7, 0.3)
    #: log-scale shift of the technical program in cells of the technical batch
    batch_effect: float = 1.0
    #: library-size multiplier in the technical batch
    batch_library: float = 0.8
    #: mean mitochondrial fraction (control) and log-odds shift in cases
    mito_fraction: float = 0.02
    mito_case_shift: float = 0.5
    donor_sd: float = 0.1
    composition_concentration: float = 60.0
    #: genes of the technical batch program: ``listed`` (the bundled dissociation stress and heat
    #: shock sets) or ``unlisted`` (as many genes outside every bundled set, by permuting names)
    technical_genes: str = "listed"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state_fraction"] = list(self.state_fraction)
        d["batch_alignment"] = list(self.batch_alignment)
        return d


SCENARIOS: dict[str, Scenario] = {
    "alzheimers": Scenario(
        "alzheimers",
        "Four planted disease programs in microglia, astrocytes, excitatory neurons and "
        "oligodendrocytes (not every case donor affected), neuronal loss, a technical batch "
        "partly aligned with diagnosis, and higher mitochondrial fraction in cases.",
    ),
    "null": Scenario(
        "null",
        "The same structure with no disease effect: no programs, no composition shift, batch "
        "and mitochondrial fraction independent of diagnosis.",
        program_effect=0.0,
        neuron_loss=1.0,
        batch_alignment=(0.5, 0.5),
        mito_case_shift=0.0,
    ),
    "confounded": Scenario(
        "confounded",
        "A strong technical batch almost aligned with diagnosis; the real disease programs are "
        "of moderate strength and affect fewer donors and cells: learnable once the artifacts "
        "are gone (its clean twin), hidden behind the batch shortcut while they are there.",
        program_effect=1.0,
        affected_fraction=0.7,
        state_fraction=(0.5, 0.8),
        neuron_loss=0.9,
        batch_alignment=(0.9, 0.1),
        batch_effect=1.6,
        mito_case_shift=0.9,
    ),
}
#: the ``confounded`` cohort with its technical effects switched off at the source: the same
#: donors, batches, cell states and programs (the random draws are the same), but the batch
#: shifts no gene and no library and cases have no extra mitochondrial reads — what a perfect
#: de-confounding could at best reach (benchmarks/eval_feedback.py --clean)
SCENARIOS["confounded_clean"] = replace(
    SCENARIOS["confounded"], name="confounded_clean",
    description="The confounded cohort with the technical batch and the mitochondrial artifact "
                "switched off (same donors, batches and programs): an upper bound for "
                "de-confounding.",
    batch_effect=0.0, batch_library=1.0, mito_case_shift=0.0)
#: twins whose technical batch program sits on genes outside every bundled gene set (the same
#: counts; only the names of the batch genes and of as many unaffected genes are swapped): the
#: benchmark's check that artifact rejection rests on donor-level evidence, not on gene-set names
for _name in ("alzheimers", "confounded"):
    SCENARIOS[f"{_name}_unlisted"] = replace(
        SCENARIOS[_name], name=f"{_name}_unlisted", technical_genes="unlisted",
        description=SCENARIOS[_name].description + " Twin: the technical batch program's genes "
                    "are in no bundled gene set.")


# ------------------------------------------------------------------------------------- helpers
def real_gene_origin() -> dict[str, str]:
    """Every real symbol a simulated cohort uses -> its origin (the bundled brain gene sets'
    category, or ``housekeeping``), in a fixed order."""
    origin: dict[str, str] = {}
    for gs in bundled.gene_sets(tissue="brain"):
        for g in gs.genes:
            origin.setdefault(g, gs.category)
    for g in HOUSEKEEPING:
        origin.setdefault(g, "housekeeping")
    return origin


def _symbols(rng: np.random.Generator, n: int, taken: set[str]) -> list[str]:
    """``n`` random gene-like symbols (3-5 letters and 1-2 digits), none in ``taken``."""
    out: list[str] = []
    seen = set(taken)
    letters = np.array(list(string.ascii_uppercase))
    while len(out) < n:
        s = "".join(rng.choice(letters, size=int(rng.integers(3, 6)))) + str(
            int(rng.integers(1, 100)))
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


#: name prefixes that QC reads as gene groups (mitochondrial, ribosomal): a random symbol must not
#: start with one, or a filler gene would join a QC metric
QC_PREFIXES = ("MT-", "RPS", "RPL")


def _gene_universe(n_genes: int, seed: int) -> tuple[list[str], dict[str, str]]:
    """Gene names: real symbols for everything the truth uses, random symbols for the rest.

    The random symbols come from their own generator (seeded by ``seed``), so they do not change
    any other draw of the cohort.
    """
    origin = real_gene_origin()
    genes = list(origin)
    if n_genes < len(genes) + 100:
        msg = f"n_genes must be at least {len(genes) + 100} (the real genes plus 100 others)"
        raise InputError(msg)
    rng = np.random.default_rng([seed, 2713])
    filler: list[str] = []
    while len(filler) < n_genes - len(genes):
        filler += [g for g in _symbols(rng, n_genes - len(genes) - len(filler),
                                       set(genes) | set(filler)) if not g.startswith(QC_PREFIXES)]
    return genes + filler, origin


def _unlisted(genes: list[str], origin: dict[str, str], cols: np.ndarray,
              seed: int) -> list[str]:
    """``genes`` with the names at ``cols`` swapped with as many names outside every bundled set
    (chosen by a generator of their own): the genes at ``cols`` keep their expression and get
    unlisted names; the listed names move to genes nothing planted touches."""
    rng = np.random.default_rng([seed, 3271])
    free = np.array([i for i, g in enumerate(genes) if g not in origin])
    other = rng.choice(free, size=len(cols), replace=False)
    out = list(genes)
    for a, b in zip(cols, other):
        out[a], out[b] = genes[b], genes[a]
    return out


def _assign_counts(n: int, fraction: float) -> int:
    return int(round(n * fraction))


# ------------------------------------------------------------------------------------ simulate
@dataclass
class _Cohort:
    """Everything about a simulated cohort except its count matrix, drawn once per seed.

    The counts are drawn from it row block by row block (:func:`_counts`), so a cohort too large
    for memory can be written in chunks (:func:`write_simulated`).
    """

    genes: list[str]
    origin: dict[str, str]
    ct_of_cell: np.ndarray
    donor_of_cell: np.ndarray
    profile: np.ndarray  # cell types x genes, log scale
    donor_gene: np.ndarray  # donors x genes, log scale
    #: disease programs: (cells in the program state, gene columns, log shift per gene)
    edits: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    batch_cols: np.ndarray
    batch_shift: np.ndarray
    in_tech: np.ndarray  # per cell: in the technical batch
    lib: np.ndarray  # per cell library size
    f_mt: np.ndarray  # per cell mitochondrial fraction
    is_mt: np.ndarray
    mt_share: np.ndarray
    dispersion: np.ndarray
    obs: pd.DataFrame
    truth: dict[str, Any]

    @property
    def n_cells(self) -> int:
        return len(self.ct_of_cell)

    def shell(self) -> ad.AnnData:
        """The cohort as an AnnData without ``X`` (obs, var with ``gene_origin``, the truth)."""
        var = pd.DataFrame(index=self.genes)
        var["gene_origin"] = pd.Categorical([self.origin.get(g, "filler")
                                             for g in self.genes])
        adata = ad.AnnData(obs=self.obs, var=var)
        # stored as a JSON string: h5ad cannot hold lists of dicts, and this round-trips exactly
        adata.uns["simulation"] = {"truth_json": json.dumps(self.truth, sort_keys=True)}
        return adata


def _check_args(scenario: str, n_donors: int, cells_per_donor: int) -> None:
    if scenario not in SCENARIOS:
        msg = f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}"
        raise InputError(msg)
    if n_donors < 6 or n_donors % 2:
        msg = f"n_donors must be even and at least 6 (3 per class for a split); got {n_donors}"
        raise InputError(msg)
    if cells_per_donor < 20:
        msg = f"cells_per_donor must be at least 20; got {cells_per_donor}"
        raise InputError(msg)


def _plan(scenario: str, rng: np.random.Generator, *, seed: int, n_donors: int,
          cells_per_donor: int, n_genes: int, label_key: str) -> _Cohort:
    """Donors, composition, profiles, programs and confounders: every draw but the counts."""
    _check_args(scenario, n_donors, cells_per_donor)
    sc_ = SCENARIOS[scenario]
    genes, origin = _gene_universe(n_genes, seed)
    gidx = {g: i for i, g in enumerate(genes)}
    n_g = len(genes)
    ct_names = [c[0] for c in CELL_TYPES]
    n_ct = len(ct_names)
    is_mt = np.array([g.startswith("MT-") for g in genes])

    # 1. donors ---------------------------------------------------------------------------------
    n_case = n_donors // 2
    donor_ids = [f"D{i + 1:03d}" for i in range(n_donors)]
    is_case_d = np.zeros(n_donors, bool)
    is_case_d[rng.permutation(n_donors)[:n_case]] = True
    tech_batch = np.zeros(n_donors, bool)
    for flag, p in ((True, sc_.batch_alignment[0]), (False, sc_.batch_alignment[1])):
        members = np.flatnonzero(is_case_d == flag)
        chosen = rng.permutation(members)[: _assign_counts(len(members), p)]
        tech_batch[chosen] = True
    sex = rng.choice(np.array(["F", "M"]), size=n_donors)
    age = np.round(rng.normal(80, 7, size=n_donors), 0)
    donor_lib = np.exp(rng.normal(0, 0.2, size=n_donors))
    donor_gene = rng.normal(0, sc_.donor_sd, size=(n_donors, n_g))
    donor_mito = rng.normal(0, 0.3, size=n_donors)

    # 2. composition ----------------------------------------------------------------------------
    base_prop = np.array([c[1] for c in CELL_TYPES])
    n_cells_d = np.maximum(rng.poisson(cells_per_donor, size=n_donors), 20)
    ct_of_cell, donor_of_cell = [], []
    for d in range(n_donors):
        prop = base_prop.copy()
        if is_case_d[d]:
            prop[0] *= sc_.neuron_loss
        prop /= prop.sum()
        p_d = rng.dirichlet(prop * sc_.composition_concentration)
        cts = rng.choice(n_ct, size=n_cells_d[d], p=p_d)
        ct_of_cell.append(np.sort(cts))
        donor_of_cell.append(np.full(n_cells_d[d], d))
    ct_of_cell = np.concatenate(ct_of_cell)
    donor_of_cell = np.concatenate(donor_of_cell)
    n_cells = len(ct_of_cell)

    # 3. expression profiles ----------------------------------------------------------------------
    base = rng.normal(-1.0, 1.2, size=n_g)
    for g, kind in origin.items():
        if kind == "housekeeping":
            base[gidx[g]] = rng.normal(3.0, 0.5)
        elif kind == "artifact":
            base[gidx[g]] = rng.normal(1.0, 0.5)
        elif kind == "disease":
            base[gidx[g]] = rng.normal(0.8, 0.5)
    profile = np.tile(base, (n_ct, 1))
    structured = rng.random(n_g) < 0.15
    profile += np.where(structured, rng.normal(0, 1.0, size=(n_ct, n_g)),
                        rng.normal(0, 0.15, size=(n_ct, n_g)))
    for gs in bundled.gene_sets(category="marker", tissue="brain"):
        k = ct_names.index(gs.cell_type)
        for g in gs.genes:
            profile[:, gidx[g]] = rng.normal(-1.5, 0.3)
            profile[k, gidx[g]] = rng.normal(3.0, 0.4)
    dispersion = np.exp(rng.normal(np.log(0.25), 0.4, size=n_g))
    mt_genes = np.flatnonzero(is_mt)
    mt_share = rng.dirichlet(np.full(len(mt_genes), 5.0))

    # 4. disease programs ---------------------------------------------------------------------------
    programs_truth: dict[str, Any] = {}
    edits: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    case_donors = np.flatnonzero(is_case_d)
    for name in PROGRAMS:
        gs = bundled.gene_set(name)
        k = ct_names.index(gs.cell_type)
        sign = 1.0 if gs.direction == "up" else -1.0
        weights = rng.uniform(0.6, 1.4, size=len(gs.genes))
        affected = np.sort(rng.permutation(case_donors)[: _assign_counts(len(case_donors),
                                                                         sc_.affected_fraction)])
        if sc_.program_effect > 0:
            cols = np.array([gidx[g] for g in gs.genes])
            for d in affected:
                cells = np.flatnonzero((donor_of_cell == d) & (ct_of_cell == k))
                frac = rng.uniform(*sc_.state_fraction)
                in_state = cells[rng.random(len(cells)) < frac]
                sev = rng.uniform(0.7, 1.3)
                edits.append((in_state, cols, sign * sc_.program_effect * sev * weights))
        programs_truth[name] = {
            "cell_type": gs.cell_type,
            "direction": gs.direction,
            "genes": list(gs.genes),
            "gene_weights": [round(float(w), 4) for w in weights],
            "effect_size": sc_.program_effect,
            "affected_donors": [donor_ids[d] for d in affected] if sc_.program_effect > 0 else [],
            "source": gs.source,
        }

    # 5. confounders: technical batch program, QC (mitochondrial fraction) --------------------------
    batch_genes = [g for name in BATCH_PROGRAM_SETS for g in bundled.gene_set(name).genes]
    bcols = np.array([gidx[g] for g in batch_genes])
    bweights = rng.uniform(0.6, 1.4, size=len(bcols))
    in_tech = tech_batch[donor_of_cell]

    lib_median = np.array([c[2] for c in CELL_TYPES])[ct_of_cell]
    lib = lib_median * donor_lib[donor_of_cell] * np.exp(rng.normal(0, 0.35, size=n_cells))
    lib *= np.where(in_tech, sc_.batch_library, 1.0)
    logit_mt = (np.log(sc_.mito_fraction / (1 - sc_.mito_fraction)) + donor_mito[donor_of_cell]
                + sc_.mito_case_shift * is_case_d[donor_of_cell] + rng.normal(0, 0.5, n_cells))
    f_mt = 1.0 / (1.0 + np.exp(-logit_mt))
    if sc_.technical_genes == "unlisted":
        listed_names = genes
        genes = _unlisted(genes, origin, bcols, seed)
        # the origin of each position, under its new name: the batch genes are artifacts
        # whatever they are called, the listed names now label filler genes
        origin = {new: origin[old] for new, old in zip(genes, listed_names) if old in origin}
        batch_genes = [genes[i] for i in bcols]
        batch_sources = ["genes in no bundled gene set (the names of the dissociation stress and "
                         "heat shock genes moved to unaffected genes)"]
    else:
        batch_sources = [bundled.gene_set(n).source for n in BATCH_PROGRAM_SETS]

    width = max(6, len(str(n_cells - 1)))
    obs = pd.DataFrame(
        {
            label_key: pd.Categorical(np.where(is_case_d, "AD", "Control")[donor_of_cell],
                                      categories=["Control", "AD"]),
            "donor": pd.Categorical(np.array(donor_ids)[donor_of_cell], categories=donor_ids),
            "cell_type": pd.Categorical(np.array(ct_names)[ct_of_cell], categories=ct_names),
            "batch": pd.Categorical(np.where(tech_batch, "B2", "B1")[donor_of_cell],
                                    categories=["B1", "B2"]),
            "sex": pd.Categorical(sex[donor_of_cell], categories=["F", "M"]),
            "age": age[donor_of_cell].astype(np.float32),
        },
        index=[f"cell{i:0{width}d}" for i in range(n_cells)],
    )
    truth_d = {
        "scenario": scenario,
        "description": sc_.description,
        "seed": int(seed),
        "params": {**sc_.to_dict(), "n_donors": n_donors, "cells_per_donor": cells_per_donor,
                   "n_genes": n_genes},
        "label_key": label_key,
        "case": "AD",
        "programs": programs_truth,
        "artifacts": {
            "technical batch": {
                "kind": "batch", "driven_by": "batch", "level": "B2",
                "genes": batch_genes, "effect_size": sc_.batch_effect,
                "listed": sc_.technical_genes == "listed", "sources": batch_sources,
            },
            "mitochondrial fraction": {
                "kind": "qc", "driven_by": "pct_counts_mt", "level": "higher in AD",
                "genes": [genes[i] for i in mt_genes], "effect_size": sc_.mito_case_shift,
                "listed": True, "sources": [bundled.gene_set("Mitochondrial genes").source],
            },
        },
        "donors": {
            d: {"diagnosis": "AD" if is_case_d[i] else "Control",
                "batch": "B2" if tech_batch[i] else "B1"}
            for i, d in enumerate(donor_ids)
        },
    }
    return _Cohort(genes=genes, origin=origin, ct_of_cell=ct_of_cell, donor_of_cell=donor_of_cell,
                   profile=profile, donor_gene=donor_gene, edits=edits, batch_cols=bcols,
                   batch_shift=sc_.batch_effect * bweights, in_tech=in_tech, lib=lib, f_mt=f_mt,
                   is_mt=is_mt, mt_share=mt_share, dispersion=dispersion, obs=obs, truth=truth_d)


def _counts(c: _Cohort, start: int, stop: int, rng: np.random.Generator) -> np.ndarray:
    """Negative-binomial counts (float32) of cells ``start:stop``."""
    log_mu = c.profile[c.ct_of_cell[start:stop]] + c.donor_gene[c.donor_of_cell[start:stop]]
    for cells, cols, shift in c.edits:
        rows = cells[(cells >= start) & (cells < stop)] - start
        if len(rows):
            log_mu[np.ix_(rows, cols)] += shift
    tech = np.flatnonzero(c.in_tech[start:stop])
    log_mu[np.ix_(tech, c.batch_cols)] += c.batch_shift
    lib, f_mt = c.lib[start:stop], c.f_mt[start:stop]

    # counts: softmax over nuclear genes x library, plus the mitochondrial share
    log_mu[:, c.is_mt] = -np.inf
    log_mu -= log_mu.max(axis=1, keepdims=True)
    mu = np.exp(log_mu)
    mu /= mu.sum(axis=1, keepdims=True)
    mu *= (lib * (1 - f_mt))[:, None]
    mu[:, np.flatnonzero(c.is_mt)] = (lib * f_mt)[:, None] * c.mt_share[None, :]
    shape = 1.0 / c.dispersion
    lam = rng.gamma(shape[None, :], (mu / shape[None, :]))
    return rng.poisson(lam).astype(np.float32)


def simulate(
    scenario: str = "alzheimers",
    *,
    seed: int = 0,
    n_donors: int = 48,
    cells_per_donor: int = 200,
    n_genes: int = 2000,
    label_key: str = "diagnosis",
) -> ad.AnnData:
    """Simulate a cohort; deterministic for a seed (byte-identical counts and truth).

    Returns an AnnData with integer counts in ``X`` (CSR, float32), obs ``diagnosis`` (``AD`` /
    ``Control``), ``donor``, ``cell_type``, ``batch``, ``sex``, ``age``, and the truth in
    ``uns['simulation']``. For cohorts larger than memory use :func:`write_simulated`.
    """
    rng = np.random.default_rng(seed)
    c = _plan(scenario, rng, seed=seed, n_donors=n_donors, cells_per_donor=cells_per_donor,
              n_genes=n_genes, label_key=label_key)
    adata = c.shell()
    adata.X = sp.csr_matrix(_counts(c, 0, c.n_cells, rng))
    log.info("simulated %s: %d cells x %d genes, %d donors", scenario, c.n_cells, len(c.genes),
             n_donors)
    return adata


#: cohorts above this many cells are written in chunks (the whole matrix never sits in memory)
CHUNKED_ABOVE_CELLS = 200_000
#: rows per chunk when chunking
DEFAULT_CHUNK_CELLS = 50_000


def chunk_size(n_cells: int, asked: int | None = None) -> int | None:
    """Rows per chunk for a cohort of ``n_cells`` (``asked`` wins; None: write in one piece)."""
    if asked is not None:
        return asked
    return DEFAULT_CHUNK_CELLS if n_cells > CHUNKED_ABOVE_CELLS else None


def write_simulated(
    path: str | Path,
    scenario: str = "alzheimers",
    *,
    seed: int = 0,
    n_donors: int = 48,
    cells_per_donor: int = 200,
    n_genes: int = 2000,
    label_key: str = "diagnosis",
    chunk_cells: int = DEFAULT_CHUNK_CELLS,
) -> tuple[int, int]:
    """Simulate a cohort straight to an ``.h5ad`` file, ``chunk_cells`` rows at a time.

    Memory holds the cohort's plan (per-cell labels, library sizes: a few numbers per cell) and one
    chunk of counts, so a million cells need well under 1 GB. The counts of chunk ``i`` come from
    their own generator, seeded by ``SeedSequence(seed).spawn``: the file is deterministic for a
    seed, but its counts are not the draws :func:`simulate` makes for the same seed (the truth,
    donors and cells are the same). ``X`` is CSR, so the file reads back in backed mode by rows.
    Returns (cells, genes).
    """
    if chunk_cells < 1:
        msg = f"chunk_cells must be positive, got {chunk_cells}"
        raise InputError(msg)
    rng = np.random.default_rng(seed)
    c = _plan(scenario, rng, seed=seed, n_donors=n_donors, cells_per_donor=cells_per_donor,
              n_genes=n_genes, label_key=label_key)
    c.shell().write_h5ad(path)
    starts = range(0, c.n_cells, chunk_cells)
    seqs = np.random.SeedSequence(seed).spawn(len(starts))
    with h5py.File(path, "a") as f:
        for i, a in enumerate(tqdm(starts, desc="simulate (chunks)", disable=not log.isEnabledFor(logging.INFO))):
            counts = sp.csr_matrix(_counts(c, a, min(a + chunk_cells, c.n_cells),
                                           np.random.default_rng(seqs[i])))
            if i == 0:
                write_elem(f, "X", counts)
            else:
                sparse_dataset(f["X"]).append(counts)
    log.info("simulated %s: %d cells x %d genes, %d donors, written in %d chunks", scenario,
             c.n_cells, len(c.genes), n_donors, len(starts))
    return c.n_cells, len(c.genes)


def truth(adata: ad.AnnData) -> dict[str, Any]:
    """The planted truth of a simulated cohort (``uns['simulation']``)."""
    try:
        return json.loads(adata.uns["simulation"]["truth_json"])
    except KeyError as err:
        msg = "adata has no uns['simulation']: it was not made by `discovery simulate`."
        raise KeyError(msg) from err
