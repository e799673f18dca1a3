"""``dc.tl``: the tools between the data and a plan, in the order the pipeline runs them.

classifier (``train``) -> features (``fit_saes``) -> annotate (``annotate_features``) ->
attribution / graphs (``cohort_graph``) -> interventions (``validate_graph``,
``perturb_genes``) -> hypotheses (``propose_hypotheses``) -> plans (``make_plans``); beside
them: baselines (``rank_genes``), statistics (``stats``), the 2-D embedding (``umap``),
refinement after expert feedback (``refine``) and scoring against planted truth
(``yardstick``).
"""

from __future__ import annotations

from discovery.io.lazy import attach

#: public name -> (module that defines it, its name there when it differs). Loaded on first
#: use: ``import discovery.tl.shortcuts`` (or ``dc.tl.stats``) must not load PyTorch.
_LAZY: dict[str, tuple[str, str | None]] = {
    "refine": ("discovery.tl.refine", None),
    "stats": ("discovery.tl.stats", None),
    "yardstick": ("discovery.tl.yardstick", None),
    "annotate_features": ("discovery.tl.annotate", None),
    "SAEHook": ("discovery.tl.attribution", None),
    "integrated_gradients": ("discovery.tl.attribution", None),
    "rank_genes": ("discovery.tl.baselines", None),
    "to_rank_genes_groups": ("discovery.tl.baselines", None),
    "TrainedClassifier": ("discovery.tl.classifier", None),
    "evaluate": ("discovery.tl.classifier", None),
    "predict": ("discovery.tl.classifier", None),
    "shortcut_probe": ("discovery.tl.classifier", None),
    "train": ("discovery.tl.classifier", None),
    "load_model": ("discovery.tl.classifier", 'load'),
    "umap": ("discovery.tl.embedding", None),
    "FittedSAEs": ("discovery.tl.features", None),
    "SAESpec": ("discovery.tl.features", None),
    "encode_cells": ("discovery.tl.features", None),
    "fit_saes": ("discovery.tl.features", None),
    "match_features": ("discovery.tl.features", None),
    "sae_quality": ("discovery.tl.features", None),
    "AttributionGraph": ("discovery.tl.graphs", None),
    "GraphSpec": ("discovery.tl.graphs", None),
    "Population": ("discovery.tl.graphs", None),
    "case_populations": ("discovery.tl.graphs", None),
    "cohort_graph": ("discovery.tl.graphs", None),
    "example_cells": ("discovery.tl.graphs", None),
    "population_mask": ("discovery.tl.graphs", None),
    "HypothesisSpec": ("discovery.tl.hypotheses", None),
    "propose_hypotheses": ("discovery.tl.hypotheses", None),
    "FeatureEdit": ("discovery.tl.interventions", None),
    "intervene": ("discovery.tl.interventions", None),
    "perturb_genes": ("discovery.tl.interventions", None),
    "validate_graph": ("discovery.tl.interventions", None),
    "validation_summary": ("discovery.tl.interventions", None),
    "make_plans": ("discovery.tl.plans", None),
    "Evidence": ("discovery.tl.records", None),
    "Flag": ("discovery.tl.records", None),
    "Hypothesis": ("discovery.tl.records", None),
    "Plan": ("discovery.tl.records", None),
    "score_hypothesis": ("discovery.tl.records", None),
    "shortcut_findings": ("discovery.tl.shortcuts", None),
    "TrainConfig": ("models.training", None),
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = attach(__name__, _LAZY)
