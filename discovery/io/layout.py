"""The run directory and the ids inside it, defined once (DESIGN.md: "The run directory").

Every file name of a run directory, the feature-id format (``pooled:F12``) and the ``obsm`` key
of SAE activations live here; the pipeline writes with these names, ``discovery.get`` reads with
them, and the app and reports never spell a file name themselves. Paths are relative to the run
directory and use ``/`` (``run_dir / METRICS`` works with :class:`pathlib.Path`).
"""

from __future__ import annotations

import re
from pathlib import Path

from models.errors import InputError

__all__ = [
    "ACTIVATIONS", "ADATA", "GRAPH_SCHEMA_VERSION", "ANNOTATIONS", "FEATURES_DIR", "GRAPHS_DIR", "GRAPH_INDEX",
    "HYPOTHESES", "INPUT_SUMMARY", "MANIFEST", "METRICS", "MODEL_DIR", "PLANS", "RANKINGS",
    "REFINE", "REPORT_HTML", "REPORT_MD", "SAE_QUALITY", "TOP_GENES", "YARDSTICK",
    "cell_graph_file", "feature_id", "inside_run", "links_out", "safe_name", "feature_index", "graph_file", "parse_feature_id",
    "sae_dir", "sae_key", "validation_file",
]

#: version of the graph files (node-link JSON, GraphML, GEXF, Cytoscape.js): old files still load
GRAPH_SCHEMA_VERSION = 1

# ------------------------------------------------------------------------ run-directory files
MANIFEST = "manifest.json"
INPUT_SUMMARY = "input_summary.json"
ADATA = "adata.h5ad"
RANKINGS = "baselines/rankings.csv.gz"
TOP_GENES = "baselines/top_genes.json"
YARDSTICK = "baselines/yardstick.csv"
MODEL_DIR = "model"
METRICS = "model/metrics.json"
FEATURES_DIR = "features"
SAE_QUALITY = "features/quality.json"
ANNOTATIONS = "features/annotations.json"
#: activations streamed to disk while the SAEs train (removed after the features stage)
ACTIVATIONS = ".activations"
GRAPHS_DIR = "graphs"
GRAPH_INDEX = "graphs/index.json"
HYPOTHESES = "hypotheses.json"
#: technical-covariate-adjusted donor-level gene tests (discovery.tl.donor_tests)
DONOR_TESTS = "donor_tests.csv"
PLANS = "plans.json"
REPORT_HTML = "report.html"
REPORT_MD = "report.md"
#: a child run's before/after comparison (``discovery refine``)
REFINE = "refine.json"


def sae_dir(seed: int) -> str:
    """Folder of the SAE fitted with ``seed`` (``sae.safetensors`` + ``config.json``)."""
    return f"{FEATURES_DIR}/sae_seed{seed}"


def graph_file(slug: str, suffix: str = ".json") -> str:
    """A cohort graph of the run (``.json`` node-link, ``.graphml``)."""
    return f"{GRAPHS_DIR}/{slug}{suffix}"


def validation_file(slug: str) -> str:
    """The ablation checks of a cohort graph."""
    return f"{GRAPHS_DIR}/{slug}.validation.json"


def cell_graph_file(slug: str) -> str:
    """An example cell graph."""
    return f"{GRAPHS_DIR}/cells/{slug}.json"


# --------------------------------------------------------------------------------------- ids
def feature_id(hook: str, index: int) -> str:
    """``feature_id("pooled", 12) == "pooled:F12"``: feature ``index`` of the SAE at ``hook``."""
    return f"{hook}:F{index}"


def parse_feature_id(fid: str) -> tuple[str, int]:
    """``("pooled", 12)`` from ``"pooled:F12"``; a clear error for anything else."""
    hook, sep, num = str(fid).rpartition(":F")
    if not sep or not hook or not num.isdigit():
        msg = f"{fid!r} is not a feature id; feature ids look like 'pooled:F12' (hook:F<index>)"
        raise InputError(msg)
    return hook, int(num)


def feature_index(fid: str) -> int:
    """The SAE column of a feature id (``12`` for ``"pooled:F12"``)."""
    return parse_feature_id(fid)[1]


def sae_key(hook: str) -> str:
    """``obsm`` key of the SAE activations at ``hook`` (``X_sae_pooled``, ``X_sae_layer0_resid``)."""
    return f"X_sae_{hook.replace('.', '_')}"


#: a file-name stem the run writes (graph slugs, export names): one path component
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")


def safe_name(name: str, *, what: str = "name") -> str:
    """``name`` if it is one plain path component (letters, digits, ``-``, ``_``, ``.`` and no
    ``..``); a clear error otherwise — names read from a run's own index files decide where
    files are written, and an edited index must not send a write elsewhere."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or ".." in name:
        msg = (f"{what} {name!r} is not a plain file name (letters, digits, '-', '_', '.'); "
               "the run's index files may have been edited — rerun the stage that wrote them")
        raise InputError(msg)
    return name


def inside_run(run_dir: str | Path, rel: str | Path) -> Path:
    """``run_dir / rel`` resolved (symlinks followed), refused when it lies outside the run
    directory: the one check every reader and writer of run files whose path comes from data
    (index files, defaults such as ``exports/``) goes through."""
    root = Path(run_dir).resolve()
    path = (root / rel).resolve()
    if path != root and root not in path.parents:
        msg = (f"{rel} resolves to {path}, outside the run directory {root} (an edited index "
               "file or a symlink); refusing to read or write there")
        raise InputError(msg)
    return path


def links_out(run_dir: str | Path) -> list[tuple[str, Path]]:
    """Symbolic links under ``run_dir`` (not followed) whose targets lie outside it, as
    ``(relative path, resolved target)``: a run writes only inside its own directory, and a
    link there (``model/`` -> elsewhere) would make a rerun overwrite or delete files outside."""
    import os

    root = Path(run_dir).resolve()
    found = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        for name in [*dirs, *names]:
            p = Path(folder) / name
            if p.is_symlink():
                target = p.resolve()
                if target != root and root not in target.parents:
                    found.append((str(p.relative_to(root)), target))
    return sorted(found)
