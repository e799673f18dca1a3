"""The records a run's conclusions are made of, one typed shape each: :class:`Flag`,
:class:`Evidence`, :class:`Hypothesis` (``hypotheses.json``), :class:`RationaleStep` and
:class:`Plan` (``plans.json``); and the hypothesis score, computed in one pure function
(:func:`score_hypothesis`) whose weights also write the formula text.

Every record has ``to_dict`` / ``from_dict``; ``to_dict`` writes the fields in declaration
order, which is the order of the JSON contract (DESIGN.md), so files stay byte-stable.
``from_dict`` accepts files written by older versions (missing optional fields get their
defaults; unknown fields are kept in ``extra`` and written back).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import numpy as np

__all__ = ["SCORE_FORMULA", "SCORE_WEIGHTS", "Evidence", "Flag", "Hypothesis", "Plan",
           "RationaleStep", "Score", "score_hypothesis"]


def _plain(v: Any) -> Any:
    if hasattr(v, "to_dict"):
        return v.to_dict()
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


class _Record:
    """``to_dict`` in field order (``extra`` last, flattened); ``from_dict`` tolerant of
    missing optional fields and keeping unknown ones."""

    _nested: dict[str, Any] = {}

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            if f.name == "extra":
                continue
            v = getattr(self, f.name)
            if v is None and f.metadata.get("omit_none"):
                continue
            out[f.name] = _plain(v)
        out.update(getattr(self, "extra", {}) or {})
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        kw = {k: v for k, v in d.items() if k in names and k != "extra"}
        for name, build in cls._nested.items():
            if name in kw and kw[name] is not None:
                v = kw[name]
                kw[name] = [build(x) for x in v] if isinstance(v, list) else build(v)
        if "extra" in names:
            kw["extra"] = {k: v for k, v in d.items() if k not in names}
        return cls(**kw)


@dataclass
class Flag(_Record):
    """A reason to doubt a hypothesis (in ``flags``) or a note (in ``caveats``).

    Every flag demotes: ``confounded`` / ``artifact_program`` make the hypothesis ``flagged``,
    any other flag keeps it from ``supported``. Caveats never change the status. ``strength``
    in [0, 1]."""

    kind: str
    by: str | None
    strength: float
    detail: str


@dataclass
class Evidence(_Record):
    """The measured facts behind a hypothesis (DESIGN.md ``evidence``)."""

    attribution: float  # share of |attribution| into the case logit
    attribution_weight: float  # signed direct effect on the logit
    ablation_predicted: float  # the graph's prediction for ablating the features
    donor_level: dict[str, Any]  # Welch on donor means: effect, t, p, q, n_donors ...
    stability: float  # across SAE seeds
    replication: dict[str, Any]  # held-out test donors
    confounds: dict[str, Any]  # partial R² per covariate, single-donor influence
    gene_sides: dict[str, Any]  # top genes with and against the activation
    in_silico: dict[str, Any] | None = field(default=None, metadata={"omit_none": True})
    cross_check: dict[str, Any] | None = field(default=None, metadata={"omit_none": True})
    ablation_delta: float | None = field(default=None, metadata={"omit_none": True})
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Hypothesis(_Record):
    """One program the model uses to call one cell type's cells cases (hypotheses.json)."""

    cell_type: str
    direction: str  # "up" | "down": the program is higher / lower in case donors
    genes: list[dict[str, Any]]  # [{"symbol", "weight"}], most important first
    features: list[str]  # feature ids (discovery.io.layout.feature_id), largest share first
    feature_labels: dict[str, str]
    population_graph: str  # slug of the cohort graph it was read from
    evidence: Evidence
    biomarker: dict[str, Any]  # the distilled, model-free gene score
    donors: list[dict[str, Any]]  # one record per donor: activation, case, split, batch
    flags: list[Flag]
    status: str = "candidate"  # supported | candidate | flagged | rejected
    #: biomarker | mechanism (the model uses it) | de_only (donor-level statistics see it, the
    #: model does not use it)
    kind: str = "mechanism"
    #: informational notes (gene-set membership, evidence one side lacks): they never demote
    caveats: list[Flag] = field(default_factory=list)
    score: float = 0.0
    score_parts: dict[str, float] = field(default_factory=dict)
    id: str = ""
    rank: int = 0
    statement: str = ""
    plans: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    _nested = {"evidence": Evidence.from_dict, "flags": Flag.from_dict,
               "caveats": Flag.from_dict}

    @property
    def sort_key(self) -> tuple[float, str]:
        """Rank order: higher score first; ties by cell type and first feature (or gene)."""
        lead = self.features[0] if self.features else f"{self.direction}:{self.genes[0]['symbol']}"
        return (-self.score, f"{self.cell_type}:{lead}")


@dataclass
class RationaleStep(_Record):
    """One link of a plan's "why" chain, with the graph nodes and numbers it rests on."""

    step: str
    claim: str
    refs: dict[str, Any]
    numbers: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan(_Record):
    """An experimental plan for one hypothesis (plans.json)."""

    id: str
    hypothesis: str
    assay_id: str
    title: str
    assay: str
    modality: str
    design: str
    expected_outcome: str
    falsified_if: str
    readout: str
    prerequisites: list[str]
    controls: list[str]
    priority: float
    source: str
    rationale: list[RationaleStep]
    #: recommended | exploratory | needs more data (:data:`discovery.tl.plans.TIER_RULES`)
    tier: str = ""
    #: why this tier: the evidence present, what is missing, donors per group that would settle it
    tier_basis: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    _nested = {"rationale": RationaleStep.from_dict}


# ------------------------------------------------------------------------------- the score
#: weight of each part of the hypothesis score; they sum to 1
SCORE_WEIGHTS = {"A": 0.30, "D": 0.25, "R": 0.15, "S": 0.15, "G": 0.15}
#: a flagged hypothesis keeps this share of its score
FLAGGED_FACTOR = 0.25
SCORE_FORMULA = (
    "score = " + " + ".join(f"{w:.2f}·{k}" for k, w in SCORE_WEIGHTS.items())
    + f" (× {FLAGGED_FACTOR} if flagged); "
    "A = attribution share / largest share in the run, D = min(1, −log10 q / 5), "
    "R = 1 replicated on test donors (0.5 same direction only), S = stability "
    "across SAE seeds, G = cross-check agreement")


class Score(NamedTuple):
    score: float
    parts: dict[str, float]


def score_hypothesis(ev: Evidence, *, max_share: float, flagged: bool) -> Score:
    """The hypothesis score in [0, 1] (:data:`SCORE_FORMULA`).

    A = attribution / max_share, D = min(1, -log10(q) / 5), R = 1 if replicated (0.5 if same
    direction only), S = stability, G = cross-check agreement; NaN parts count 0.
    """
    dl, rep = ev.donor_level, ev.replication
    a = ev.attribution / max_share if max_share > 0 else 0.0
    d = min(1.0, -math.log10(max(dl["q"], 1e-300)) / 5) if np.isfinite(dl["q"]) else 0.0
    r = 1.0 if rep["replicated"] else (0.5 if rep["same_direction"] else 0.0)
    s = float(ev.stability) if np.isfinite(ev.stability) else 0.0
    g = (ev.cross_check or {}).get("agreement", 0.0)
    parts = {"A": a, "D": d, "R": r, "S": s, "G": g}
    w = SCORE_WEIGHTS
    score = w["A"] * a + w["D"] * d + w["R"] * r + w["S"] * s + w["G"] * g
    return Score(float(score * (FLAGGED_FACTOR if flagged else 1.0)), parts)
