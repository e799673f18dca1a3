"""Distributed training: `discovery train` under a 2-process torchrun (Gloo on CPU) matches
single-process training.

Each rank computes its slice of every global batch and DDP averages the gradients, with the loss
normalised by the global batch's weight, so the gradient is the single-process one up to the
order of floating-point sums. Dropout is switched off here: its masks are drawn per process and
would differ by design. Tolerance: max |Δ logit| < 1e-4 over every cell after 4 epochs (measured: 4.8e-7).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
import torch

from discovery.tl import classifier
from pipelines.cli import main

CONFIG = {
    "model": {"kind": "mlp", "arch": {"dropout": 0.0, "input_dropout": 0.0},
              "train": {"epochs": 4, "batch_size": 64, "patience": 10}},
    "preprocess": {"n_top_genes": 300},
}


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed")
def test_torchrun_two_processes_match_single_process(raw_small, tmp_path):
    data = tmp_path / "cohort.h5ad"
    raw_small.write_h5ad(data)
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(CONFIG))
    single, multi = tmp_path / "single", tmp_path / "ddp"
    assert main(["train", str(data), "--config", str(cfg), "--out", str(single), "--quiet"]) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "pipelines.cli", "train", str(data), "--config", str(cfg), "--out", str(multi),
         "--quiet"],
        env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    # only rank 0 wrote a run directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort.h5ad", "config.json", "ddp",
                                                          "single"]
    a, b = classifier.load(single / "model"), classifier.load(multi / "model")
    x = classifier.encode(ad.read_h5ad(single / "adata.h5ad"), list(a.config.gene_names))
    with torch.no_grad():
        la, lb = a(x).logits.numpy(), b(x).logits.numpy()
    assert np.abs(la - lb).max() < 1e-4, np.abs(la - lb).max()
    # and training moved the weights: the comparison is not between two untrained models
    assert np.abs(la).max() > 0.5
    ma = json.loads((single / "model" / "metrics.json").read_text())
    mb = json.loads((multi / "model" / "metrics.json").read_text())
    assert ma["training"]["best_epoch"] == mb["training"]["best_epoch"]

