"""An on-disk activation store: activations written in chunks to a memmap, read in batches.

The SAE trainer never needs all activations in memory: :class:`ActivationStore` appends chunks to
``acts.f32`` (row-major ``(n, d)`` float32) with ``meta.json`` beside it, and :meth:`batches`
streams shuffled mini-batches block by block (a block of rows is read, shuffled, cut into batches).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from models.errors import InputError

__all__ = ["ActivationStore"]


class ActivationStore:
    """``(n, d)`` float32 activations on disk."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta = json.loads((self.path / "meta.json").read_text())
        self.n, self.d = int(meta["n"]), int(meta["d"])
        self.meta = meta
        self._mm = np.memmap(self.path / "acts.f32", dtype=np.float32, mode="r",
                             shape=(self.n, self.d))

    # ---------------------------------------------------------------------------- writing
    class Writer:
        def __init__(self, path: Path, d: int, meta: dict) -> None:
            self.path, self.d, self.meta, self.n = path, d, meta, 0
            path.mkdir(parents=True, exist_ok=True)
            self._fh = (path / "acts.f32").open("wb")

        def append(self, chunk: torch.Tensor | np.ndarray) -> None:
            arr = chunk.detach().cpu().numpy() if isinstance(chunk, torch.Tensor) else chunk
            arr = np.ascontiguousarray(arr, dtype=np.float32).reshape(-1, self.d)
            if not np.isfinite(arr).all():
                msg = "activations hold NaN/Inf; the model or its input is broken"
                raise InputError(msg)
            self._fh.write(arr.tobytes())
            self.n += arr.shape[0]

        def close(self) -> ActivationStore:
            self._fh.close()
            (self.path / "meta.json").write_text(
                json.dumps({**self.meta, "n": self.n, "d": self.d, "dtype": "float32"}))
            return ActivationStore(self.path)

    @classmethod
    def create(cls, path: str | Path, d: int, **meta: object) -> ActivationStore.Writer:
        return cls.Writer(Path(path), d, dict(meta))

    @classmethod
    def from_array(cls, path: str | Path, acts: np.ndarray | torch.Tensor,
                   chunk: int = 65_536, **meta: object) -> ActivationStore:
        w = cls.create(path, acts.shape[1], **meta)
        for i in range(0, acts.shape[0], chunk):
            w.append(acts[i:i + chunk])
        return w.close()

    # ---------------------------------------------------------------------------- reading
    def __len__(self) -> int:
        return self.n

    def read(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return torch.from_numpy(np.array(self._mm[start:stop]))

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(self.n, size=min(n, self.n), replace=False))
        return torch.from_numpy(np.array(self._mm[idx]))

    def batches(self, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                block: int = 65_536) -> Iterator[torch.Tensor]:
        """One pass over the store in mini-batches (blocks visited and shuffled in random order)."""
        rng = np.random.default_rng(seed)
        starts = np.arange(0, self.n, block)
        if shuffle:
            rng.shuffle(starts)
        for s in starts:
            data = np.array(self._mm[s:s + block])
            if shuffle:
                data = data[rng.permutation(len(data))]
            t = torch.from_numpy(data)
            for i in range(0, len(t), batch_size):
                yield t[i:i + batch_size]
