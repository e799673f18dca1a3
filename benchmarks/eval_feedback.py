"""Expert feedback on the `confounded` scenario: mark the batch features, refine, compare.

Run: ``python benchmarks/eval_feedback.py [--seeds 0,1,2] [--second-round] [--clean]
[--keep DIR [--reuse]] [--out benchmarks/results/feedback.md]``

For each seed: the pipeline on the simulated `confounded` cohort (default preset); the script
plays the expert: every feature whose hypothesis is flagged as batch-confounded, or whose
annotation says batch explains it better than the label, is marked ``disagree /
technical_artifact`` (the check fitted from those marks and the proposed similar features would
be confirmed by a scientist; here the marks already cover them). Then ``refine --mode ablate``
``refine --mode finetune`` (directions projected out while fine-tuning) and ``refine --mode
retrain`` (retrained without the input genes that carry the batch — left out of the library
size as well, tested again on the corrected data and the new panel — on counts thinned to one
sequencing depth across batches, with the gene panel chosen again on the corrected data, and,
in the same retraining, every other technical covariate that differs between cases and
controls at donor level corrected: a gene-group QC fraction renormalised away and its genes
withheld, depth matched across labels if it still differs); the
table gives, before -> after: the share of attribution into the case logit through
batch-explained features, donor AUROC on a batch-balanced subset of the test donors,
within-batch cell AUROC, and the planted programs captured by a hypothesis (right cell type and
direction, >= 3 program genes in its top 10): counted among unflagged hypotheses in the top 10
("captured@10"), and with their best rank at any status ("any status"); "child leans on": the
technical covariates whose attribution share at least doubled and rose by >= 0.1 in the child
(the warning `refine` gives).

With ``--second-round`` the expert looks at the retrained child and marks what it leans on next:
the features annotated as explained by the mitochondrial fraction, or behind hypotheses flagged
for it or for mitochondrial genes; ``refine --mode retrain --covariate pct_counts_mt`` then
renormalises without mitochondrial reads and withholds the MT genes (the batch genes stay out).
That row is compared with the original parent; its batch share is the grandchild's.

With ``--clean`` each seed's cohort is also run with its artifacts switched off at the source
(scenario ``confounded_clean``: the same donors, batches and programs, no batch effect, no
batch library shift, no mitochondrial shift in cases) — what a perfect de-confounding could at
best recover. "captured@10" counts the planted programs with an unflagged hypothesis in the top
10 (right cell type and direction, >= 3 program genes in its top 10 genes).

With ``--random N`` the same loop runs on randomised cohorts (:mod:`discovery.io.scenarios`,
drawn with ``--random-seed``, never the generalisation suite's seed) whose strongest artifact
that a refinement can act on (a batch program or ambient RNA: the batch column; a QC shift:
``pct_counts_mt``) is aligned >= 50% with diagnosis and which hold at least one program, until
N are found: parent (quick preset), child after one round (the expert marks the features
annotated as explained by that covariate and the hypotheses flagged for it, then ``refine
--mode retrain``) and the clean twin (``simulate_scenario(..., clean=True)``: the same cohort
with its artifacts off). A scenario where nothing is marked keeps the parent's result as its
child's (the loop could not start). Means over scenarios with 95% bootstrap intervals
(resampling scenarios); the share of the parent-to-clean gap the child closes is the ratio of
the mean differences, with its interval from the same resamples.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from discovery.io.feedback import FeedbackItem, FeedbackStore, default_url  # noqa: E402
from discovery.io.files import write_text  # noqa: E402
from pipelines.child_run import (  # noqa: E402
    covariate_share,
    program_ranks,
    refine_run,
    refine_warnings,
    shares_before_after,
)
from pipelines.config import load_config  # noqa: E402
from pipelines.run import run_pipeline  # noqa: E402

#: what the expert recognises in each round: (covariate, artifact gene set named by flags, note)
ROUNDS = {
    "qc": ("pct_counts_mt", "Mitochondrial genes",
           "mitochondrial read fraction / library size, a QC artifact"),
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
    ranks = program_ranks(hyps, t, include_flagged=any_status)
    return {name: r for name, r in ranks.items() if r is not None}


def captured_at(run: Path, k: int = 10) -> int:
    """Planted programs with an unflagged hypothesis in the top ``k`` of ``run``."""
    return sum(r <= k for r in captured(run, any_status=False).values())


def next_shortcut(parent: Path, child: Path, term: str) -> str:
    """The technical terms the child leans on instead (:func:`refine_warnings`)."""
    shares, _ = refine_warnings(shares_before_after(parent, child, [term]), term, [], [])
    rose = [f"{t} {v['before']:.2f} -> {v['after']:.2f}" for t, v in shares.items()
            if v["after"] >= max(2 * v["before"], v["before"] + 0.1)]
    return "; ".join(rose) or "–"


def _fmt_ranks(ranks: dict[str, int]) -> str:
    return "; ".join(f"{k} #{v}" for k, v in sorted(ranks.items(), key=lambda kv: kv[1])) or "–"


def _confounded(args: argparse.Namespace, root: Path) -> list[dict]:
    rows = []
    for seed in [int(s) for s in args.seeds.split(",") if s]:
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
                "captured@10 before": captured_at(src if covariate is None else parent),
                "captured@10 after": captured_at(child),
                "any status: before": parent_captured,
                "any status: after": _fmt_ranks(captured(child)),
                "child leans on": next_shortcut(src, child, "batch" if covariate is None
                                                else covariate),
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
                         "captured@10 after": captured_at(clean),
                         "any status: after": _fmt_ranks(captured(clean))})
            print(rows[-1], flush=True)
    return rows


def _confounded_verdict(df: pd.DataFrame) -> list[str]:
    """The acceptance points of the confounded scenario, as measured."""
    out = []
    clean = df[df["mode"].str.startswith("clean")].set_index("seed")["captured@10 after"]
    retrain = df[df["mode"] == "retrain"].set_index("seed")
    if clean.empty or retrain.empty:
        return out
    n_prog = 4
    parent = retrain["captured@10 before"]
    out.append(f"- clean twin captures >= 3 of {n_prog} programs in its top 10 in every seed: "
               f"{'yes' if (clean >= 3).all() else 'no'} ({', '.join(map(str, clean))})")
    fewer = int((parent < clean.reindex(parent.index)).sum())
    out.append(f"- parent captures fewer than the clean twin in >= 2 seeds: "
               f"{'yes' if fewer >= 2 else 'no'} ({fewer} of {len(parent)}; parent "
               f"{', '.join(map(str, parent))})")
    child = retrain["captured@10 after"]
    ok = (child >= clean.reindex(child.index) - 1).all()
    out.append(f"- child (retrain) captures >= clean twin - 1 in every seed: "
               f"{'yes' if ok else 'no'} (child {', '.join(map(str, child))})")
    out.append(f"- batch attribution share drops >= 90%: "
               f"{'yes' if (retrain['drop'] >= 0.9).all() else 'no'} "
               f"({', '.join(f'{v:.3f}' for v in retrain['drop'])})")
    bal = retrain[["balanced donor AUROC before", "after"]].astype(float)
    defined = bal.dropna()
    ok = bool(len(defined)) and bool((defined["after"] >= defined["balanced donor AUROC before"]
                                      ).all())
    out.append(f"- batch-balanced held-out donor AUROC child >= parent (where the test donors "
               f"hold a balanced set: {len(defined)} of {len(bal)} seeds): {'yes' if ok else 'no'} "
               "(" + ", ".join(f"{r['balanced donor AUROC before']:.2f} -> {r['after']:.2f}"
                               for _, r in bal.iterrows()) + ")")
    return out


def _aligned_artifact(s: object) -> tuple[str, float] | None:
    """The round a refinement would act on for a drawn scenario, and its alignment: the most
    aligned batch program / ambient artifact (batch) or QC shift (pct_counts_mt)."""
    best = None
    for a in s.artifacts:  # type: ignore[attr-defined]
        rnd = {"batch_program": "batch", "ambient": "batch", "qc_shift": "qc"}.get(a.kind)
        if rnd and (best is None or a.alignment > best[1]):
            best = (rnd, a.alignment)
    return best


def _random(args: argparse.Namespace, root: Path) -> list[dict]:
    """Parent, child after one round, and clean twin on aligned-artifact random scenarios."""
    from discovery.io.scenarios import random_suite, simulate_scenario

    rows = []
    pool = random_suite(args.random * 8, args.random_seed, cells_per_donor=(50, 250))
    for s in pool:
        if len(rows) >= args.random:
            break
        art = _aligned_artifact(s)
        if art is None or art[1] < 0.5 or not s.programs:
            continue
        rnd, align = art
        runs = {}
        for twin in ("parent", "clean"):
            out = root / f"{s.name}_{twin}"
            runs[twin] = out
            if args.reuse and (out / "hypotheses.json").is_file():
                continue
            h5 = root / f"{s.name}_{twin}.h5ad"
            if not h5.is_file():
                simulate_scenario(s, clean=twin == "clean").write_h5ad(h5)
            run_pipeline(out, data=h5, config=load_config(preset="quick", overrides={
                "seed": 0, "keys": {**s.keys, "case": s.labels[0]},
                "preprocess": {"split_seed": s.seed}}), quiet=True)
        parent, clean = runs["parent"], runs["clean"]
        marked = mark_features(parent, rnd)
        child = root / f"{s.name}_retrain"
        covariate = ROUNDS[rnd][0] if rnd == "qc" else None
        res = None
        if marked:
            if args.reuse and (child / "refine.json").is_file():
                res = json.loads((child / "refine.json").read_text())
            else:
                try:
                    res = refine_run(parent, child, mode="retrain", covariate=covariate,
                                     quiet=True)
                except Exception as err:  # noqa: BLE001 - the row says why the loop stopped
                    res = {"error": f"{type(err).__name__}: {err}"}
        ok = res is not None and "error" not in res
        row = {"scenario": s.name, "artifact": rnd, "alignment": align,
               "programs": len(s.programs), "marked": len(marked),
               "parent": captured_at(parent),
               "child": captured_at(child) if ok else captured_at(parent),
               "clean": captured_at(clean),
               "share drop": res["covariate_share_drop"] if ok else None,
               "balanced AUROC before": res["before"].get("balanced_donor_auroc") if ok else None,
               "after": res["after"].get("balanced_donor_auroc") if ok else None,
               "child leans on": next_shortcut(parent, child, res["annotation_term"])
               if ok else "–",
               "note": ("" if ok else "nothing marked: the loop could not start" if not marked
                        else res["error"])}
        rows.append(row)
        print(row, flush=True)
    return rows


def _random_summary(df: pd.DataFrame, n_boot: int = 2000) -> list[str]:
    if df.empty:
        return ["No drawn scenario had an actionable artifact aligned >= 50% and a program."]
    rng = np.random.default_rng(0)
    v = df[["parent", "child", "clean"]].to_numpy(float)
    idx = rng.integers(0, len(v), size=(n_boot, len(v)))
    boots = v[idx].mean(1)  # (n_boot, 3)
    means = v.mean(0)

    def ci(j: int) -> str:
        return (f"{means[j]:.2f} [{np.quantile(boots[:, j], 0.025):.2f}, "
                f"{np.quantile(boots[:, j], 0.975):.2f}]")

    gap = means[2] - means[0]
    closed = (means[1] - means[0]) / gap if gap > 0 else float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        bclosed = (boots[:, 1] - boots[:, 0]) / (boots[:, 2] - boots[:, 0])
    bclosed = bclosed[np.isfinite(bclosed)]
    lo, hi = (np.quantile(bclosed, [0.025, 0.975]) if len(bclosed) else (np.nan, np.nan))
    return [f"Scenarios: {len(df)}; programs captured@10 (mean per scenario, 95% interval): "
            f"parent {ci(0)}, child {ci(1)}, clean twin {ci(2)}.",
            f"Share of the parent-to-clean gap the child closes: {closed:.2f} "
            f"[{lo:.2f}, {hi:.2f}] (goal >= 0.5)." if gap > 0 else
            "The clean twins capture no more than the parents: there is no gap to close."]


#: where the measured variants of the retraining are kept between runs of this script
VARIANTS_JSON = Path("benchmarks/results/feedback_variants.json")


def _variants(specs: list[str], seeds: list[int]) -> list[dict]:
    """Measure each tried variant of the retraining from its kept child runs.

    ``specs``: ``LABEL=DIR`` pairs; ``DIR/confounded_seed{seed}_retrain`` (or a child named
    ``..._retrain_mito`` with ``LABEL`` ending in ``(mito)``) is read as it is: programs
    captured@10, the batch share drop and the balanced donor AUROC from its ``refine.json``."""
    rows = []
    for spec in specs:
        label, _, root = spec.partition("=")
        suffix = "_retrain_mito" if label.rstrip().endswith("(mito)") else "_retrain"
        for seed in seeds:
            child = Path(root) / f"confounded_seed{seed}{suffix}"
            if not (child / "refine.json").is_file():
                continue
            res = json.loads((child / "refine.json").read_text())
            rows.append({"variant": label.strip(), "seed": seed,
                         "captured@10": captured_at(child),
                         "batch share after": covariate_share(child, "batch"),
                         "balanced donor AUROC after": res["after"].get("balanced_donor_auroc")})
    return rows


def merge_variants(kept: list[dict], measured: list[dict]) -> list[dict]:
    """The kept record of variants with the newly ``measured`` ones appended (a variant measured
    again replaces its old rows). Only the newest can be the current code: the ``(current)``
    mark of earlier labels is dropped."""
    def bare(label: str) -> str:
        return label.replace(" (current)", "")

    new = {bare(r["variant"]) for r in measured}
    old = [{**r, "variant": bare(r["variant"])} for r in kept if bare(r["variant"]) not in new]
    return old + measured


def _table(df: pd.DataFrame) -> list[str]:
    def fmt(v: object) -> str:
        if v is None or v is pd.NA or (isinstance(v, float) and v != v):
            return "–"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    return (["| " + " | ".join(df.columns) + " |", "|" + "|".join("---" for _ in df.columns)
             + "|"] + ["| " + " | ".join(fmt(v) for v in r) + " |"
                       for r in df.itertuples(index=False)])


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
    ap.add_argument("--random", type=int, default=0,
                    help="also run this many aligned-artifact randomised scenarios")
    ap.add_argument("--random-seed", type=int, default=2027)
    ap.add_argument("--variants", nargs="*", default=None, metavar="LABEL=DIR",
                    help="measure earlier variants of the retraining from their kept child runs "
                         f"(saved to {VARIANTS_JSON} and shown in every later report)")
    args = ap.parse_args(argv)
    root = args.keep or Path(tempfile.mkdtemp())
    command = (f"python benchmarks/eval_feedback.py --seeds {args.seeds} --modes {args.modes}"
               f"{' --second-round' if args.second_round else ''}"
               f"{' --clean' if args.clean else ''}"
               f"{f' --random {args.random} --random-seed {args.random_seed}' if args.random else ''}")
    lines = ["# Expert feedback: the loop against its clean upper bound", "",
             f"Command: `{command}`", "", __doc__.split("\n\n", 2)[2].strip(), ""]
    rows = _confounded(args, root)
    if rows:
        df = pd.DataFrame(rows)
        for col in ("marked", "captured@10 before", "captured@10 after"):
            df[col] = df[col].astype("Int64")  # counts stay integers next to the clean rows' gaps
        lines += ["## The `confounded` scenario", "", *_confounded_verdict(df), "", *_table(df),
                  ""]
    if args.random:
        rdf = pd.DataFrame(_random(args, root))
        lines += [f"## Randomised aligned-artifact scenarios (seed {args.random_seed})", "",
                  *_random_summary(rdf), "", *_table(rdf), ""]
    if args.variants:
        vrows = _variants(args.variants, [int(x) for x in args.seeds.split(",") if x])
        write_text(VARIANTS_JSON, json.dumps(merge_variants(
            json.loads(VARIANTS_JSON.read_text()) if VARIANTS_JSON.is_file() else [], vrows),
            indent=1, default=float))
    if VARIANTS_JSON.is_file():
        vdf = pd.DataFrame(json.loads(VARIANTS_JSON.read_text()))
        wide = vdf.pivot_table(index="variant", columns="seed", values="captured@10",
                               sort=False)
        lines += ["## Variants of the retraining tried (measured, `confounded`)", "",
                  "Each variant was run on the same parents (the same marks); the row is "
                  "what its child runs measured (`--variants`, kept in "
                  f"`{VARIANTS_JSON}`). The last is the current code.", "",
                  *_table(vdf), "",
                  "Programs captured@10 per seed: " + "; ".join(
                      f"{v}: {', '.join(str(int(x)) for x in r.dropna())}"
                      for v, r in wide.iterrows()), ""]
    write_text(args.out, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
