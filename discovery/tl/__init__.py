"""``dc.tl``: the tools between the data and a plan, in the order the pipeline runs them.

classifier (``train``) -> features (``fit_saes``) -> annotate (``annotate_features``) ->
attribution / graphs (``cohort_graph``) -> interventions (``validate_graph``,
``perturb_genes``) -> hypotheses (``propose_hypotheses``) -> plans (``make_plans``); beside
them: baselines (``rank_genes``), statistics (``stats``), the 2-D embedding (``umap``),
refinement after expert feedback (``refine``) and scoring against planted truth
(``yardstick``).
"""

from discovery.tl import refine, stats, yardstick
from discovery.tl.annotate import annotate_features
from discovery.tl.attribution import SAEHook, integrated_gradients
from discovery.tl.baselines import rank_genes, to_rank_genes_groups
from discovery.tl.classifier import TrainedClassifier, evaluate, predict, shortcut_probe, train
from discovery.tl.classifier import load as load_model
from discovery.tl.embedding import umap
from discovery.tl.features import (
    FittedSAEs,
    SAESpec,
    encode_cells,
    fit_saes,
    match_features,
    sae_quality,
)
from discovery.tl.graphs import (
    AttributionGraph,
    GraphSpec,
    Population,
    case_populations,
    cohort_graph,
    example_cells,
    population_mask,
)
from discovery.tl.hypotheses import HypothesisSpec, propose_hypotheses
from discovery.tl.interventions import (
    FeatureEdit,
    intervene,
    perturb_genes,
    validate_graph,
    validation_summary,
)
from discovery.tl.plans import make_plans
from discovery.tl.records import Evidence, Flag, Hypothesis, Plan, score_hypothesis
from models.training import TrainConfig

__all__ = [
    "AttributionGraph", "Evidence", "Flag", "Hypothesis", "Plan", "TrainConfig", "score_hypothesis",
    "FeatureEdit", "FittedSAEs", "GraphSpec", "HypothesisSpec", "Population", "SAEHook",
    "SAESpec", "TrainedClassifier", "annotate_features", "case_populations", "cohort_graph",
    "encode_cells", "evaluate", "example_cells", "fit_saes", "integrated_gradients",
    "intervene", "load_model", "make_plans", "match_features", "perturb_genes",
    "population_mask", "predict", "propose_hypotheses", "rank_genes", "sae_quality",
    "to_rank_genes_groups",
    "refine", "shortcut_probe", "stats", "train", "yardstick", "umap", "validate_graph", "validation_summary",
]
