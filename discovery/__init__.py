"""discovery: interpretable models of single-cell cohorts, with plans that show their reasoning.

The package follows the data flow; its face is the same in a notebook, the CLI and the app::

    import discovery as dc

    adata = dc.io.read("cohort.h5ad")            # or dc.io.simulate("alzheimers")
    dc.io.validate(adata, dc.io.Keys(label_key="diagnosis", case="AD"))
    dc.pp.preprocess(adata)                      # QC, normalise, genes, donor-held-out split
    model = dc.tl.train(adata, kind="mlp").model # classifier -> obs['case_prob']
    saes = dc.tl.fit_saes(adata, model)          # sparse autoencoders -> obsm['X_sae_pooled']
    ...                                          # dc.tl: annotate, graphs, hypotheses, plans
    dc.pl.donor_activation(hypotheses)           # the figures of the report and the app
    run = dc.get.open_run("runs/demo")           # a finished run directory read back

``dc.io`` reading, writing and the input contract; ``dc.pp`` preprocessing; ``dc.tl`` the
models-facing tools (features, attribution graphs, interventions, hypotheses, plans, refine,
statistics); ``dc.pl`` figures; ``dc.get`` run-directory access. ``docs/architecture.md`` is
the map. The subpackages load on first use, so ``import discovery`` stays cheap.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any

from models.errors import InputError

try:
    __version__ = metadata.version("discovery")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["InputError", "__version__", "get", "io", "pl", "pp", "tl"]

_SUBPACKAGES = ("io", "pp", "tl", "pl", "get")


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"discovery.{name}")
    msg = f"module 'discovery' has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBPACKAGES])
