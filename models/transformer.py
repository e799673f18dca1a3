"""A transformer classifier over gene tokens, built on Hugging Face ``transformers``.

Design (why this tokenisation): each cell becomes a short sequence of gene tokens, chosen as in
Geneformer and embedded as in scGPT.

1. **Token choice (Geneformer-like)**: a cell is represented by its ``max_tokens`` (96)
   most expressed genes of the model's panel (its vocabulary); unexpressed genes are never
   tokens. This keeps sequences short, so training fits 2 CPU cores in minutes, where a token
   per panel gene would not. ``token_selection="relative"`` ranks genes by expression divided by
   their typical non-zero level (``gene_scale``) instead, as Geneformer's rank-value encoding
   does; on the bundled cohort that choice dropped down-regulated, highly expressed genes (the
   synaptic program of neurons) out of the sequence and lost 0.05 of cell-level AUROC, so the
   default ranks by absolute level.
2. **Token embedding (scGPT-like)**: gene-identity embedding + a linear embedding of the gene's
   expression relative to its typical level (value / ``gene_scale``), so magnitude is kept (rank-only encoding would lose it) and the input
   contribution of each gene token is linear in its value.
3. A learned ``[CLS]`` token, pre-LN transformer blocks (no positional embedding: a cell's genes
   are a set), final LayerNorm; the ``[CLS]`` state (hook ``pooled``) feeds a linear head that
   gives the case logit (hook ``logits``).

The gene vocabulary is ``config.gene_names``; ``gene_scale`` is a buffer saved in the
safetensors file, so a checkpoint directory carries everything needed to encode new cells.

Hook points (``model.hook_names``): ``embed``, ``layer{i}.ln1.scale``, ``layer{i}.pattern``,
``layer{i}.attn_out``, ``layer{i}.ln2.scale``, ``layer{i}.gate``, ``layer{i}.mlp_out``,
``layer{i}.resid``, ``ln_f.scale``, ``pooled``, ``logits``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig

from models.base import CellClassifierBase, CellClassifierOutput
from models.errors import InputError
from models.layers import Block

__all__ = ["GeneTokenMixin", "GeneTransformerConfig", "GeneTransformerForCellClassification",
           "select_tokens"]

TOKEN_SELECTIONS = ("relative", "absolute")


def select_tokens(expr: torch.Tensor, gene_scale: torch.Tensor, max_tokens: int,
                  selection: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A cell's gene tokens: its ``max_tokens`` top genes, ranked by level (``"absolute"``) or
    by level / ``gene_scale`` (``"relative"``, Geneformer's rank-value order); unexpressed genes
    never become tokens.

    ``expr: (cells, n_genes)`` -> (gene ids, values relative to ``gene_scale``, is_real), each
    ``(cells, tokens)`` in rank order; padding slots have ``is_real`` False and value 0.
    """
    k = min(max_tokens, expr.shape[1])
    score = expr / gene_scale if selection == "relative" else expr
    score = score.masked_fill(expr <= 0, float("-inf"))
    top_score, ids = torch.topk(score, k, dim=1)
    real = torch.isfinite(top_score)
    values = torch.gather(expr / gene_scale, 1, ids) * real
    return ids, values, real


class GeneTokenMixin:
    """What the gene-token classifiers share: token choice, the [CLS] + gene-token embedding
    (``gene_emb`` row per gene, last row [CLS]; ``value_emb`` of the relative level) and the
    attention key mask. Needs ``gene_emb``, ``value_emb``, the ``gene_scale`` buffer and
    ``config.max_tokens`` / ``config.token_selection``."""

    def tokenize(self, expr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``expr: (cells, n_genes)`` -> (gene ids, relative values, is_real), each (cells, tokens)."""
        return select_tokens(expr, self.gene_scale, self.config.max_tokens,
                             self.config.token_selection)

    def embed_tokens(self, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """[CLS] followed by the gene tokens: ``(cells, 1 + tokens, d)``."""
        tok = self.gene_emb(ids) + self.value_emb(values.unsqueeze(-1))
        cls = self.gene_emb.weight[-1].expand(ids.shape[0], 1, -1)
        return torch.cat([cls, tok], dim=1)

    @staticmethod
    def key_mask(real: torch.Tensor) -> torch.Tensor:
        """Attention key mask over [CLS] + tokens: [CLS] and the real gene tokens."""
        return torch.cat([torch.ones_like(real[:, :1]), real], dim=1)


class GeneTransformerConfig(PretrainedConfig):
    model_type = "discovery-gene-transformer"

    def __init__(
        self,
        gene_names: list[str] | None = None,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        d_ff: int = 128,
        max_tokens: int = 64,
        dropout: float = 0.1,
        token_dropout: float = 0.0,
        token_selection: str = "absolute",
        layer_norm_eps: float = 1e-5,
        **kwargs,
    ) -> None:
        self.gene_names = list(gene_names or [])
        self.d_model = d_model
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.d_ff = d_ff
        self.max_tokens = max_tokens
        self.dropout = dropout
        self.token_dropout = token_dropout
        if token_selection not in TOKEN_SELECTIONS:
            msg = f"token_selection must be one of {TOKEN_SELECTIONS}, got {token_selection!r}"
            raise InputError(msg)
        self.token_selection = token_selection
        self.layer_norm_eps = layer_norm_eps
        if d_model % n_heads:
            msg = f"d_model ({d_model}) must be divisible by n_heads ({n_heads})"
            raise InputError(msg)
        super().__init__(**kwargs)


class GeneTransformerForCellClassification(GeneTokenMixin, CellClassifierBase):
    """Case-vs-control classifier over gene tokens; input ``expr: (cells, n_genes)``."""

    config_class = GeneTransformerConfig
    base_model_prefix = "gene_transformer"

    def __init__(self, config: GeneTransformerConfig) -> None:
        super().__init__(config)
        n_genes, d = self._n_genes(), config.d_model
        self.gene_emb = nn.Embedding(n_genes + 1, d)  # index n_genes is [CLS]
        self.value_emb = nn.Linear(1, d)
        self.blocks = nn.ModuleList(
            Block(d, config.d_ff, config.n_heads, config.dropout, config.layer_norm_eps)
            for _ in range(config.n_layers)
        )
        self._add_head(d, config.layer_norm_eps)
        self.register_buffer("gene_scale", torch.ones(n_genes))
        self._finish_init()

    def forward(self, expr: torch.Tensor, labels: torch.Tensor | None = None,
                sample_weight: torch.Tensor | None = None) -> CellClassifierOutput:
        ids, values, real = self.tokenize(expr)
        if self.training and self.config.token_dropout > 0:
            # regulariser: hide a random share of the gene tokens from attention
            real = real & (torch.rand_like(values) >= self.config.token_dropout)
        h = self.hook_embed(self.embed_tokens(ids, values))  # (cells, 1 + tokens, d)
        mask = self.key_mask(real)
        for block in self.blocks:
            h = block(h, mask)
        return self._classify(h, labels, sample_weight)
