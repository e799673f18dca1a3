"""Attribution benchmark on a finished run: speed and exactness vs Captum IG, graph checks.

Run (after ``discovery run --out runs/demo``; Captum comes with ``pip install -e ".[bench]"``):

    python benchmarks/bench_attribution.py runs/demo [--out benchmarks/results/attribution.md]

1. **Gene-level attribution vs Captum Integrated Gradients (50 steps)**, same model, same cells
   (``--cells``, default 2,000 test-split cells), same reference (the model's training mean
   expression, where our gene contributions are zero). Time: median of ``--repeats`` runs of
   each, measured alternately in this process; the ratio is IG time / our time. Completeness
   error: ours |sum(contributions) + bias - logit| / |logit - logit(reference)|; IG's
   |sum(attributions) - (logit - logit(reference))| / |logit - logit(reference)| (its
   convergence delta), both as median and max over cells.
2. **Cohort graphs**: seconds for the AD microglia graph and for >= 2,000 cells (all AD cells of
   the test and validation donors), median of ``--repeats``.
3. **Validation on AD microglia**: predicted vs measured mean-ablation effects over the top 50
   features (Spearman) and faithfulness / completeness of pruned circuits — with the run's SAE
   at ``pooled`` alone (exact by construction: the head after ``pooled`` is linear) and with a
   second SAE fitted here at ``layer0.resid`` (features act through the nonlinear layer 1, so
   the check is real).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from discovery.get.run import open_run  # noqa: E402
from discovery.io.files import write_text  # noqa: E402
from discovery.tl import features  # noqa: E402
from discovery.tl.attribution import SAEHook, gene_attribution  # noqa: E402
from discovery.tl.classifier import encode  # noqa: E402
from discovery.tl.graphs import GraphSpec, cohort_graph, population_mask  # noqa: E402
from discovery.tl.interventions import validate_graph  # noqa: E402


def _median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def ig_vs_ours(model, x: torch.Tensor, repeats: int) -> dict:
    from captum.attr import IntegratedGradients

    model.eval()
    if not hasattr(model, "gene_mean"):
        msg = "the IG comparison needs the MLP (its input is the expression vector)"
        raise SystemExit(msg)
    base = model.gene_mean.expand_as(x).contiguous()
    ig = IntegratedGradients(lambda v: model(v).logits)

    def run_ig():
        return ig.attribute(x, baselines=base, n_steps=50, method="riemann_trapezoid",
                            internal_batch_size=50 * 64, return_convergence_delta=True)

    def run_ours():
        return gene_attribution(model, x, batch_size=512)

    t_ours, t_ig = [], []
    for _ in range(repeats):  # alternate so both see the same machine load
        t, ours = _median_time(run_ours, 1)
        t_ours.append(t)
        t, (attr, delta) = _median_time(run_ig, 1)
        t_ig.append(t)
    contrib, bias, logits = ours
    with torch.no_grad():
        ref = model(base[:1]).logits.item()
    span = np.abs(logits - ref)
    ok = span > 1e-3
    err_ours = np.abs(contrib.sum(1) + bias - logits)[ok] / span[ok]
    err_ig = np.abs(delta.detach().numpy())[ok] / span[ok]
    return {"n_cells": len(x), "t_ours": statistics.median(t_ours),
            "t_ig": statistics.median(t_ig), "err_ours_med": float(np.median(err_ours)),
            "err_ours_max": float(err_ours.max()), "err_ig_med": float(np.median(err_ig)),
            "err_ig_max": float(err_ig.max()),
            "rank_agreement": float(np.mean([
                np.corrcoef(np.argsort(np.argsort(-np.abs(c))),
                            np.argsort(np.argsort(-np.abs(a))))[0, 1]
                for c, a in zip(contrib[:200], attr.detach().numpy()[:200])]))}


def _curve_table(val: dict) -> list[str]:
    rows = ["| nodes | features | error node in | faithfulness | completeness (of the rest) |",
            "|---|---|---|---|---|"]
    for c in val["circuit_curve"]:
        rows.append(f"| {c['n_nodes']} | {c['n_features']} | {c['includes_error']} | "
                    f"{c['faithfulness']:.3f} | {c['completeness']:.3f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--cells", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/attribution.md"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    run = open_run(args.run_dir)
    a, model, saes = run.adata, run.model, run.saes
    test = np.flatnonzero((a.obs["split"] == "test").to_numpy())[: args.cells]
    x = encode(a[test], list(model.config.gene_names))
    ig = ig_vs_ours(model, x, args.repeats)

    mg = population_mask(a, cell_type="Microglia", label="case")
    held = population_mask(a, label="case") & a.obs["split"].isin(["val", "test"]).to_numpy()
    t_mg, g_mg = _median_time(lambda: cohort_graph(a, model, saes, mask=mg),
                              args.repeats)
    t_big, g_big = _median_time(lambda: cohort_graph(a, model, saes, mask=held),
                                args.repeats)
    val1 = validate_graph(a, model, saes, graph=g_mg, mask=mg, n_top=50)

    with tempfile.TemporaryDirectory() as tmp:
        store = features.collect_activations(a, model, tmp, hook="layer0.resid")
        rows = np.flatnonzero((a.obs["split"] == "train").to_numpy())
        spec = features.SAESpec(hook="layer0.resid", seeds=(0,))
        ((sae0, _),) = features.train_saes(store, spec, train_rows=rows)
    two = [SAEHook("layer0.resid", sae0.eval()), *saes]
    t_two, g_two = _median_time(lambda: cohort_graph(a, model, two, mask=mg,
                                                     spec=GraphSpec()), 1)
    val2 = validate_graph(a, model, two, graph=g_two, mask=mg, n_top=50)

    lines = [
        f"# Attribution on `{args.run_dir}` ({model.config.model_type}, "
        f"{len(os.sched_getaffinity(0))} CPU cores)", "",
        f"Command: `python benchmarks/bench_attribution.py {args.run_dir}`", "",
        f"## Gene-level attribution vs Captum Integrated Gradients (50 steps), {ig['n_cells']} "
        "cells", "",
        f"Median of {args.repeats} alternating runs in one process; reference = the model's "
        "training mean expression for both.", "",
        "| method | seconds | cells/s | ratio vs ours | completeness error median | max |",
        "|---|---|---|---|---|---|",
        f"| linearised attribution (ours, 1 backward pass) | {ig['t_ours']:.2f} | "
        f"{ig['n_cells'] / ig['t_ours']:.0f} | 1.0x | {ig['err_ours_med']:.1e} | "
        f"{ig['err_ours_max']:.1e} |",
        f"| Captum IG, 50 steps | {ig['t_ig']:.2f} | {ig['n_cells'] / ig['t_ig']:.0f} | "
        f"{ig['t_ig'] / ig['t_ours']:.1f}x slower | {ig['err_ig_med']:.1e} | "
        f"{ig['err_ig_max']:.1e} |", "",
        f"Mean Spearman correlation of per-cell |attribution| gene ranks, ours vs IG (200 "
        f"cells): {ig['rank_agreement']:.3f}.", "",
        "## Cohort graphs", "",
        "| population | cells | donors | seconds (median) | nodes | edges | replacement | "
        "completeness | max rel. completeness error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, t, g in (("AD microglia", t_mg, g_mg),
                       ("AD cells, val + test donors", t_big, g_big),
                       ("AD microglia, SAEs at layer0.resid + pooled", t_two, g_two)):
        lines.append(f"| {name} | {g.graph['n_cells']} | {g.graph['n_donors']} | {t:.1f} | "
                     f"{g.number_of_nodes()} | {g.number_of_edges()} | "
                     f"{g.graph['replacement_score']:.4f} | {g.graph['completeness_score']:.4f} "
                     f"| {g.graph['max_completeness_error']:.1e} |")
    for title, val in (("one SAE at `pooled` (the run's graphs)", val1),
                       ("SAEs at `layer0.resid` and `pooled`", val2)):
        ab = val["ablation"]
        lines += ["", f"## Validation on AD microglia, {title}", "",
                  f"Mean-ablation to the mean over control microglia; m = mean case logit "
                  f"(full model {val['m_full']:.3f}, everything ablated {val['m_empty']:.3f}).",
                  "",
                  "| check (top 50 features by predicted effect) | Spearman | Pearson | "
                  "sign agreement |", "|---|---|---|---|",
                  f"| graph paths vs ablation with error nodes held | "
                  f"{ab['graph']['spearman']:.3f} | {ab['graph']['pearson']:.3f} | "
                  f"{ab['graph']['sign_agreement']:.2f} |",
                  f"| linearised total effect vs ablation in the real model | "
                  f"{ab['model']['spearman']:.3f} | {ab['model']['pearson']:.3f} | "
                  f"{ab['model']['sign_agreement']:.2f} |", "",
                  f"Smallest circuit with faithfulness >= 0.8: "
                  f"{val['features_for_faithfulness_0.8']} feature nodes.", "",
                  *_curve_table(val)]
    write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
