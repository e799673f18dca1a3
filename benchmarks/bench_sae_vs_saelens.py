"""Our TopK SAE trainer against SAELens's, side by side in one process on one activation matrix.

Run (SAELens is an optional benchmark dependency, installed with the torch pin kept):

    pip install -e ".[bench]"      # or: pip install -c <(echo torch==2.13.0) sae-lens
    python benchmarks/bench_sae_vs_saelens.py RUN_DIR [--settings run:256:48:128,synthetic256:2048:32:4096:60]

Each setting ``SOURCE:D_SAE:K:BATCH`` names its activations: ``run``, the ``pooled`` activation
of every cell of RUN_DIR's classifier (the pipeline's SAE hook), read from its ``adata.h5ad`` +
``model/`` (collected once, before timing); or ``syntheticD``, rows of D dims with a known sparse
structure (:func:`_synthetic`).
Both sides train a TopK SAE with the same d_sae, k, batch size, learning rate (Adam, no decay)
and number of epochs over the same row order; the SAELens side replicates its ``SAETrainer``
step (``training_forward_pass``, dead-latent tracking for AuxK, backward, gradient clipping at 1,
Adam step). Reported: samples/s (median over repeats) and explained variance on held-out rows
(test donors, or the synthetic hold-out) in raw activation space. Ratios are ours / SAELens's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from discovery.io.files import write_text  # noqa: E402


def _acts(run_dir: Path) -> tuple[torch.Tensor, np.ndarray]:
    import anndata as ad

    from discovery.tl import classifier, features

    adata = ad.read_h5ad(run_dir / "adata.h5ad")
    model = classifier.load(run_dir / "model")
    store = features.collect_activations(adata, model, run_dir / ".bench_acts", hook="pooled")
    return store.read(), (adata.obs["split"] == "test").to_numpy()


def _ev(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return float(1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def run_ours(x, test, args, seed):
    from models.sae import build_sae
    from models.sae_training import SAETrainConfig, train_sae

    train = x[~test]
    sae = build_sae("topk", d_in=x.shape[1], d_sae=args.d_sae, k=args.k, seed=seed,
                    dead_after=args.dead_window * args.batch)
    sae.fit_normalisation(train)
    order = [torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + e))
             for e in range(args.epochs)]

    def data(epoch):
        for i in range(0, len(train), args.batch):
            yield train[order[epoch][i:i + args.batch]]

    cfg = SAETrainConfig(lr=args.lr, batch_size=args.batch, epochs=args.epochs, seed=seed,
                         decay_share=0.0)
    hist = train_sae(sae, data, cfg)
    with torch.no_grad():
        ev = _ev(x[test], sae.decode(sae.encode(x[test])))
    return hist.samples / hist.seconds, ev


def run_saelens(x, test, args, seed):
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    torch.manual_seed(seed)
    train = x[~test]
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=x.shape[1], d_sae=args.d_sae, k=args.k,
                                                dtype="float32", device="cpu"))
    opt = torch.optim.Adam(sae.parameters(), lr=args.lr, betas=(0.9, 0.999))
    since_fired = torch.zeros(args.d_sae)
    order = [torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + e))
             for e in range(args.epochs)]
    n, step = 0, 0
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        for i in range(0, len(train), args.batch):
            batch = train[order[epoch][i:i + args.batch]]
            sae.train()
            out = sae.training_forward_pass(TrainStepInput(
                sae_in=batch, coefficients={}, dead_neuron_mask=since_fired > args.dead_window,
                n_training_steps=step, is_logging_step=False))
            with torch.no_grad():
                fired = out.feature_acts.bool().float().sum(-2).bool()
                since_fired += 1
                since_fired[fired] = 0
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            n += len(batch)
            step += 1
    seconds = time.perf_counter() - t0
    sae.eval()
    with torch.no_grad():
        ev = _ev(x[test], sae.decode(sae.encode(x[test])))
    return n / seconds, ev


def _synthetic(d_in: int, n: int = 24_000, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Activations with a known sparse structure: each row a sum of about 8 of 4 x d_in unit
    directions with log-normal magnitudes, plus 5% noise; the last fifth of the rows held out."""
    g = torch.Generator().manual_seed(seed)
    n_dirs = 4 * d_in
    dirs = torch.nn.functional.normalize(torch.randn(n_dirs, d_in, generator=g), dim=1)
    active = torch.rand(n, n_dirs, generator=g) < 8 / n_dirs
    mags = torch.exp(0.5 * torch.randn(n, n_dirs, generator=g)) * active
    x = mags @ dirs + 0.05 * torch.randn(n, d_in, generator=g)
    test = np.zeros(n, bool)
    test[-n // 5:] = True
    return x, test


def _setting(text: str, epochs: int) -> dict:
    """``SOURCE:D_SAE:K:BATCH[:EPOCHS]`` with SOURCE ``run`` (the run's activations) or
    ``syntheticD`` (:func:`_synthetic` with d_in D); EPOCHS defaults to ``epochs``."""
    try:
        source, d_sae, k, batch, *rest = text.split(":")
        if len(rest) > 1:
            raise ValueError(text)
        return {"source": source, "d_sae": int(d_sae), "k": int(k), "batch": int(batch),
                "epochs": int(rest[0]) if rest else epochs}
    except ValueError as err:
        raise SystemExit(f"--settings: {text!r} is not SOURCE:D_SAE:K:BATCH[:EPOCHS]") from err


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--settings", default="run:256:48:128,synthetic256:2048:32:4096:60",
                    help="SOURCE:D_SAE:K:BATCH[:EPOCHS], comma-separated (one table each); "
                         "SOURCE is run (the run's pooled activations) or syntheticD (d_in D)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--dead-window", type=int, default=50, help="steps without firing = dead")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/sae_vs_saelens.md"))
    args = ap.parse_args(argv)
    settings = [_setting(t, args.epochs) for t in args.settings.split(",") if t.strip()]
    run_x, run_test = _acts(args.run_dir)
    import sae_lens

    ours, theirs = "ours (TopK)", "SAELens TopKTrainingSAE (baseline)"
    lines = [
        "# TopK SAE training: ours vs SAELens (same process, same activations)", "",
        f"Command: `python benchmarks/bench_sae_vs_saelens.py {args.run_dir} --settings "
        f"{args.settings} --lr {args.lr} --epochs {args.epochs} --repeats {args.repeats}` (this "
        "file is written by that command).", "",
        f"Activations: `run` = `pooled` of {args.run_dir}'s classifier, "
        f"{int((~run_test).sum())} training rows x {run_x.shape[1]} dims, explained variance on "
        f"{int(run_test.sum())} test-donor rows (the pipeline's default SAE is d_sae 256, k 48, "
        "batch 128); `syntheticD` = 24,000 rows of D dims, each a sum of about 8 of 4D unit "
        "directions plus noise, explained variance on the last 4,800. Explained variance in "
        f"raw space. sae-lens {sae_lens.__version__}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {len(os.sched_getaffinity(0))} cores available; "
        f"medians over {args.repeats} interleaved repeats. Ours takes the sparse backward "
        "(`models/sae.py::_SelectedPre`) where d_sae >= 16 k, else autograd's dense one.",
    ]
    summary = []
    for st in settings:
        if st["source"] == "run":
            x, test = run_x, run_test
        elif st["source"].startswith("synthetic"):
            x, test = _synthetic(int(st["source"].removeprefix("synthetic")))
        else:
            raise SystemExit(f"unknown activation source {st['source']!r}")
        args.d_sae, args.k, args.batch = st["d_sae"], st["k"], st["batch"]
        epochs, args.epochs = args.epochs, st["epochs"]
        rows: dict[str, list] = {ours: [], theirs: []}
        for r in range(args.repeats):  # interleaved, so machine noise hits both alike
            rows[ours].append(run_ours(x, test, args, r))
            rows[theirs].append(run_saelens(x, test, args, r))
        med = {n: (statistics.median(s for s, _ in rs), statistics.median(e for _, e in rs))
               for n, rs in rows.items()}
        base_sps = med[theirs][0]
        name = (f"{st['source']} (d_in {x.shape[1]}), d_sae {args.d_sae}, k {args.k}, "
                f"batch {args.batch}, {args.epochs} epochs")
        args.epochs = epochs
        lines += ["", f"## {name}", "",
                  "| trainer | samples/s | x baseline | explained variance |",
                  "|---|---|---|---|"]
        for who, (sps, ev) in med.items():
            lines.append(f"| {who} | {sps:,.0f} | {sps / base_sps:.2f} | {ev:.3f} |")
        gap = med[ours][1] - med[theirs][1]
        summary.append(f"at {name} ours is {med[ours][0] / base_sps:.1f}x SAELens's speed with "
                       f"explained variance {'+' if gap >= 0 else '-'}{abs(gap):.3f}")
    lines += ["", "Summary: " + "; ".join(summary) + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
