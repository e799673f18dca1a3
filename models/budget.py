"""Memory budget: how much a model will take, known before a single weight is allocated.

A checkpoint's ``config.json`` or a user's architecture settings decide the size of every tensor.
A hidden size of 10^6 or 10^6 layers would otherwise allocate until the machine runs out of
memory (on a shared server, everyone's machine). :func:`parameter_count` builds the model on
PyTorch's ``meta`` device (shapes only, no storage) with one and with two layers and
extrapolates to the configured depth, so even a million-layer config costs two tiny builds;
:func:`check_memory` compares the bytes the model needs with the memory this process may use.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.errors import InputError

__all__ = ["LAYER_ATTRS", "available_memory", "check_memory", "parameter_count"]

#: config attributes that hold the number of repeated layers
LAYER_ATTRS = ("n_layers", "num_hidden_layers")

#: share of the available memory a model may claim (activations, data and Python need the rest)
MEMORY_SHARE = 0.5

#: copies of the parameters alive at once: loading (weights + the state dict read) and training
#: (weights, gradients and Adam's two moments)
COPIES = {"load": 2, "train": 4}


def _count(build: Callable[[Any], nn.Module], config: Any) -> int:
    with torch.device("meta"):
        model = build(config)
    return sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())


def parameter_count(build: Callable[[Any], nn.Module], config: Any) -> int:
    """Parameters (and buffers) of ``build(config)``, counted without allocating them.

    The depth (``n_layers`` / ``num_hidden_layers``) is extrapolated from builds with one and two
    layers: every layer of our models has the same shape.
    """
    attr = next((a for a in LAYER_ATTRS if hasattr(config, a)), None)
    depth = int(getattr(config, attr)) if attr else None
    if attr is None or depth <= 2:
        return _count(build, config)
    one, two = copy.deepcopy(config), copy.deepcopy(config)
    setattr(one, attr, 1)
    setattr(two, attr, 2)
    n1, n2 = _count(build, one), _count(build, two)
    return n1 + (depth - 1) * (n2 - n1)


def _cgroup_free() -> int | None:
    """Bytes left under this process's cgroup (v2 or v1) memory limit, if it has one."""
    for limit_file, usage_file in (
            ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
            ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
             "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            return max(int(limit) - usage, 0)
    return None


def available_memory() -> int:
    """Bytes of memory this process can still use: the smaller of the system's available memory
    (``MemAvailable``) and what is left under a cgroup limit."""
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError):
        pass
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            free = 1 << 62  # unknown platform: no budget rather than a false refusal
    cgroup = _cgroup_free()
    return min(free, cgroup) if cgroup is not None else free


def check_memory(n_params: int, what: str, *, purpose: str = "load", fix: str = "",
                 dtype: torch.dtype = torch.float32) -> int:
    """Raise :class:`InputError` when ``n_params`` parameters of ``dtype`` (times the copies
    ``purpose`` keeps: ``load`` or ``train``) exceed :data:`MEMORY_SHARE` of the memory this
    process may use. Returns the bytes needed."""
    need = int(n_params) * torch.finfo(dtype).bits // 8 * COPIES[purpose]
    free = available_memory()
    budget = int(free * MEMORY_SHARE)
    if need > budget:
        msg = (
            f"{what} has {n_params:,} parameters: about {need / 2**30:,.1f} GiB to {purpose} "
            f"({COPIES[purpose]} copies of {torch.finfo(dtype).bits // 8} bytes each), more than "
            f"the {budget / 2**30:,.1f} GiB budget ({MEMORY_SHARE:.0%} of the "
            f"{free / 2**30:,.1f} GiB this process may use). Nothing was "
            f"allocated. {fix or 'Use a smaller architecture (fewer layers, a smaller width).'}"
        )
        raise InputError(msg)
    return need
