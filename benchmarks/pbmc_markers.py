"""Real data against the literature: do the top hypotheses for each PBMC class name its markers?

For each ``bulk_labels`` class of scanpy's ``pbmc68k_reduced`` with at least 30 cells, runs the
whole pipeline one-vs-rest (preset ``pbmc68k``: log-normalised input, every cell its own unit,
``--case CLASS``) and asks whether a top-5 hypothesis in the ``up`` direction has one of the
class's literature markers (``data/pbmc_markers.yaml``) among its top-10 genes.

    python benchmarks/pbmc_markers.py [--out benchmarks/results/pbmc_markers.md] [--runs DIR]

Run directories are kept under ``--runs`` (default ``runs/pbmc_markers``), so a rerun reuses
finished stages. The file ends with ``classes recovered: N of M``.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from discovery.bundled import read_yaml
from discovery.datasets import pbmc68k_reduced
from pipelines.config import load_config
from pipelines.run import run_pipeline
from pipelines.rundir import write_text

MIN_CELLS = 30
TOP_HYPOTHESES = 5
TOP_GENES = 10


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
    rows, recovered, considered = [], 0, 0
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
        hit = None
        for h in hyps[:TOP_HYPOTHESES]:
            genes = [g["symbol"] for g in h["genes"][:TOP_GENES]]
            found = [g for g in genes if g in markers]
            if h["direction"] == "up" and found:
                hit = (h, genes, found)
                break
        recovered += hit is not None
        first = hit[0] if hit else (hyps[0] if hyps else None)
        genes = hit[1] if hit else ([g["symbol"] for g in first["genes"][:TOP_GENES]]
                                    if first else [])
        rows.append({
            "class": label, "cells": n,
            "test AUROC": f"{res.metrics['test']['cell_auroc']:.3f}",
            "hypotheses": len(hyps),
            "hit": f"{hit[0]['id']} (rank {hit[0]['rank']})" if hit else "none",
            "markers found": ", ".join(hit[2]) if hit else "–",
            "top-10 genes": ", ".join(genes),
            "markers in panel": f"{sum(m in panel for m in markers)} of {len(markers)}",
            "seconds": f"{seconds:.0f}",
        })
        print(f"{label}: {'recovered' if hit else 'not recovered'} ({rows[-1]['markers found']})")

    cols = list(rows[0])
    lines = [
        "# PBMC classes against literature markers (pbmc68k_reduced, real data)",
        "",
        "Command: `python benchmarks/pbmc_markers.py`",
        "",
        f"Data: scanpy's `pbmc68k_reduced` (700 cells x 765 genes, one donor; "
        f"{table['source_of_labels']}). Markers: `data/pbmc_markers.yaml` ({table['reference']}). "
        f"Each class with >= {MIN_CELLS} cells is run one-vs-rest through the whole pipeline "
        "(`discovery run --preset pbmc68k --case CLASS`: log-normalised input, every cell its "
        "own unit, so statistics are cell-level and no hypothesis can be `supported`). A class "
        f"is recovered when one of its top-{TOP_HYPOTHESES} hypotheses (direction up) has a "
        f"literature marker among its top-{TOP_GENES} genes. `test AUROC`: the model on held-out "
        "cells.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
        *("| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows),
        "",
        f"classes recovered: {recovered} of {considered}",
    ]
    write_text(args.out, "\n".join(lines) + "\n")
    print(f"classes recovered: {recovered} of {considered} -> {args.out}")


if __name__ == "__main__":
    main()
