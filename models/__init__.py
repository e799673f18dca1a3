"""Trainable models: the cell classifiers here, the sparse autoencoders in :mod:`models.sae`.

Registry: :data:`CLASSIFIERS` maps an architecture name to its (HF config class, model class).
Checkpoints are directories with ``config.json`` + ``model.safetensors``; :func:`load_classifier`
reads them without unpickling anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.errors import InputError

__all__ = ["CLASSIFIERS", "PICKLE_SUFFIXES", "load_classifier", "require_safetensors"]

#: file types that hold pickles (never loaded: unpickling can run code)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def _registry() -> dict[str, tuple[type, type]]:
    """The architectures by name. Imported on first use (``models.CLASSIFIERS``): importing
    ``models`` (its errors, budget or safetensors checks) must not load PyTorch."""
    from models.mlp import ExpressionMLPConfig, ExpressionMLPForCellClassification
    from models.pretrained import (
        PretrainedGeneEncoderConfig,
        PretrainedGeneEncoderForCellClassification,
    )
    from models.transformer import GeneTransformerConfig, GeneTransformerForCellClassification

    return {
        "transformer": (GeneTransformerConfig, GeneTransformerForCellClassification),
        "mlp": (ExpressionMLPConfig, ExpressionMLPForCellClassification),
        #: a user's pretrained gene-token BERT (built by models.pretrained.from_bert_checkpoint)
        "pretrained": (PretrainedGeneEncoderConfig, PretrainedGeneEncoderForCellClassification),
    }


def __getattr__(name: str) -> Any:
    if name == "CLASSIFIERS":  # Registry: architecture name -> (HF config class, model class)
        globals()["CLASSIFIERS"] = value = _registry()
        return value
    msg = f"module 'models' has no attribute {name!r}"
    raise AttributeError(msg)


def require_safetensors(path: Path, weights: str, what: str, hint: str) -> None:
    """Check that ``path`` holds ``config.json`` + ``weights``; refuse pickle checkpoints.

    Raises :class:`~models.errors.InputError` naming the pickle file (pickles can run code
    when loaded, so they are never read) or the missing files, with ``hint`` as the fix.
    """
    if (path / "config.json").is_file() and (path / weights).is_file():
        return
    pickles = sorted(p.name for p in path.glob("*") if p.suffix in PICKLE_SUFFIXES) \
        if path.is_dir() else []
    if pickles:
        msg = (
            f"refusing to load {path / pickles[0]}: pickle-based checkpoints can run arbitrary "
            f"code when loaded. Only safetensors checkpoints (config.json + {weights}) are read; "
            "convert a checkpoint you trust with "
            "`safetensors.torch.save_file(torch.load(p, weights_only=True), ...)`, or " + hint
            + "."
        )
        raise InputError(msg)
    msg = f"{path} is not {what} (needs config.json and {weights}); {hint}."
    raise InputError(msg)


def load_classifier(path: str | Path):  # noqa: ANN201 - returns one of the registered models
    """Load a classifier checkpoint (safetensors only; never a pickle)."""
    from models.budget import check_memory, parameter_count

    path = Path(path)
    cfg_file = path / "config.json"
    require_safetensors(path, "model.safetensors", "a classifier checkpoint",
                        "train one with `discovery train` or `discovery run`")
    try:
        raw = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        msg = f"{cfg_file} is not valid JSON ({err}): the checkpoint is truncated or was edited"
        raise InputError(msg) from err
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    registry = globals().get("CLASSIFIERS") or __getattr__("CLASSIFIERS")
    by_type = {cfg.model_type: model for cfg, model in registry.values()}
    if model_type not in by_type:
        msg = f"{cfg_file}: unknown model_type {model_type!r}; known: {sorted(by_type)}"
        raise InputError(msg)
    cls = by_type[model_type]
    try:
        config = cls.config_class.from_dict(raw)
    except (TypeError, ValueError) as err:
        msg = f"{cfg_file}: not a valid {model_type} config ({err})"
        raise InputError(msg) from err
    check_memory(parameter_count(cls, config), f"the checkpoint {path}", purpose="load",
                 fix="Check its config.json: was it edited, or written for another model?")
    try:
        model, info = cls.from_pretrained(path, use_safetensors=True, output_loading_info=True)
    except Exception as err:  # safetensors raises its own error types for a corrupt file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        msg = (f"{path}: the weights could not be loaded into the model its config.json "
               f"describes ({first}); model.safetensors is truncated, or the files come from "
               "different checkpoints. Retrain with `discovery run` (a run directory "
               "recomputes a changed model by itself)")
        raise InputError(msg) from err
    wrong = {k: sorted(map(str, v))[:5] for k, v in info.items()
             if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if wrong:
        msg = (f"{path}: model.safetensors does not match config.json ({wrong}); a model with "
               "randomly initialised weights would be silently wrong. The file was edited or "
               "comes from another checkpoint; retrain with `discovery run`")
        raise InputError(msg)
    # tensors read from the safetensors file may sit at unaligned addresses, which sends BLAS
    # down a different kernel (logits differing in the 9th digit); fresh copies are aligned
    for p in model.parameters():
        p.data = p.data.clone()
    for b in model.buffers():
        b.data = b.data.clone()
    model.eval()
    return model
