"""SAE training. The trainer is narrow: a data iterator in, an optional evaluator, a checkpoint
function; it does not know where the activations come from."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from models.configs import check_known
from models.errors import InputError
from models.sae import SparseAutoencoder

log = logging.getLogger(__name__)

__all__ = ["SAETrainConfig", "SAETrainHistory", "train_sae"]


@dataclass
class SAETrainConfig:
    lr: float = 2e-3
    batch_size: int = 128
    epochs: int = 60
    seed: int = 0
    device: str = "cpu"
    #: linear learning-rate decay to 0 over the last share of training (Gao et al. 2024)
    decay_share: float = 0.2

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.batch_size < 1 or self.epochs < 1:
            msg = f"invalid SAE training settings: {asdict(self)}"
            raise InputError(msg)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAETrainConfig:
        check_known(d, cls.__dataclass_fields__, "SAE training settings")
        return cls(**d)


@dataclass
class SAETrainHistory:
    loss: list[float] = field(default_factory=list)
    mse: list[float] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    samples: int = 0

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0


def train_sae(
    sae: SparseAutoencoder,
    data: Callable[[int], Iterable[torch.Tensor]],
    config: SAETrainConfig,
    *,
    evaluator: Callable[[SparseAutoencoder], dict[str, Any]] | None = None,
    checkpoint: Callable[[SparseAutoencoder, int], None] | None = None,
    n_batches_per_epoch: int | None = None,
) -> SAETrainHistory:
    """Fit ``sae``; ``data(epoch)`` yields activation batches ``(batch, d_in)`` for one epoch."""
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    sae.to(device).train()
    opt = torch.optim.Adam(sae.parameters(), lr=config.lr, betas=(0.9, 0.999))
    hist = SAETrainHistory()
    total = n_batches_per_epoch * config.epochs if n_batches_per_epoch else None
    decay_from = int(total * (1 - config.decay_share)) if total else None
    step = 0
    t0 = time.perf_counter()
    bar = tqdm(range(config.epochs), desc=f"SAE {sae.config.architecture}", disable=not log.isEnabledFor(logging.INFO))
    for epoch in bar:
        run_loss = run_mse = 0.0
        nb = 0
        for batch in data(epoch):
            batch = batch.to(device, non_blocking=True)
            if total and decay_from is not None and step >= decay_from:
                for g in opt.param_groups:
                    g["lr"] = config.lr * max(0.0, (total - step) / max(1, total - decay_from))
            out = sae(batch)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            sae.remove_parallel_grad()
            opt.step()
            sae.normalise_decoder()
            run_loss += float(out.loss.detach())
            run_mse += float(out.mse)
            hist.samples += batch.shape[0]
            nb += 1
            step += 1
        hist.loss.append(run_loss / max(nb, 1))
        hist.mse.append(run_mse / max(nb, 1))
        bar.set_postfix(mse=f"{hist.mse[-1]:.4f}", dead=int(sae.dead_mask.sum()))
        if checkpoint is not None:
            checkpoint(sae, step)
    hist.seconds = time.perf_counter() - t0
    sae.eval()
    if evaluator is not None:
        hist.evals.append(evaluator(sae))
    log.info("SAE %s: %d samples/s, final mse %.4f", sae.config.architecture,
             hist.samples_per_second, hist.mse[-1] if hist.mse else float("nan"))
    return hist
