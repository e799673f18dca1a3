"""File permissions of what the project writes: the user's umask, as ``open()`` would give, not
the owner-only 0600 that temporary-file helpers (``tempfile.mkstemp``, safetensors' writer)
leave behind, so that colleagues on a shared server can read a run."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["make_readable", "umask"]


def _read_umask() -> int:
    """The process umask, read once at import (setting it, even briefly, would race with other
    threads creating files, e.g. in the app)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def umask() -> int:
    """The process umask (read at import)."""
    return _UMASK


def make_readable(path: str | Path) -> None:
    """Give ``path`` (a file, or every file under a folder) the mode ``0o666 & ~umask``."""
    path = Path(path)
    files = [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()] \
        if path.is_dir() else [path]
    for f in files:
        os.chmod(f, 0o666 & ~_UMASK)
