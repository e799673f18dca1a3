"""Training of the cell classifiers: AdamW, class balancing, early stopping on validation donors.

The trainer is narrow: it gets tensors (expression, labels, per-cell weights) for a training set
and a validation set and knows nothing of AnnData or donors — the caller builds the validation set
from held-out donors and the weights that balance classes.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from models.configs import check_known
from models.errors import InputError

log = logging.getLogger(__name__)

#: loss weightings (``TrainConfig.balance``)
BALANCES = ("class", "class_batch")

__all__ = [
    "TrainConfig",
    "TrainHistory",
    "class_balance_weights",
    "group_balance_weights",
    "distributed_context",
    "train_classifier",
]


@dataclass
class TrainConfig:
    """Optimisation settings (model sizes live in the model's HF config)."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    patience: int = 4
    min_delta: float = 1e-4
    #: early-stopping criterion on the validation donors: "auroc" (ranking; robust to the
    #: over-confidence that inflates the loss of a cell-level classifier on donor labels) or "loss"
    early_stopping: str = "auroc"
    seed: int = 0
    device: str = "cpu"
    grad_clip: float = 1.0
    #: loss weights: "class" gives each class the same total weight; "class_batch" gives each
    #: (class, batch) cell the same total weight, so that in the weighted training data the batch
    #: says nothing about the label (falls back to "class" when a class x batch cell has too few
    #: donors to carry that weight, see :func:`discovery.tl.classifier.train`)
    balance: str = "class"
    #: exponential moving average of the weights (0 = off): validation, early stopping and the
    #: returned model use the averaged weights, which vary less from step to step
    ema: float = 0.0
    #: learning rate over the steps: "warmup_cosine" (linear warm-up over the first 10%, then
    #: cosine decay to 0) for training from scratch; "constant" for short fine-tuning
    lr_schedule: str = "warmup_cosine"

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("warmup_cosine", "constant"):
            msg = f"lr_schedule must be 'warmup_cosine' or 'constant', got {self.lr_schedule!r}"
            raise InputError(msg)
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            msg = f"device must be 'cpu' or 'cuda', got {self.device!r}"
            raise InputError(msg)
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            msg = "--device cuda was asked for but no CUDA GPU is available; use --device cpu"
            raise InputError(msg)
        if self.early_stopping not in ("auroc", "loss"):
            msg = f"early_stopping must be 'auroc' or 'loss', got {self.early_stopping!r}"
            raise InputError(msg)
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                msg = f"{name} must be at least 1, got {getattr(self, name)}"
                raise InputError(msg)
        if self.balance not in BALANCES:
            msg = f"balance must be one of {BALANCES}, got {self.balance!r}"
            raise InputError(msg)
        if not 0.0 <= self.ema < 1.0:
            msg = f"ema must be in [0, 1), got {self.ema}"
            raise InputError(msg)
        if self.lr <= 0:
            msg = f"lr must be positive, got {self.lr}"
            raise InputError(msg)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        check_known(d, cls.__dataclass_fields__, "training settings")
        return cls(**d)


@dataclass
class TrainHistory:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_auroc: list[float] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False
    seconds: float = 0.0
    cells_per_second: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def group_balance_weights(y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per-cell weights giving every (class, group) cell present the same total weight (mean
    weight 1): with groups = batches, the weighted batch composition of cases and controls is
    the same, so the batch carries no information about the label."""
    y = np.asarray(y).astype(bool)
    class_balance_weights(y)  # the one-class error
    groups = np.asarray(groups).astype(str)
    cell = np.char.add(np.where(y, "1\x1f", "0\x1f"), groups)
    _, inv, counts = np.unique(cell, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inv]
    return (w / w.mean()).astype(np.float32)


def class_balance_weights(y: np.ndarray) -> np.ndarray:
    """Per-cell weights giving each class the same total weight (mean weight 1)."""
    y = np.asarray(y).astype(bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        msg = "training labels hold one class only; both cases and controls are needed"
        raise InputError(msg)
    w = np.where(y, len(y) / (2 * n1), len(y) / (2 * n0))
    return w.astype(np.float32)


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
              batch_size: int) -> tuple[float, float]:
    """Weighted validation loss and AUROC."""
    model.eval()
    logits = torch.cat([model(x[i:i + batch_size]).logits for i in range(0, len(x), batch_size)])
    per = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    loss = float((per * w).sum() / w.sum())
    return loss, _auroc(y.cpu().numpy(), logits.cpu().numpy())


def _auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUROC with average ranks for ties."""
    from scipy.stats import rankdata

    r = rankdata(score)
    n1 = y.sum()
    n0 = len(y) - n1
    return float((r[y > 0.5].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


class _Ema:
    """Exponential moving average of a model's floating-point weights, with the usual warm-up
    (decay min(d, (1 + t) / (10 + t)) at step t, so early averages are not stuck at the init)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay, self.steps = decay, 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.state[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.state[k].copy_(v)

    def swap_in(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Load the averaged weights into ``model``; returns the live weights to restore."""
        live = copy.deepcopy(model.state_dict())
        model.load_state_dict(self.state)
        return live


def distributed_context() -> tuple[int, int]:
    """``(world_size, rank)`` of an initialised torch.distributed process group, else (1, 0)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def _hooked(model: nn.Module, *fns: dict[str, Any] | None) -> contextlib.ExitStack:
    """Nested ``model.hooks`` contexts, outermost first (later ones see earlier edits)."""
    stack = contextlib.ExitStack()
    for f in fns:
        if f:
            stack.enter_context(model.hooks(f))
    return stack


def train_classifier(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    config: TrainConfig,
    *,
    hooks: dict[str, Any] | None = None,
    extra_loss: Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor] | None = None,
    cache: tuple[str, ...] = (),
) -> TrainHistory:
    """Fit ``model`` in place; keep the weights of the best validation epoch.

    "Best" is the highest validation AUROC (``early_stopping="auroc"``) or the lowest
    class-weighted validation loss (``"loss"``); training stops after ``patience`` epochs
    without improvement.

    ``train`` and ``val`` are ``(expr: (cells, genes), labels: (cells,), weights: (cells,))``.
    ``hooks`` edit activations at hook points in every forward pass, training and validation
    (e.g. a projection that removes directions the model must not use). ``extra_loss(acts,
    rows)`` adds a term to each batch's loss, from the activations at the ``cache`` hook points
    (after ``hooks``) and the batch's row indices into ``train``. The one training loop: the
    classifier stage and expert-feedback fine-tuning both run it.
    """
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    world, rank = distributed_context()
    device = torch.device(config.device)
    if device.type == "cuda" and world > 1 and device.index is None:
        device = torch.device("cuda", rank % max(1, torch.cuda.device_count()))
    model.to(device)
    # under torchrun every rank holds all tensors and draws the same permutation; each rank
    # computes its slice of every global batch and DDP averages the gradients
    net = (nn.parallel.DistributedDataParallel(model, device_ids=[device.index]
                                               if device.type == "cuda" else None)
           if world > 1 else model)
    x, y, w = (t.to(device) for t in train)
    xv, yv, wv = (t.to(device) for t in val)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(x) / config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = max(1, total // 10)

    def lr_factor(step: int) -> float:
        # linear warm-up over the first 10% of steps, then cosine decay to 0
        if config.lr_schedule == "constant":
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    hist = TrainHistory()
    ema = _Ema(model, config.ema) if config.ema else None
    best_state, best, bad = None, float("inf"), 0
    t0 = time.perf_counter()
    seen = 0
    bar = tqdm(range(config.epochs), desc=f"train {type(model).__name__[:24]}",
               disable=not log.isEnabledFor(logging.INFO) or rank > 0)
    for epoch in bar:
        model.train()
        perm = torch.randperm(len(x), generator=gen).to(device)
        running = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * config.batch_size:(i + 1) * config.batch_size]
            mine = idx[rank::world]
            acts: dict[str, torch.Tensor] = {}
            grab = {n: (lambda a, name, acts=acts: acts.__setitem__(name, a)) for n in cache}
            with _hooked(model, hooks, grab):
                logits = net(x[mine]).logits
            per = nn.functional.binary_cross_entropy_with_logits(logits, y[mine],
                                                                 reduction="none")
            # the global batch's weighted mean: x world because DDP averages over ranks
            loss = (per * w[mine]).sum() / w[idx].sum() * world
            if extra_loss is not None:
                loss = loss + extra_loss(acts, mine)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            sched.step()
            if ema is not None:
                ema.update(model)
            running += float(loss.detach()) / world * len(idx)
            seen += len(idx)
        if world > 1:
            total_loss = torch.tensor([running], dtype=torch.float64)
            torch.distributed.all_reduce(total_loss)
            running = float(total_loss[0])
        hist.train_loss.append(running / len(x))
        live = ema.swap_in(model) if ema is not None else None
        with _hooked(model, hooks):
            vloss, vauc = _evaluate(model, xv, yv, wv, config.batch_size * 4)
        hist.val_loss.append(vloss)
        hist.val_auroc.append(vauc)
        bar.set_postfix(train=f"{hist.train_loss[-1]:.3f}", val_loss=f"{vloss:.3f}",
                        val_auroc=f"{vauc:.3f}")
        log.debug("epoch %d train %.4f val %.4f auroc %.4f", epoch, hist.train_loss[-1], vloss,
                  vauc)
        current = -vauc if config.early_stopping == "auroc" else vloss
        if current < best - config.min_delta:
            best, bad, hist.best_epoch = current, 0, epoch
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
        if live is not None:
            model.load_state_dict(live)
        if bad >= config.patience:
            hist.stopped_early = True
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    hist.seconds = time.perf_counter() - t0
    hist.cells_per_second = seen / hist.seconds if hist.seconds else 0.0
    log.info("trained %s: best epoch %d (val %s %.4f), %.0f cells/s", type(model).__name__,
             hist.best_epoch, config.early_stopping, abs(best), hist.cells_per_second)
    return hist
