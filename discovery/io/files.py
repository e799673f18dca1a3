"""Files written safely: every write goes to a temporary file in the same folder and is renamed
into place, so a failed run never leaves a half-written file where a good one was."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "json_default", "write_json", "write_text"]


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """``obj`` as indented JSON (numpy values and paths converted), written atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=json_default)
    return atomic_write(path, lambda p: p.write_text(text + "\n"))


def write_text(path: str | Path, text: str) -> Path:
    """``text`` written atomically."""
    return atomic_write(path, lambda p: p.write_text(text))


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)``: numpy scalars and arrays, paths, tuples and sets."""
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    msg = f"not JSON serialisable: {type(obj).__name__}"
    raise TypeError(msg)
