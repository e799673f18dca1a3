"""``dc.io``: data in and out — the input contract, bundled and simulated cohorts, sketches of
large files, graph files, atomic writes, the feedback store and the run directory's names."""

from discovery.io import layout
from discovery.io.bundled import GeneSet, gene_set, gene_sets, read_gmt
from discovery.io.contract import (
    InputError,
    Keys,
    case_mask,
    cell_units,
    counts_matrix,
    get_keys,
    read,
    validate,
)
from discovery.io.datasets import DATASETS, load_dataset
from discovery.io.feedback import FeedbackItem, FeedbackStore, default_url
from discovery.io.files import atomic_write, write_json, write_text
from discovery.io.graph_files import FORMATS, AttributionGraph, export_graph, load_graph
from discovery.io.simulate import SCENARIOS, simulate, truth, write_simulated
from discovery.io.sketch import read_sketched, sketch_anndata

__all__ = [
    "AttributionGraph", "DATASETS", "FORMATS", "SCENARIOS", "FeedbackItem", "FeedbackStore", "GeneSet", "InputError",
    "Keys", "atomic_write", "case_mask", "cell_units", "counts_matrix", "default_url",
    "export_graph", "gene_set", "gene_sets", "read_gmt", "get_keys", "layout", "load_dataset", "load_graph",
    "read", "read_sketched", "simulate", "sketch_anndata", "truth", "validate", "write_json",
    "write_simulated", "write_text",
]
