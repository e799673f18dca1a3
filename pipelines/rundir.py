"""The run directory (DESIGN.md contract) and its manifest.

``RUN_DIR/manifest.json`` holds: ``schema_version``, ``run_id``, ``parent_run``, the resolved
config and its hash, the input checksum, package versions, the seed, per stage its status,
params, outputs and seconds, and ``files``: the sha256 of every output as its last writer left
it. Every file is written to a temporary file in the same folder and renamed into place, so a
failed run never leaves a half-written file where a good one was; a cached output is reused only
when its sha256 still matches (a truncated or edited file makes its stage run again, with a
warning), and temporary files left by a killed run are removed when the run starts again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import platform
import re
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from discovery.io import layout
from discovery.io.contract import InputError
from discovery.io.files import atomic_write, json_default, write_json

log = logging.getLogger(__name__)

__all__ = [
    "FAULT_ENV",
    "MANIFEST_SCHEMA_VERSION",
    "RUN_NAME",
    "RunDir",
    "adata_checksum",
    "atomic_write",
    "child_run_dir",
    "config_hash",
    "file_checksum",
    "remove_temp_files",
    "valid_run_name",
]

#: 2: ``files`` (sha256 of every output) added; runs written before are recomputed
MANIFEST_SCHEMA_VERSION = 2
_PACKAGES = ("discovery", "torch", "transformers", "scanpy", "anndata", "numpy", "scipy",
             "pandas", "scikit-learn", "networkx", "safetensors")


#: a run name: one path component of letters, digits, '-', '_' and '.' (not leading)
RUN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


def valid_run_name(name: object) -> bool:
    """Whether ``name`` is a plain run name (:data:`RUN_NAME`, no ``..``)."""
    return isinstance(name, str) and bool(RUN_NAME.fullmatch(name)) and ".." not in name


def child_run_dir(root: str | Path, name: str) -> Path:
    """``root / name`` for a user-given run name, refusing anything that leaves ``root``.

    Raises :class:`InputError` for names with path separators, ``..``, leading dots or other
    characters than letters, digits, ``-``, ``_`` and ``.``.
    """
    if not valid_run_name(name):
        msg = (f"run name {name!r} is not allowed: use up to 100 letters, digits, '-', '_' or "
               "'.' (no '/', no '..', not starting with '.'), e.g. my_cohort-refined")
        raise InputError(msg)
    root = Path(root).resolve()
    path = (root / name).resolve()
    if path.parent != root:
        msg = f"run name {name!r} would write outside {root}; pick a plain name"
        raise InputError(msg)
    return path


def config_hash(config: dict[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True, default=json_default).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_checksum(path: str | Path) -> str:
    """SHA-256 of a file's bytes; of a folder (a 10x matrix folder), over its files' names and
    bytes in name order."""
    h = hashlib.sha256()
    path = Path(path)
    for f in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def adata_checksum(adata: Any) -> str:
    """SHA-256 over an in-memory AnnData's matrix, cell and gene names (its identity as input)."""
    import numpy as np
    import scipy.sparse as sp

    h = hashlib.sha256()
    x = adata.X
    if sp.issparse(x):
        x = x.tocsr()
        for part in (x.data, x.indices, x.indptr):
            h.update(np.ascontiguousarray(part).tobytes())
    else:
        h.update(np.ascontiguousarray(x).tobytes())
    h.update("\0".join(map(str, adata.obs_names)).encode())
    h.update("\0".join(map(str, adata.var_names)).encode())
    return "sha256:" + h.hexdigest()


def code_revision() -> dict[str, Any]:
    """The git revision of the discovery source that runs (``None`` outside a git checkout, e.g.
    an installed wheel: then the package versions identify the code) and whether it has
    uncommitted changes."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5)
        if rev.returncode != 0:
            return {"git_revision": None, "dirty": None}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=5)
        return {"git_revision": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"git_revision": None, "dirty": None}


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


class RunDir:
    """A run directory and its manifest.

    Stages are recorded with :meth:`stage`; a stage whose params hash matches a completed
    record and whose outputs exist is reported by :meth:`is_done` so the pipeline can resume.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest_path = self.path / layout.MANIFEST
        self.manifest: dict[str, Any] = {}
        #: stage -> why its cached outputs were not reused (recorded when it runs again)
        self.invalid: dict[str, str] = {}
        if self.manifest_path.is_file():
            try:
                self.manifest = json.loads(self.manifest_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                log.warning("%s is not valid JSON (%s): it was truncated or edited; every stage "
                            "of this run is recomputed", self.manifest_path, err)
            if not isinstance(self.manifest, dict):
                self.manifest = {}

    # ------------------------------------------------------------------ creation / manifest
    def init(
        self,
        *,
        config: dict[str, Any],
        seed: int,
        input_desc: dict[str, Any],
        parent_run: str | None = None,
    ) -> None:
        """Start (or resume) a run; a changed config or input invalidates recorded stages."""
        is_run = self.manifest_path.is_file()  # a folder of ours, not any folder
        if is_run:
            links = layout.links_out(self.path)
            if links:
                rel, target = links[0]
                msg = (f"{self.path / rel} is a symbolic link to {target}, outside the run "
                       f"directory ({len(links)} such link(s)); a run writes only inside its own "
                       "directory and would overwrite or delete what the link points to. Remove "
                       "the link (or copy the files in) and run again")
                raise InputError(msg)
        self.path.mkdir(parents=True, exist_ok=True)
        removed = remove_temp_files(self.path) if is_run else 0
        if removed:
            log.info("removed %d temporary file(s) left by an interrupted run", removed)
        chash = config_hash(config)
        previous = self.manifest
        keep_stages = (
            previous.get("config_hash") == chash
            and previous.get("input") == input_desc
            and previous.get("schema_version") == MANIFEST_SCHEMA_VERSION
        )
        if previous and not keep_stages:
            log.info("config or input changed since the last run in %s; recomputing", self.path)
        self.manifest = {
            "schema_version": MANIFEST_SCHEMA_VERSION,
            "run_id": previous.get("run_id") if keep_stages else _run_id(chash, input_desc, seed),
            "parent_run": parent_run,
            "created": previous.get("created") if keep_stages else _now(),
            "updated": _now(),
            "config": config,
            "config_hash": chash,
            "input": input_desc,
            "seed": int(seed),
            "packages": package_versions(),
            "code": code_revision(),
            "stages": previous.get("stages", {}) if keep_stages else {},
            "files": previous.get("files", {}) if keep_stages else {},
        }
        self.save()

    @property
    def run_id(self) -> str:
        return self.manifest["run_id"]

    def save(self) -> None:
        self.manifest["updated"] = _now()
        write_json(self.manifest_path, self.manifest)

    # ------------------------------------------------------------------------------ stages
    def is_done(self, name: str, params: dict[str, Any]) -> bool:
        """Whether stage ``name`` finished with these params and every output it wrote is still
        there, byte for byte (sha256 as recorded by the output's last writer). A changed output
        is logged as a warning and makes the stage run again."""
        rec = self.manifest.get("stages", {}).get(name)
        if not rec or rec.get("status") != "done" or rec.get("params_hash") != config_hash(params):
            return False
        files = self.manifest.get("files", {})
        for o in rec.get("outputs", []):
            path = self.path / o
            if not path.is_file() or path.is_symlink():
                why = f"{o} is missing" if not path.exists() else f"{o} is not a plain file"
            elif o not in files:
                why = f"{o} has no recorded checksum"
            elif file_checksum(path) != files[o]:
                why = f"{o} changed since it was written (truncated or edited: sha256 differs)"
            else:
                continue
            log.warning("stage %s: %s; recomputing the stage", name, why)
            self.invalid[name] = why
            return False
        return True

    def record(self, *outputs: str) -> None:
        """Record the current sha256 of outputs rewritten outside a stage (then save)."""
        files = self.manifest.setdefault("files", {})
        for o in outputs:
            files[o] = file_checksum(self.path / o)
        self.save()

    @contextlib.contextmanager
    def stage(self, name: str, params: dict[str, Any]) -> Iterator[list[str]]:
        """Record a stage: yields a list the caller appends output paths (relative) to."""
        outputs: list[str] = []
        rec = {"status": "running", "params": params, "params_hash": config_hash(params),
               "outputs": outputs, "started": _now()}
        if name in self.invalid:
            rec["recomputed_because"] = self.invalid.pop(name)
        self.manifest.setdefault("stages", {})[name] = rec
        self.save()
        t0 = time.perf_counter()
        try:
            yield outputs
        except BaseException as err:
            rec.update(status="failed", error=f"{type(err).__name__}: {err}",
                       seconds=round(time.perf_counter() - t0, 3))
            self.save()
            raise
        _fault_point(name)
        files = self.manifest.setdefault("files", {})
        for o in outputs:  # (a distributed run's other ranks write no model files)
            if (self.path / o).is_file():
                files[o] = file_checksum(self.path / o)
        rec.update(status="done", seconds=round(time.perf_counter() - t0, 3))
        self.save()
        log.info("stage %s done in %.1fs", name, rec["seconds"])

    def file(self, *parts: str) -> Path:
        p = self.path.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


#: names of the temporary files and folders this project writes (atomic_write's mkstemp
#: ``.NAME.XXXXXXXX.tmp``, SAE saves ``.NAME.tmp``, the model's ``.model.tmp``)
_TEMP = re.compile(r"\..+\.tmp")


def remove_temp_files(root: str | Path) -> int:
    """Remove the temporary files and folders a killed run left under the run directory
    ``root`` (names of :data:`_TEMP`); symlinks are not followed. Returns how many were
    removed. Only called on folders that hold a manifest.json (a run directory)."""
    import os
    import shutil

    n = 0
    for folder, dirs, names in os.walk(root, followlinks=False):
        for d in list(dirs):
            p = Path(folder) / d
            if _TEMP.fullmatch(d) and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
                dirs.remove(d)
                n += 1
        for f in names:
            if _TEMP.fullmatch(f):
                (Path(folder) / f).unlink(missing_ok=True)
                n += 1
    return n


#: environment variable for fault-injection tests: ``STAGE`` kills the process (SIGKILL) once the
#: stage has written its outputs, just before it is recorded as done
FAULT_ENV = "DISCOVERY_KILL_AFTER_OUTPUTS"


def _fault_point(stage: str) -> None:
    import os

    if os.environ.get(FAULT_ENV) == stage:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _run_id(chash: str, input_desc: dict[str, Any], seed: int) -> str:
    """Content-addressed: the same config, input and seed give the same run id (so the same
    config and seed give a byte-identical hypotheses.json, wherever the run is written)."""
    content = {k: v for k, v in input_desc.items() if k not in ("path", "metadata")}
    key = json.dumps({"config": chash, "input": content, "seed": int(seed)}, sort_keys=True,
                     default=json_default)
    return "run-" + hashlib.sha256(key.encode()).hexdigest()[:12]
