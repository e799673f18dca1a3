"""Every cell of a file, chunk by chunk: one process, or a Dask cluster when one is not enough.

The model, the SAEs and the graphs see a donor-stratified sketch of an atlas
(:mod:`discovery.io.sketch`); the donor-level statistics that decide what is ``supported`` must
count every cell. :func:`reduce_chunks` applies a function to every block of rows of ``X`` and
adds up what it returns (arrays, or tuples / dicts of arrays), so a pass over all cells needs
the memory of one chunk plus one accumulator:

- ``engine="serial"``: chunk after chunk in this process;
- ``engine="dask"``: one task per chunk on a Dask cluster — a ``dask.distributed`` local
  cluster of ``workers`` processes by default, or the cluster whose scheduler listens at
  ``scheduler`` (``tcp://host:8786``). Each task opens the file itself and reads its rows, so
  every worker must see the file at the same path (a shared file system). The partial results
  are added on the client as they arrive.

The sum is the same whichever engine runs it: additions of integer-valued float64 counts are
exact, and the function sees the same rows either way.

Files: ``.h5ad`` (and AnnData ``.zarr`` stores) whose ``X`` holds raw counts, CSR or dense.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from discovery.io.contract import InputError

log = logging.getLogger(__name__)

__all__ = ["ENGINES", "Chunks", "add_partials", "dask_client", "read_block", "reduce_chunks",
           "x_encoding"]

ENGINES = ("serial", "dask")


@dataclass(frozen=True)
class Chunks:
    """Row blocks of the ``X`` of one file: ``path``, its ``n_obs`` rows, ``size`` rows a block."""

    path: str
    n_obs: int
    size: int = 50_000

    def bounds(self) -> list[tuple[int, int]]:
        """(first row, row after the last) of every block."""
        return [(a, min(a + self.size, self.n_obs)) for a in range(0, self.n_obs, self.size)]


def _open(path: str) -> Any:
    if Path(path).suffix.lower() == ".zarr" or Path(path).is_dir():
        import zarr

        return zarr.open_group(path, mode="r")
    import h5py

    return h5py.File(path, "r")


def x_encoding(path: str | Path) -> str:
    """How the file stores ``X``: ``csr_matrix``, ``csc_matrix`` or ``array`` (dense)."""
    store = _open(str(path))
    try:
        return str(store["X"].attrs.get("encoding-type", "array"))
    finally:
        if hasattr(store, "close"):
            store.close()


def read_block(path: str, a: int, b: int) -> sp.csr_matrix:
    """Rows ``a:b`` of ``X`` as a float32 CSR matrix, read straight from the file (CSR or
    dense ``X``; CSC is refused: every block would read the whole matrix)."""
    store = _open(path)
    try:
        x = store["X"]
        enc = x.attrs.get("encoding-type", "array")
        if enc == "csr_matrix":
            n_vars = int(x.attrs["shape"][1])
            ptr = np.asarray(x["indptr"][a:b + 1], dtype=np.int64)
            data = np.asarray(x["data"][ptr[0]:ptr[-1]], dtype=np.float32)
            idx = np.asarray(x["indices"][ptr[0]:ptr[-1]], dtype=np.int64)
            return sp.csr_matrix((data, idx, ptr - ptr[0]), shape=(b - a, n_vars))
        if enc == "csc_matrix":
            msg = (f"{path}: X is stored by columns (CSC), which cannot be read a block of "
                   "cells at a time. Write it by rows: `adata.X = adata.X.tocsr(); "
                   "adata.write_h5ad(...)`.")
            raise InputError(msg)
        return sp.csr_matrix(np.asarray(x[a:b], dtype=np.float32))
    finally:
        if hasattr(store, "close"):
            store.close()


def add_partials(a: Any, b: Any) -> Any:
    """Sum of two partial results: arrays add; tuples, lists and dicts add element-wise."""
    if isinstance(a, dict):
        return {k: add_partials(a[k], b[k]) if k in b else a[k] for k in a} | {
            k: v for k, v in b.items() if k not in a}
    if isinstance(a, tuple | list):
        return type(a)(add_partials(x, y) for x, y in zip(a, b, strict=True))
    return a + b


def _apply(fn: Callable[[sp.csr_matrix, int, int], Any], path: str, a: int, b: int) -> Any:
    return fn(read_block(path, a, b), a, b)


@contextmanager
def dask_client(*, scheduler: str | None = None, workers: int = 2) -> Iterator[Any]:
    """A ``dask.distributed`` client: of the scheduler at ``scheduler``, or of a local cluster
    of ``workers`` single-threaded processes (closed on exit)."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as err:  # pragma: no cover - dask is a dependency
        msg = "the dask engine needs dask[distributed]: pip install 'dask[distributed]'"
        raise InputError(msg) from err
    cluster = None
    try:
        if scheduler:
            client = Client(scheduler, timeout="30s")
        else:
            # spawned worker processes (dask's default), never forked: this process runs
            # threads (dask's own event loop, torch's pools), and a child forked while one of
            # them held a lock waits for it forever (seen as a CI run that never ended). A
            # spawned worker imports what it needs (about 3 s, once per run). The dashboard
            # listens on this machine only, on a free port (two runs at once do not collide).
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1,
                                   processes=True, dashboard_address="127.0.0.1:0")
            client = Client(cluster)
            log.info("Dask dashboard of the streamed passes: %s", client.dashboard_link)
    except (OSError, TimeoutError) as err:
        msg = (f"cannot reach the Dask scheduler at {scheduler!r} ({err}). Start one "
               "(`dask scheduler`, then `dask worker ADDRESS` on each machine) or leave "
               "--dask-scheduler out to use a local cluster.")
        raise InputError(msg) from err
    except RuntimeError as err:  # a Nanny that could not start its worker process
        if scheduler:
            raise InputError(f"the Dask scheduler at {scheduler!r} failed: {err}") from err
        msg = (f"could not start a local Dask cluster of {workers} worker processes ({err}). "
               "A script that starts one must guard its top level with "
               "`if __name__ == \"__main__\":` (spawned workers import the script again); "
               "or pass engine='serial' (CLI: --stream-engine serial).")
        raise InputError(msg) from err
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def reduce_chunks(chunks: Chunks, fn: Callable[[sp.csr_matrix, int, int], Any], *,
                  engine: str = "serial", scheduler: str | None = None, workers: int = 2,
                  client: Any = None) -> Any:
    """Sum over every block of ``fn(rows of X, first row, row after the last)``.

    ``fn`` must be picklable for ``engine="dask"`` (a module-level function, or a
    ``functools.partial`` of one). ``client``: a ``dask.distributed`` client to run on (implies
    the dask engine; see :func:`dask_client`); else ``scheduler``, the address of a running Dask
    scheduler (implies the dask engine), else with ``engine="dask"`` a local cluster of
    ``workers`` processes, started and closed here.
    """
    if scheduler or client is not None:
        engine = "dask"
    if engine not in ENGINES:
        msg = f"engine must be one of {', '.join(ENGINES)}, got {engine!r}"
        raise InputError(msg)
    bounds = chunks.bounds()
    if not bounds:
        msg = f"{chunks.path} holds no cells"
        raise InputError(msg)
    if engine == "serial":
        return reduce(add_partials, (_apply(fn, chunks.path, a, b) for a, b in bounds))
    if client is None:
        with dask_client(scheduler=scheduler, workers=workers) as own:
            return reduce_chunks(chunks, fn, client=own)
    from dask.distributed import as_completed

    log.info("streaming %d chunks of %s on %s", len(bounds), chunks.path, client)
    futures = [client.submit(_apply, fn, chunks.path, a, b, pure=False) for a, b in bounds]
    total = None
    for fut in as_completed(futures):
        part = fut.result()
        total = part if total is None else add_partials(total, part)
        fut.release()
    return total
