"""Trainable models: the cell classifiers (and, later, the sparse autoencoders).

Registry: :data:`CLASSIFIERS` maps an architecture name to its (HF config class, model class).
Checkpoints are directories with ``config.json`` + ``model.safetensors``; :func:`load_classifier`
reads them without unpickling anything.
"""

from __future__ import annotations

import json
from pathlib import Path

from models.mlp import ExpressionMLPConfig, ExpressionMLPForCellClassification
from models.transformer import GeneTransformerConfig, GeneTransformerForCellClassification

__all__ = ["CLASSIFIERS", "load_classifier"]

CLASSIFIERS = {
    "transformer": (GeneTransformerConfig, GeneTransformerForCellClassification),
    "mlp": (ExpressionMLPConfig, ExpressionMLPForCellClassification),
}
_BY_MODEL_TYPE = {cfg.model_type: (name, model) for name, (cfg, model) in CLASSIFIERS.items()}


def load_classifier(path: str | Path):  # noqa: ANN201 - returns one of the registered models
    """Load a classifier checkpoint (safetensors only; never a pickle)."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file() or not (path / "model.safetensors").is_file():
        msg = (
            f"{path} is not a classifier checkpoint (needs config.json and model.safetensors); "
            "train one with `discovery train` or `discovery run`."
        )
        raise FileNotFoundError(msg)
    model_type = json.loads(cfg_file.read_text()).get("model_type")
    if model_type not in _BY_MODEL_TYPE:
        msg = f"{cfg_file}: unknown model_type {model_type!r}; known: {sorted(_BY_MODEL_TYPE)}"
        raise ValueError(msg)
    _, cls = _BY_MODEL_TYPE[model_type]
    model = cls.from_pretrained(path, use_safetensors=True)
    # tensors read from the safetensors file may sit at unaligned addresses, which sends BLAS
    # down a different kernel (logits differing in the 9th digit); fresh copies are aligned
    for p in model.parameters():
        p.data = p.data.clone()
    for b in model.buffers():
        b.data = b.data.clone()
    model.eval()
    return model
