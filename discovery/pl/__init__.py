"""``dc.pl``: every figure the report and the app show (matplotlib figures, headless)."""

from discovery.pl.figures import (
    donor_activation,
    faithfulness,
    graph_path,
    subgraph_around,
    umap_panels,
    volcano,
)

__all__ = ["donor_activation", "faithfulness", "graph_path", "subgraph_around", "umap_panels",
           "volcano"]
