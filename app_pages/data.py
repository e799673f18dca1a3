"""Run-directory access for the app: which run is open, cached loaders, shared widgets.

Pages call these functions only; they hold no science. JSON and tables are cached with
``st.cache_data`` keyed on the file's modification time (a rerun of a stage shows up at once);
the AnnData is a ``st.cache_resource``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import pandas as pd
import streamlit as st

from discovery.io import layout
from discovery.io.contract import InputError
from discovery.io.feedback import FeedbackStore, default_url
from discovery.io.files import read_json
from discovery.io.graph_files import load_graph
from pipelines.jobs import JOB_FILE, run_state

__all__ = ["RUN_ENV", "ROOT_ENV", "UPLOAD_FIELDS", "badge", "current_run", "graph", "json_file", "list_runs",
           "load_adata", "max_upload_mb", "store", "umap", "upload_error"]

RUN_ENV = "DISCOVERY_RUN"
ROOT_ENV = "DISCOVERY_RUNS_ROOT"

STATUS_COLOURS = {"supported": "green", "candidate": "gray", "flagged": "orange",
                  "rejected": "red"}


def max_upload_mb() -> float:
    """The app's upload limit in MB (:func:`pipelines.config.max_upload_mb`; imported when
    asked: the pipeline's configuration loads PyTorch, which the first page does not need)."""
    from pipelines.config import max_upload_mb as limit

    return limit()


def check_upload(name: str, size_bytes: int) -> None:
    """Refuse an upload over the app's size limit, or of the wrong type, naming the fix."""
    from pipelines.config import UPLOAD_ENV

    limit = max_upload_mb()
    if size_bytes > limit * 2**20:
        msg = (f"{name} is {size_bytes / 2**20:.1f} MB; this app accepts cohorts up to "
               f"{limit:g} MB (the server's {UPLOAD_ENV} setting). Ask whoever runs the app to "
               "raise the limit, or run the cohort with discovery's command line and open the "
               "finished run here.")
        raise InputError(msg)
    if not name.lower().endswith(".h5ad"):
        msg = (f"{name} is not an .h5ad file: the app takes an AnnData .h5ad with raw counts. "
               "Save the counts as .h5ad (anndata's write_h5ad) and upload that file.")
        raise InputError(msg)


#: the New run page's field for each command-line option an input error may name
UPLOAD_FIELDS = {"--label-key": "“Label column”", "--donor-key": "“Donor column”",
                 "--cell-type-key": "“Cell-type column”", "--batch-key": "“Batch column”",
                 "--case": "“Case value”", "--preset": "“Preset”"}


def upload_error(err: Exception, saved_as: Path | None, name: str) -> str:
    """An input error about an uploaded cohort, as the app says it: the uploaded file's own
    ``name`` instead of the server's temporary copy ``saved_as``, and the page's fields instead
    of command-line options (``--label-key`` -> the “Label column” field), and no alternative
    that only the command line offers."""
    text = str(err)
    if saved_as is not None:
        text = text.replace(str(saved_as), name).replace(saved_as.name, name)
    for flag, field in UPLOAD_FIELDS.items():
        pat = r"(?<![\w-])" + re.escape(flag) + r"(?![\w-])"
        # "e.g. --case Alzheimer disease." -> "e.g. Alzheimer disease."
        text = re.sub(r",? e\.g\. " + pat + " <column>", f" in the {field} field", text)
        text = re.sub(r"e\.g\. " + pat + r" ([^;]+?)([.;]?)$", r"e.g. \1\2", text)
        text = re.sub(r"\b(?:pass|use) " + pat + r"(?: [^\s,.;]+)?", f"fill in the {field} field",
                      text)
        text = re.sub(r"\bwith " + pat, f"in the {field} field", text)
        text = re.sub(r"\banother " + pat, f"another value in the {field} field", text)
        text = re.sub(pat + r" ('[^']*')", rf"the {field} field (\1)", text)
        text = re.sub(pat, f"the {field} field", text)
    # an alternative only the command line offers (a CSV with --metadata, ...) is not one here
    return re.sub(r",? or [^.;]*?(?<![\w-])--[a-z][\w-]*[^.;]*", "", text)


def runs_root() -> Path:
    """The folder new runs are written to (``DISCOVERY_RUNS_ROOT``, else the parent of
    ``DISCOVERY_RUN``, else ``runs``)."""
    start = os.environ.get(RUN_ENV)
    return Path(os.environ.get(ROOT_ENV) or (Path(start).parent if start else "runs"))


def list_runs(root: Path) -> list[Path]:
    """Run directories under ``root`` (with a manifest.json, or a background job that has not
    written one yet): complete runs first, newest first within each group."""
    if not root.is_dir():
        return []
    runs = {p.parent for p in root.glob("*/manifest.json")} | \
        {p.parent for p in root.glob(f"*/{JOB_FILE}")}
    stamped = []
    for p in runs:
        try:  # a cancelled job's folder may go while we list
            stamped.append((run_state(p) != "complete", -p.stat().st_mtime, p))
        except FileNotFoundError:
            continue
    return [p for *_, p in sorted(stamped)]


def run_label(run: Path) -> str:
    """The picker's name of a run: its folder, and its state when it is not complete."""
    state = run_state(run)
    return run.name if state == "complete" else f"{run.name} ({state})"


def current_run() -> Path | None:
    """The run picked in the sidebar (default: ``DISCOVERY_RUN``, else the newest under the
    root). Renders the picker; returns None when there is no run."""
    start = os.environ.get(RUN_ENV)
    root = runs_root()
    runs = list_runs(root)
    if start and Path(start) not in runs and (Path(start) / layout.MANIFEST).is_file():
        runs.insert(0, Path(start))
    if not runs:
        st.error(f"No run directory found under `{root}`. Create one with "
                 "`discovery run --out runs/demo`, or start the app with "
                 "`discovery app RUN_DIR`.")
        return None
    kept = st.session_state.get("_run_choice")  # the choice survives a change of page
    default = (runs.index(kept) if kept in runs else
               runs.index(Path(start)) if start and Path(start) in runs else 0)
    choice = st.sidebar.selectbox("Run", runs, index=default, format_func=run_label)
    st.session_state["_run_choice"] = choice
    return Path(choice)


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else 0.0


@st.cache_data(show_spinner=False)
def _json(path: str, mtime: float) -> Any:
    return read_json(path)


def json_file(run: Path, *parts: str) -> Any:
    """Parsed JSON file of the run, or None when it does not exist."""
    p = run.joinpath(*parts)
    return _json(str(p), _mtime(p)) if p.is_file() else None


@st.cache_data(show_spinner=False)
def _table(path: str, mtime: float) -> pd.DataFrame:
    return pd.read_json(path) if path.endswith(".json") else pd.read_csv(path)


def table(run: Path, *parts: str) -> pd.DataFrame | None:
    p = run.joinpath(*parts)
    return _table(str(p), _mtime(p)) if p.is_file() else None


@st.cache_resource(show_spinner="Loading the annotated data ...")
def _adata(path: str, mtime: float):  # noqa: ANN202 - AnnData
    import anndata as ad

    return ad.read_h5ad(path)


def load_adata(run: Path):  # noqa: ANN201 - AnnData
    p = run / layout.ADATA
    return _adata(str(p), _mtime(p))


@st.cache_resource(show_spinner=False)
def _graph(path: str, mtime: float) -> nx.DiGraph:
    return load_graph(path)


def graph(run: Path, slug: str) -> nx.DiGraph | None:
    """A cohort graph by its index slug; None (with the reason shown) when the slug or its file
    is not a plain name inside the run (an edited index) or the file is missing."""
    try:
        p = layout.inside_run(run, layout.graph_file(layout.safe_name(slug, what="graph slug")))
    except InputError as err:
        st.error(str(err))
        return None
    return _graph(str(p), _mtime(p)) if p.is_file() else None


def umap(run: Path) -> np.ndarray | None:
    """The cells' UMAP (``obsm['X_umap']``, computed by the pipeline's features stage)."""
    a = load_adata(run)
    return np.asarray(a.obsm["X_umap"]) if "X_umap" in a.obsm else None


@st.cache_resource(show_spinner=False)
def _store(url: str) -> FeedbackStore:
    return FeedbackStore(url)


def store(run: Path) -> FeedbackStore:
    """The feedback store of the run (``DISCOVERY_FEEDBACK_URL`` or RUN_DIR/feedback.sqlite)."""
    return _store(default_url(run))


def badge(status: str) -> str:
    """Markdown badge for a hypothesis status."""
    return f":{STATUS_COLOURS.get(status, 'gray')}-badge[{status}]"
