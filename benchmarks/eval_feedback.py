"""Expert feedback on the `confounded` scenario: mark the batch features, refine, compare.

Run: ``python benchmarks/eval_feedback.py [--seeds 0,1,2] [--second-round] [--clean]
[--keep DIR [--reuse]] [--out benchmarks/results/feedback.md]``

For each seed: the pipeline on the simulated `confounded` cohort (default preset); the script
plays the expert: every feature whose hypothesis is flagged as batch-confounded, or whose
annotation says batch explains it better than the label, is marked ``disagree /
technical_artifact`` (the check fitted from those marks and the proposed similar features would
be confirmed by a scientist; here the marks already cover them). Then ``refine --mode ablate``
``refine --mode finetune`` (directions projected out while fine-tuning) and ``refine --mode
retrain`` (retrained without the input genes that carry the batch, on counts thinned to one
sequencing depth across batches, with the gene panel chosen again on the corrected data); the
table gives, before -> after: the share of attribution into the case logit through
batch-explained features, donor AUROC on a batch-balanced subset of the test donors,
within-batch cell AUROC, and the planted programs captured by a hypothesis (right cell type and
direction, >= 3 program genes in its top 10): counted among unflagged hypotheses ("programs
ranked"), and with their best rank at any status ("any status").

With ``--second-round`` the expert looks at the retrained child and marks what it leans on next:
the features annotated as explained by the mitochondrial fraction, or behind hypotheses flagged
for it or for mitochondrial genes; ``refine --mode retrain --covariate pct_counts_mt`` then
renormalises without mitochondrial reads and withholds the MT genes (the batch genes stay out).
That row is compared with the original parent; its batch share is the grandchild's.

With ``--clean`` each seed's cohort is also run with its artifacts switched off at the source
(scenario ``confounded_clean``: the same donors, batches and programs, no batch effect, no
batch library shift, no mitochondrial shift in cases) — what a perfect de-confounding could at
best recover.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import pandas as pd  # noqa: E402

from discovery.io.feedback import FeedbackItem, FeedbackStore, default_url  # noqa: E402
from discovery.io.files import write_text  # noqa: E402
from pipelines.child_run import _program_ranks, covariate_share, refine_run  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.run import run_pipeline  # noqa: E402

#: what the expert recognises in each round: (covariate, artifact gene set named by flags, note)
ROUNDS = {
    "batch": ("batch", None, "batch explains this feature better than the label"),
    "mito": ("pct_counts_mt", "Mitochondrial genes",
             "mitochondrial read fraction, a QC artifact: cases have more mitochondrial reads"),
}


def mark_features(run: Path, round_: str = "batch") -> list[str]:
    """Mark every feature annotated as explained by the round's covariate, or behind a
    hypothesis flagged for it (confounded by it, or an artifact of its gene set)."""
    covariate, gene_set, note = ROUNDS[round_]
    manifest = json.loads((run / "manifest.json").read_text())
    hyps = json.loads((run / "hypotheses.json").read_text())["hypotheses"]
    ann = pd.read_json(run / "features" / "annotations.json")
    marked = set(ann.loc[ann["confounded_by"] == covariate, "feature"])
    for h in hyps:
        named = [f for f in h["flags"] if f["by"] == covariate
                 or (gene_set and f["by"] == gene_set)]
        if round_ == "batch" and h["status"] != "flagged":
            named = []
        if named:
            marked |= set(h["features"])
    store = FeedbackStore(default_url(run))
    if len(store.items(manifest["run_id"])):  # a kept run already carries the marks
        return sorted(marked)
    for f in sorted(marked):
        store.add(FeedbackItem(manifest["run_id"], "feature", f, "disagree",
                               "technical_artifact", "benchmark expert", note=note,
                               client="benchmark"))
    return sorted(marked)


def captured(run: Path, *, any_status: bool = True) -> dict[str, int]:
    """Best rank of each planted program's hypothesis in ``run`` (right cell type and direction,
    >= 3 program genes in its top 10), counting flagged hypotheses too (``any_status``)."""
    import anndata as ad

    from discovery.io.simulate import truth

    t = truth(ad.read_h5ad(run / "adata.h5ad", backed="r"))
    hyps = json.loads((run / "hypotheses.json").read_text())["hypotheses"]
    ranks = _program_ranks(hyps, t, include_flagged=any_status)
    return {name: r for name, r in ranks.items() if r is not None}


def _fmt_ranks(ranks: dict[str, int]) -> str:
    return "; ".join(f"{k} #{v}" for k, v in sorted(ranks.items(), key=lambda kv: kv[1])) or "–"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/feedback.md"))
    ap.add_argument("--modes", default="ablate,finetune,retrain")
    ap.add_argument("--keep", type=Path, default=None, help="keep the run directories here")
    ap.add_argument("--reuse", action="store_true",
                    help="with --keep: reuse finished runs found there as they are")
    ap.add_argument("--second-round", action="store_true",
                    help="after retrain, mark the child's mitochondrial-fraction features and "
                         "retrain again (--covariate pct_counts_mt)")
    ap.add_argument("--clean", action="store_true",
                    help="also run each seed's cohort with its artifacts switched off at the "
                         "source (scenario confounded_clean): the upper bound of de-confounding")
    args = ap.parse_args(argv)
    rows = []
    root = args.keep or Path(tempfile.mkdtemp())
    for seed in [int(s) for s in args.seeds.split(",")]:
        parent = root / f"confounded_seed{seed}"
        if not (args.reuse and (parent / "hypotheses.json").is_file()):
            run_pipeline(parent, config=load_config(overrides={
                "seed": seed, "cohort": {"scenario": "confounded", "seed": seed}}), quiet=True)
        marked = mark_features(parent, "batch")
        parent_captured = _fmt_ranks(captured(parent))
        steps = [(mode, parent, root / f"confounded_seed{seed}_{mode}", None, marked)
                 for mode in args.modes.split(",")]
        if args.second_round:
            steps.append(("retrain, then retrain (mito)", root / f"confounded_seed{seed}_retrain",
                          root / f"confounded_seed{seed}_retrain_mito", "pct_counts_mt", None))
        for mode, src, child, covariate, marked in steps:
            refine_json = child / "refine.json"
            if marked is None:
                marked = mark_features(src, "mito")
            if args.reuse and refine_json.is_file():
                res = json.loads(refine_json.read_text())
            else:
                res = refine_run(src, child, mode="retrain" if covariate else mode,
                                 covariate=covariate, quiet=True)
            b, a = res["before"], res["after"]
            if covariate:  # the second round is compared with the original parent
                first = json.loads((src / "refine.json").read_text())
                b = first["before"]
                a = {**a, "covariate_attribution_share": covariate_share(child, "batch")}
                res = {**res, "covariate_share_drop": 1 - a["covariate_attribution_share"]
                       / b["covariate_attribution_share"]}
            progs = sorted(set(b["program_ranks"]) | set(a["program_ranks"]))
            moved = [p for p in progs if (a["program_ranks"].get(p) or 999)
                     < (b["program_ranks"].get(p) or 999)]
            rows.append({
                "seed": seed, "mode": mode, "marked": len(marked),
                "batch share before": b["covariate_attribution_share"],
                "batch share after": a["covariate_attribution_share"],
                "drop": res["covariate_share_drop"],
                "balanced donor AUROC before": b.get("balanced_donor_auroc"),
                "after": a.get("balanced_donor_auroc"),
                "within-batch cell AUROC before": b.get("within_batch_cell_auroc"),
                "after ": a.get("within_batch_cell_auroc"),
                "test donor AUROC before": b["test_donor_auroc"],
                "after  ": a["test_donor_auroc"],
                "programs ranked before": sum(v is not None for v in b["program_ranks"].values()),
                "programs ranked after": sum(v is not None for v in a["program_ranks"].values()),
                "programs moved up": ", ".join(moved) or "–",
                "any status: before": parent_captured,
                "any status: after": _fmt_ranks(captured(child)),
            })
            print(rows[-1], flush=True)
        if args.clean:
            clean = root / f"confounded_clean_seed{seed}"
            if not (args.reuse and (clean / "hypotheses.json").is_file()):
                run_pipeline(clean, config=load_config(overrides={
                    "seed": seed, "cohort": {"scenario": "confounded_clean", "seed": seed}}),
                    quiet=True)
            m = json.loads((clean / "model" / "metrics.json").read_text())
            rows.append({"seed": seed, "mode": "clean cohort (no artifacts; not a refinement)",
                         "test donor AUROC before": m["test"]["donor_auroc"],
                         "programs ranked after": len(captured(clean, any_status=False)),
                         "any status: after": _fmt_ranks(captured(clean))})
            print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    for col in ("marked", "programs ranked before", "programs ranked after"):
        df[col] = df[col].astype("Int64")  # counts stay integers next to the clean rows' gaps

    def fmt(v: object) -> str:
        if v is None or v is pd.NA or (isinstance(v, float) and v != v):
            return "–"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["# Expert feedback on the confounded scenario: ablate vs ablate + fine-tune vs retrain", "",
             f"Command: `python benchmarks/eval_feedback.py --seeds {args.seeds}"
             f"{' --second-round' if args.second_round else ''}"
             f"{' --clean' if args.clean else ''}`", "",
             __doc__.split("\n\n", 2)[2].strip(), "",
             "| " + " | ".join(df.columns) + " |", "|" + "|".join("---" for _ in df.columns) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in df.itertuples(index=False)]
    write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
