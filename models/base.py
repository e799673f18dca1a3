"""What both cell classifiers share: output type, loss, weight init and the classification head.

A subclass builds its own trunk (embedding + blocks), then calls :meth:`CellClassifierBase.
_add_head` and :meth:`CellClassifierBase._finish_init`; its ``forward`` ends with
:meth:`CellClassifierBase._classify` on the final residual stream. The head is
``ln_f`` -> hook ``pooled`` -> linear -> hook ``logits`` (one case logit per cell).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from models.errors import InputError
from models.hooks import HookedMixin, HookPoint
from models.layers import HookedLayerNorm

__all__ = ["CellClassifierBase", "CellClassifierOutput", "classification_loss"]


@dataclass
class CellClassifierOutput(ModelOutput):
    """``logits: (cells,)`` case logits; ``loss`` when labels were given."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


def classification_loss(logits: torch.Tensor, labels: torch.Tensor | None,
                        weight: torch.Tensor | None) -> torch.Tensor | None:
    """Binary cross-entropy of the case logit, weighted per cell when ``weight`` is given."""
    if labels is None:
        return None
    per = nn.functional.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none")
    if weight is None:
        return per.mean()
    return (per * weight).sum() / weight.sum()


class CellClassifierBase(HookedMixin, PreTrainedModel):
    """Shared parts of the case-vs-control classifiers; input ``expr: (cells, n_genes)``."""

    main_input_name = "expr"

    def _n_genes(self) -> int:
        n = len(self.config.gene_names)
        if n == 0:
            msg = f"{type(self.config).__name__}.gene_names is empty; the model needs a gene vocabulary"
            raise InputError(msg)
        return n

    def _add_head(self, d: int, eps: float) -> None:
        self.ln_f = HookedLayerNorm(d, eps)
        self.head = nn.Linear(d, 1)

    def _finish_init(self) -> None:
        self.hook_embed = HookPoint()
        self.hook_pooled = HookPoint()
        self.hook_logits = HookPoint()
        self.post_init()
        self.setup_hooks()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def logits_from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """The case logit from a ``pooled`` activation (the head alone; hook ``logits`` runs)."""
        return self.hook_logits(self.head(pooled).squeeze(-1))

    def _classify(self, h: torch.Tensor, labels: torch.Tensor | None,
                  sample_weight: torch.Tensor | None) -> CellClassifierOutput:
        """Final residual stream -> case logit and loss.

        ``h: (cells, d)``, or ``(cells, seq, d)`` for a token sequence, whose first ([CLS])
        position is pooled after the final LayerNorm.
        """
        normed = self.ln_f(h)
        pooled = self.hook_pooled(normed[:, 0] if normed.ndim == 3 else normed)
        logits = self.hook_logits(self.head(pooled).squeeze(-1))
        return CellClassifierOutput(loss=classification_loss(logits, labels, sample_weight),
                                    logits=logits)
