"""Files written safely: every write goes to a temporary file in the same folder and is renamed
into place, so a failed run never leaves a half-written file where a good one was."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.fileperms import umask

__all__ = ["atomic_write", "json_default", "read_json", "write_json", "write_text"]


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~umask())  # mkstemp's 0600 would hide runs from colleagues
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def read_json(path: str | Path) -> Any:
    """The JSON document at ``path``; a missing, empty, truncated or non-UTF-8 file raises
    :class:`~models.errors.InputError` naming the file (never a bare ``JSONDecodeError``)."""
    from models.errors import InputError

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        msg = f"{path} does not exist"
        raise InputError(msg) from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = f" at line {err.lineno}" if isinstance(err, json.JSONDecodeError) else ""
        msg = (f"{path} is not valid JSON ({getattr(err, 'msg', err)}{where}): the file is "
               "truncated or was edited. In a run directory, rerun `discovery run` with the same "
               "--out: changed files are detected and their stage recomputed")
        raise InputError(msg) from err


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
