"""Hook points: named sites whose activations can be read, replaced or edited.

A :class:`HookPoint` is an identity module placed at each named site of a model (in the spirit of
TransformerLens). :class:`HookedMixin` gives a model two entry points used by the sparse
autoencoders, attribution graphs and interventions:

- ``run_with_cache(inputs, names)`` -> ``(output, {name: activation})``
- ``run_with_hooks(inputs, {name: fn})`` -> output, where ``fn(activation, name)`` returns the
  activation to use instead (or ``None`` to keep it unchanged).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["HookFn", "HookPoint", "HookedMixin"]

HookFn = Callable[[torch.Tensor, str], torch.Tensor | None]


class HookPoint(nn.Module):
    """Identity module marking a named activation site."""

    def __init__(self) -> None:
        super().__init__()
        self.name: str = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def hook_name(path: str) -> str:
    """Module path -> hook name: ``blocks.0.ln1.hook_scale`` -> ``layer0.ln1.scale``."""
    name = re.sub(r"^blocks\.(\d+)", r"layer\1", path)
    name = re.sub(r"\.?(attn|mlp)\.hook_(pattern|gate)$", r".\2", name)
    return name.replace("hook_", "").strip(".")


class HookedMixin:
    """Adds hook-point discovery, caching and editing to an ``nn.Module``."""

    def setup_hooks(self) -> None:
        """Name every :class:`HookPoint` after its attribute path; call at the end of __init__."""
        self._hook_points: dict[str, HookPoint] = {}
        for path, module in self.named_modules():  # type: ignore[attr-defined]
            if isinstance(module, HookPoint):
                name = hook_name(path)
                module.name = name
                self._hook_points[name] = module

    @property
    def hook_names(self) -> list[str]:
        return list(self._hook_points)

    def _check_names(self, names: Iterable[str]) -> None:
        unknown = [n for n in names if n not in self._hook_points]
        if unknown:
            msg = f"unknown hook point(s) {unknown}; this model has: {', '.join(self.hook_names)}"
            raise KeyError(msg)

    @contextlib.contextmanager
    def hooks(self, fns: dict[str, HookFn]) -> Iterator[None]:
        """Context in which ``fns`` edit the activations at their hook points."""
        self._check_names(fns)
        handles = []
        for name, fn in fns.items():
            def _hook(module: nn.Module, args: Any, output: torch.Tensor, fn=fn, name=name):
                new = fn(output, name)
                return output if new is None else new
            handles.append(self._hook_points[name].register_forward_hook(_hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def run_with_hooks(self, inputs: Any, fns: dict[str, HookFn], **kw: Any) -> Any:
        """Forward pass with ``fns`` replacing / editing activations at their hook points."""
        with self.hooks(fns):
            return self(inputs, **kw)  # type: ignore[operator]

    def iter_cache(
        self, inputs: Any, names: Iterable[str], *, batch_size: int
    ) -> Iterator[tuple[Any, Any, dict[str, torch.Tensor]]]:
        """:meth:`run_with_cache` over row blocks: yields (block inputs, output, cache)."""
        names = list(names)
        for i in range(0, len(inputs), batch_size):
            block = inputs[i:i + batch_size]
            out, cache = self.run_with_cache(block, names)
            yield block, out, cache

    def run_with_cache(
        self, inputs: Any, names: Iterable[str] | None = None, *, detach: bool = True, **kw: Any
    ) -> tuple[Any, dict[str, torch.Tensor]]:
        """Forward pass returning the output and the activations at ``names`` (all if None)."""
        names = list(self._hook_points) if names is None else list(names)
        self._check_names(names)
        cache: dict[str, torch.Tensor] = {}

        def store(x: torch.Tensor, name: str) -> None:
            cache[name] = x.detach() if detach else x

        with self.hooks({n: store for n in names}):
            out = self(inputs, **kw)  # type: ignore[operator]
        return out, cache
