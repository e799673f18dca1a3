"""Real data against the literature: do the top hypotheses for each PBMC class name its markers?

For each ``bulk_labels`` class of scanpy's ``pbmc68k_reduced`` with at least 30 cells, runs the
whole pipeline one-vs-rest (preset ``pbmc68k``: log-normalised input, every cell its own unit,
``--case CLASS``) and asks whether a top-5 hypothesis in the ``up`` direction has one of the
class's literature markers (``data/pbmc_markers.yaml``) among its top-10 genes: first its own
(class-specific) markers, else the markers of the lineage it belongs to (a Treg is a T cell); the
table says which level matched and the file gives both counts.

    python benchmarks/pbmc_markers.py [--out benchmarks/results/pbmc_markers.md] [--runs DIR]

Run directories are kept under ``--runs`` (default ``runs/pbmc_markers``), so a rerun reuses
finished stages. The file ends with ``classes recovered: N of M``.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from discovery.io.bundled import read_yaml
from discovery.io.datasets import pbmc68k_reduced
from discovery.io.files import write_text
from pipelines.config import load_config
from pipelines.run import run_pipeline

MIN_CELLS = 30
TOP_HYPOTHESES = 5
TOP_GENES = 10


def _first_hit(hyps: list[dict], markers: set[str], level: str) -> tuple | None:
    """(hypothesis, its top genes, markers among them, level) of the first top-ranked up
    hypothesis naming one of ``markers``."""
    for h in hyps[:TOP_HYPOTHESES]:
        genes = [g["symbol"] for g in h["genes"][:TOP_GENES]]
        found = [g for g in genes if g in markers]
        if h["direction"] == "up" and found:
            return h, genes, found, level
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/pbmc_markers.md"))
    ap.add_argument("--runs", type=Path, default=Path("runs/pbmc_markers"))
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()

    table = read_yaml("pbmc_markers.yaml")
    adata = pbmc68k_reduced()
    sizes = adata.obs[table["label_key"]].value_counts()
    panel = set(adata.var_names)
    rows, recovered, specific, considered = [], 0, 0, 0
    for entry in table["classes"]:
        label, markers = entry["label"], entry["markers"]
        n = int(sizes.get(label, 0))
        if n < MIN_CELLS:
            continue
        considered += 1
        slug = re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")
        config = load_config(preset="pbmc68k", overrides={"keys": {"case": label}})
        t0 = time.perf_counter()
        res = run_pipeline(args.runs / slug, config=config, quiet=args.quiet)
        seconds = time.perf_counter() - t0
        hyps = sorted(res.hypotheses["hypotheses"], key=lambda h: h["rank"])
        lineage = {g for name in entry.get("lineages", []) for g in table["lineages"][name]}
        hit = _first_hit(hyps, set(markers), "class") or _first_hit(hyps, lineage, "lineage")
        recovered += hit is not None
        specific += hit is not None and hit[3] == "class"
        first = hit[0] if hit else (hyps[0] if hyps else None)
        genes = hit[1] if hit else ([g["symbol"] for g in first["genes"][:TOP_GENES]]
                                    if first else [])
        rows.append({
            "class": label, "cells": n,
            "test AUROC": f"{res.metrics['test']['cell_auroc']:.3f}",
            "hypotheses": len(hyps),
            "hit": f"{hit[0]['id']} (rank {hit[0]['rank']})" if hit else "none",
            "level": hit[3] if hit else "–",
            "markers found": ", ".join(hit[2]) if hit else "–",
            "top-10 genes": ", ".join(genes),
            "class markers in panel": f"{sum(m in panel for m in markers)} of {len(markers)}",
            "lineage": ", ".join(entry.get("lineages", [])) or "–",
            "seconds": f"{seconds:.0f}",
        })
        print(f"{label}: {f'recovered ({hit[3]})' if hit else 'not recovered'} "
              f"({rows[-1]['markers found']})")

    cols = list(rows[0])
    lines = [
        "# PBMC classes against literature markers (pbmc68k_reduced, real data)",
        "",
        "Command: `python benchmarks/pbmc_markers.py`",
        "",
        f"Data: scanpy's `pbmc68k_reduced` (700 cells x 765 genes, one donor; "
        f"{table['source_of_labels']}). Markers: `data/pbmc_markers.yaml` (class-specific: "
        f"{table['reference']}; lineage: {table['lineage_reference']}). "
        f"Each class with >= {MIN_CELLS} cells is run one-vs-rest through the whole pipeline "
        "(`discovery run --preset pbmc68k --case CLASS`: log-normalised input, every cell its "
        "own unit, so statistics are cell-level and no hypothesis can be `supported`). A class "
        f"is recovered when one of its top-{TOP_HYPOTHESES} hypotheses (direction up) has a "
        f"literature marker among its top-{TOP_GENES} genes: one of the class's own markers "
        "(`level` class), else one of its lineage's (`level` lineage: the class is named by the "
        "population it belongs to, not by what sets it apart). `test AUROC`: the model on "
        "held-out cells.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
        *("| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows),
        "",
        f"classes recovered by a class-specific marker: {specific} of {considered}",
        f"classes recovered: {recovered} of {considered}",
    ]
    write_text(args.out, "\n".join(lines) + "\n")
    print(f"classes recovered: {recovered} of {considered} -> {args.out}")


if __name__ == "__main__":
    main()
