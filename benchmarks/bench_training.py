"""Training benchmark: wall time, throughput and held-out-donor metrics of the classifiers.

Run: ``python benchmarks/bench_training.py [--repeats N] [--models mlp,transformer,...]
[--out benchmarks/results/training.md]``

On the bundled ``alzheimers`` cohort (seed 0, default preset) it trains each classifier with its
default settings and, as the named baseline measured in the same process, an L2 logistic
regression (scikit-learn, lbfgs) on the same gene panel and the same training donors. Reports the
median over repeats of wall time and training cells/s, with ratios against the baseline.
``KIND:BALANCE`` in ``--models`` (e.g. ``mlp:class_batch``) trains with the other loss weighting
(``TrainConfig.balance``), once: training is seeded, so the AUROCs of repeats are identical and
only the timings differ.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from discovery.io.contract import case_mask  # noqa: E402
from discovery.io.files import write_text  # noqa: E402
from discovery.io.simulate import simulate  # noqa: E402
from discovery.pp.preprocess import preprocess  # noqa: E402
from discovery.tl import classifier  # noqa: E402
from models.training import TrainConfig  # noqa: E402


def _baseline(adata) -> dict:
    x = classifier.encode(adata).numpy()
    y = case_mask(adata)
    split = adata.obs["split"].to_numpy()
    tr, te = split == "train", split == "test"
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-2
    t0 = time.perf_counter()
    clf = LogisticRegression(C=0.001, max_iter=1000).fit((x[tr] - mu) / sd, y[tr])
    seconds = time.perf_counter() - t0
    p = clf.predict_proba((x - mu) / sd)[:, 1]
    metrics = classifier.evaluate(adata, p, split="test")
    return {"seconds": seconds, "cells_per_second": tr.sum() / seconds,
            "cell_auroc": metrics["cell_auroc"], "donor_auroc": metrics["donor_auroc"],
            "epochs": 1, "check": roc_auc_score(y[te], p[te])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default="mlp,transformer,mlp:class_batch,transformer:class")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/training.md"))
    args = ap.parse_args(argv)

    adata = simulate("alzheimers", seed=0)
    preprocess(adata)
    n_train = int((adata.obs["split"] == "train").sum())
    rows: dict[str, list[dict]] = {"logreg_l2 (baseline)": []}
    for _ in range(args.repeats):
        rows["logreg_l2 (baseline)"].append(_baseline(adata))
    for name in args.models.split(","):
        kind, _, balance = name.partition(":")
        tc = TrainConfig(**{**classifier.DEFAULT_TRAIN[kind], **({"balance": balance}
                                                                  if balance else {})})
        name = f"{kind} ({tc.balance}{'' if balance else ', default'})"
        rows[name] = []
        for _ in range(1 if balance else args.repeats):
            t0 = time.perf_counter()
            res = classifier.train(adata, kind=kind, train_config=tc)
            wall = time.perf_counter() - t0
            probe = classifier.shortcut_probe(adata, res.model)["batch"]  # not timed
            rows[name].append({"seconds": wall,
                               "probe": "/".join(f"{probe[g]['balanced_accuracy']:.2f}"
                                                 for g in ("case", "control") if probe.get(g)),
                               "cells_per_second": res.metrics["training"]["cells_per_second"],
                               "cell_auroc": res.metrics["test"]["cell_auroc"],
                               "donor_auroc": res.metrics["test"]["donor_auroc"],
                               "epochs": res.metrics["training"]["epochs_run"]})
    base = statistics.median(r["seconds"] for r in rows["logreg_l2 (baseline)"])
    base_cps = statistics.median(r["cells_per_second"] for r in rows["logreg_l2 (baseline)"])
    lines = [
        f"# Classifier training on {len(os.sched_getaffinity(0))} CPU cores",
        "",
        f"Command: `python benchmarks/bench_training.py --repeats {args.repeats} --models "
        f"{args.models}`; cohort: "
        f"bundled `alzheimers` (seed 0), {adata.n_obs} cells, {n_train} training cells, "
        f"{int(adata.var['highly_variable'].sum())} genes; medians over {args.repeats} runs in "
        f"one process; torch threads: {__import__('torch').get_num_threads()}.",
        "",
        "| model | wall s (median) | x baseline time | train cells/s | x baseline cells/s | "
        "epochs | test cell AUROC | test donor AUROC | batch probe, AD / control |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rs in rows.items():
        sec = statistics.median(r["seconds"] for r in rs)
        cps = statistics.median(r["cells_per_second"] for r in rs)
        lines.append(
            f"| {name} | {sec:.1f} | {sec / base:.1f} | {cps:,.0f} | {cps / base_cps:.2f} | "
            f"{statistics.median(r['epochs'] for r in rs):.0f} | "
            f"{statistics.median(r['cell_auroc'] for r in rs):.3f} | "
            f"{statistics.median(r['donor_auroc'] for r in rs):.3f} | "
            f"{rs[0].get('probe', '–')} |")
    lines += ["", "cells/s counts every training cell seen per second of the fit (all epochs); "
              "the baseline's counts one pass of lbfgs over the training cells. Balance: "
              "`class` weights each class equally; `class_batch` weights each (class, batch) "
              "cell of the training donors equally, so the batch (aligned with diagnosis in "
              "this cohort) carries no label information in the weighted loss. Rows with a "
              "non-default balance ran once (seeded training: their AUROCs do not vary). Batch "
              "probe: balanced accuracy (chance 0.50) of a linear probe from the pooled "
              "representation to the batch, fitted within AD and within control cells, "
              "donor-grouped folds (`classifier.shortcut_probe`, first run).", ""]
    text = "\n".join(lines)
    print(text)
    write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
