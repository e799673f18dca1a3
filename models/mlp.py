"""An MLP classifier on normalised expression, with the same interfaces as the transformer.

``expr: (cells, n_genes)`` -> per-gene standardisation (mean and sd of the training cells, saved
as buffers) -> linear embedding (hook ``embed``) -> pre-LN residual MLP blocks
(hooks ``layer{i}.ln2.scale``, ``layer{i}.gate``, ``layer{i}.mlp_out``, ``layer{i}.resid``) ->
final LayerNorm -> ``pooled`` -> linear head -> case logit (``logits``). Weights in safetensors
beside ``config.json``; the gene vocabulary is ``config.gene_names``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig

from models.base import CellClassifierBase, CellClassifierOutput
from models.layers import Block

__all__ = ["ExpressionMLPConfig", "ExpressionMLPForCellClassification"]


class ExpressionMLPConfig(PretrainedConfig):
    model_type = "discovery-expression-mlp"

    def __init__(
        self,
        gene_names: list[str] | None = None,
        d_model: int = 128,
        n_layers: int = 2,
        d_ff: int = 256,
        dropout: float = 0.1,
        input_dropout: float = 0.0,
        layer_norm_eps: float = 1e-5,
        **kwargs,
    ) -> None:
        self.gene_names = list(gene_names or [])
        self.d_model = d_model
        self.n_layers = n_layers
        self.d_ff = d_ff
        self.dropout = dropout
        self.input_dropout = input_dropout
        self.layer_norm_eps = layer_norm_eps
        super().__init__(**kwargs)


class ExpressionMLPForCellClassification(CellClassifierBase):
    """Case-vs-control classifier on a cell's expression vector."""

    config_class = ExpressionMLPConfig
    base_model_prefix = "expression_mlp"

    def __init__(self, config: ExpressionMLPConfig) -> None:
        super().__init__(config)
        n_genes, d = self._n_genes(), config.d_model
        self.embed = nn.Linear(n_genes, d)
        self.input_drop = nn.Dropout(config.input_dropout)
        self.blocks = nn.ModuleList(
            Block(d, config.d_ff, None, config.dropout, config.layer_norm_eps)
            for _ in range(config.n_layers)
        )
        self._add_head(d, config.layer_norm_eps)
        # per-gene standardisation fitted on the training cells (saved with the weights)
        self.register_buffer("gene_mean", torch.zeros(n_genes))
        self.register_buffer("gene_std", torch.ones(n_genes))
        self._finish_init()

    def forward(self, expr: torch.Tensor, labels: torch.Tensor | None = None,
                sample_weight: torch.Tensor | None = None) -> CellClassifierOutput:
        z = (expr - self.gene_mean) / self.gene_std
        h = self.hook_embed(self.embed(self.input_drop(z)))
        for block in self.blocks:
            h = block(h)
        return self._classify(h, labels, sample_weight)
