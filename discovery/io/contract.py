"""The input contract: which AnnData a user may bring, and how it is checked before any work.

An input is an AnnData with raw counts in ``X`` (or ``layers['counts']``) and gene symbols as
``var_names``. The user names the obs columns (:class:`Keys`); :func:`validate` checks every rule
and raises :class:`InputError` with a message that names the problem and the fix. :func:`read`
loads ``.h5ad`` files and counts CSV/TSV + metadata CSV pairs.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from models.configs import check_known
from models.errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "CELL_UNIT_KEY",
    "MIN_CELLS_PER_DONOR",
    "MIN_DONORS_PER_CLASS",
    "POPULATION_KEY",
    "InputError",
    "Keys",
    "case_mask",
    "check_donor_coverage",
    "cell_units",
    "counts_matrix",
    "get_keys",
    "read",
    "standardise",
    "validate",
    "validate_matrix",
]

#: One donor per class in each of train / validation / test.
MIN_DONORS_PER_CLASS = 3

_CONTROL_NAMES = {"control", "ctrl", "healthy", "normal", "nci", "cn", "hc", "0", "false", "no"}


@dataclass(frozen=True)
class Keys:
    """Names of the obs columns the pipeline reads (DESIGN.md, the input contract)."""

    label_key: str = "diagnosis"
    case: str | None = None
    #: None: no donor structure (one sample); every cell is its own unit (obs['cell_unit']),
    #: the split is by cell and statistics are cell-level (see :func:`validate`)
    donor_key: str | None = "donor"
    #: None: one population of all cells (obs['population'])
    cell_type_key: str | None = "cell_type"
    batch_key: str | None = "batch"
    covariate_keys: tuple[str, ...] = ()
    #: filled by :func:`validate`: the label values treated as controls
    controls: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["covariate_keys"] = list(self.covariate_keys)
        d["controls"] = list(self.controls)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Keys:
        d = dict(d)
        d["covariate_keys"] = tuple(d.get("covariate_keys") or ())
        d["controls"] = tuple(d.get("controls") or ())
        check_known(d, cls.__dataclass_fields__, "key settings", error=InputError)
        return cls(**d)


# --------------------------------------------------------------------------------------- reading
def read(
    path: str | Path,
    *,
    metadata: str | Path | None = None,
    genes_in_rows: bool = False,
    labelled: bool = True,
) -> ad.AnnData:
    """Load a cohort.

    ``.h5ad``: an AnnData file. ``.csv``/``.tsv`` (optionally ``.gz``): a counts table with cells
    in rows (``genes_in_rows=True`` for the transpose), first column the cell id, and
    ``metadata``: a CSV/TSV whose first column holds the same cell ids (optional with
    ``labelled=False``, for work that needs no labels: see :func:`validate_matrix`).
    """
    path = Path(path)
    if path.is_dir() or path.suffix.lower() == ".h5":
        return _with_metadata(_read_10x(path), metadata, path, labelled=labelled)
    _check_file(path, "data")
    suffixes = "".join(path.suffixes[-2:]).lower()
    if path.suffix.lower() == ".h5ad":
        try:
            adata = ad.read_h5ad(path)
        except Exception as err:  # h5py / anndata raise many types here
            msg = (
                f"{path} is not a readable AnnData .h5ad file ({type(err).__name__}: {err}). "
                "Write it with `adata.write_h5ad(...)`, or pass a counts CSV with --metadata."
            )
            raise InputError(msg) from err
        adata = standardise(adata)
        if metadata is not None:
            adata.obs = adata.obs.join(_read_table(Path(metadata), "metadata"), rsuffix="_meta")
        return adata
    if any(s in suffixes for s in (".csv", ".tsv", ".txt")):
        if metadata is None and labelled:
            msg = (
                f"{path} is a counts table; its cell metadata (label, donor, cell type) must come "
                "from a second file: pass --metadata META.csv whose first column holds the cell ids."
            )
            raise InputError(msg)
        counts = _read_table(path, "counts")
        if genes_in_rows:
            counts = counts.T
        counts.index = counts.index.astype(str)
        adata = _counts_anndata(counts, pd.DataFrame(index=counts.index), path)
        return _with_metadata(adata, metadata, path, labelled=labelled,
                              hint=" If genes are in rows and cells in columns, pass "
                                   "--genes-in-rows.")
    msg = (f"{path.name}: unknown file type; use .h5ad, a 10x Genomics .h5 or matrix folder "
           "(matrix.mtx.gz, features.tsv.gz, barcodes.tsv.gz) with --metadata, or a counts "
           ".csv/.tsv with --metadata.")
    raise InputError(msg)


def _with_metadata(adata: ad.AnnData, metadata: str | Path | None, path: Path, *,
                   labelled: bool, hint: str = "") -> ad.AnnData:
    """``adata`` (cell ids only in obs) with the rows of the metadata table whose first column
    holds its cell ids; a clear error when cells have no row."""
    if metadata is None:
        if labelled:
            msg = (f"{path} holds counts only; its cell metadata (label, donor, cell type) must "
                   "come from a second file: pass --metadata META.csv whose first column holds "
                   f"the cell ids (here e.g. {list(adata.obs_names[:2])}).")
            raise InputError(msg)
        return adata
    meta = _read_table(Path(metadata), "metadata")
    meta.index = meta.index.astype(str)
    if not meta.index.is_unique:
        dups = meta.index[meta.index.duplicated()].unique().tolist()
        msg = (f"{len(dups)} cell ids occur more than once in the first column of "
               f"{Path(metadata).name} (e.g. {dups[:5]}); each cell needs exactly one metadata "
               "row. Drop the repeated rows.")
        raise InputError(msg)
    ids = adata.obs_names.astype(str)
    missing = ids.difference(meta.index)
    if len(missing) == len(ids):
        msg = (f"none of the {len(ids)} cell ids of {path.name} (e.g. {list(ids[:3])}) are in "
               f"the first column of {Path(metadata).name} (e.g. {list(meta.index[:3])}).{hint}")
        raise InputError(msg)
    if len(missing):
        msg = (f"{len(missing)} cells of {path.name} have no metadata row "
               f"(e.g. {list(missing[:5])}); add them to {Path(metadata).name}.")
        raise InputError(msg)
    adata.obs = meta.loc[ids].copy()
    return adata


def _read_10x(path: Path) -> ad.AnnData:
    """A 10x Genomics Cell Ranger output: a ``filtered_feature_bc_matrix.h5`` file or an MTX
    folder (``matrix.mtx[.gz]``, ``features.tsv[.gz]`` or ``genes.tsv``, ``barcodes.tsv[.gz]``),
    read by scanpy with gene symbols as names (Ensembl ids in ``var['gene_ids']``)."""
    import scanpy as sc

    if not path.exists():
        msg = f"data file not found: {path}. Check the path (relative paths start at {Path.cwd()})."
        raise InputError(msg)
    if path.is_dir():
        have = {p.name for p in path.iterdir()}
        need = [("matrix.mtx", "matrix.mtx.gz"), ("features.tsv", "features.tsv.gz", "genes.tsv"),
                ("barcodes.tsv", "barcodes.tsv.gz")]
        lacking = [" or ".join(opts) for opts in need if not have & set(opts)]
        if lacking:
            msg = (f"folder {path} is not a 10x matrix folder: it lacks {'; '.join(lacking)} "
                   f"(it holds {sorted(have)[:8] or 'nothing'}). Pass the folder Cell Ranger "
                   "wrote (filtered_feature_bc_matrix/), its .h5 file, or an .h5ad.")
            raise InputError(msg)
        reader, what = (lambda: sc.read_10x_mtx(path, var_names="gene_symbols",
                                                make_unique=False, cache=False)), "10x folder"
    else:
        _check_file(path, "data")
        reader, what = (lambda: sc.read_10x_h5(path)), "10x .h5 file"
    try:
        with warnings.catch_warnings():  # duplicated symbols: made unique (and said) later
            warnings.filterwarnings("ignore", message=".*[Vv]ariable names are not unique.*")
            adata = reader()
    except (OSError, KeyError, ValueError, IndexError) as err:
        msg = (f"{path} is not a readable {what} ({type(err).__name__}: {err}). Pass Cell "
               "Ranger's filtered_feature_bc_matrix.h5 or its matrix folder as written.")
        raise InputError(msg) from err
    adata.X = adata.X.astype(np.float32)
    adata.var_names.name = None
    log.info("read %s: %d cells x %d genes", what, adata.n_obs, adata.n_vars)
    return adata


#: ``var`` columns that hold gene symbols when ``var_names`` are Ensembl ids, in the order they
#: are tried (CELLxGENE: ``feature_name``; scanpy's 10x readers: ``gene_symbols``)
SYMBOL_COLUMNS = ("feature_name", "gene_symbols", "gene_symbol", "gene_name", "gene_names",
                  "symbol")
_ENSEMBL_ID = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")


def _integer_valued(mat: Any) -> bool:
    values = mat.data if sp.issparse(mat) else np.asarray(mat).ravel()
    values = values[: 1_000_000]
    return bool(values.size) and bool(np.all(np.equal(np.mod(values, 1), 0)))


def standardise(adata: ad.AnnData) -> ad.AnnData:
    """An AnnData as downloaded (CELLxGENE / SEA-AD schema) brought to the input contract.

    - Raw counts from ``.raw.X`` when ``X`` holds normalised (non-integer) values and there is
      no ``layers['counts']``: the genes become ``.raw``'s (the full panel).
    - Gene symbols as ``var_names`` when they are Ensembl ids, from the first of
      :data:`SYMBOL_COLUMNS` present (ids kept in ``var['gene_id']``; a gene without a symbol
      keeps its id); a warning when ids have no symbol column (results would name ids).

    Returns ``adata`` itself when nothing applies, else a new AnnData (obs kept).
    """
    out = adata
    if ("counts" not in adata.layers and adata.raw is not None
            and not _integer_valued(adata.X) and _integer_valued(adata.raw.X)):
        raw = adata.raw
        var = raw.var.copy()
        for col in SYMBOL_COLUMNS:  # a raw.var without symbols: take X's where it has them
            if col not in var and col in adata.var:
                var[col] = adata.var[col].reindex(var.index)
        out = ad.AnnData(X=raw.X.copy(), obs=adata.obs.copy(), var=var,
                         obsm=dict(adata.obsm), uns=dict(adata.uns))
        log.info("X holds normalised values: raw counts taken from .raw.X (%d genes)",
                 out.n_vars)
    names = pd.Index(out.var_names.astype(str))
    is_id = names.str.match(_ENSEMBL_ID.pattern)
    if is_id.mean() >= 0.5:
        col = next((c for c in SYMBOL_COLUMNS if c in out.var), None)
        if col is None:
            warnings.warn(
                f"var_names are Ensembl ids (e.g. {list(names[:2])}) and var has none of "
                f"{list(SYMBOL_COLUMNS)}: genes will be named by id and the bundled gene sets "
                "(symbols) will not match. Add the symbols, e.g. "
                "adata.var['feature_name'] = <symbols>.", UserWarning, stacklevel=3)
            return out
        symbols = out.var[col].astype(str).str.strip()
        usable = ~symbols.str.lower().isin(["", "nan", "none", "<na>"]).to_numpy()
        if out is adata:
            out = adata.copy()
        out.var["gene_id"] = names.to_numpy()
        out.var_names = pd.Index(np.where(usable, symbols.to_numpy(), names.to_numpy()))
        log.info("gene symbols from var[%r] (Ensembl ids in var['gene_id'])", col)
    return out


def _counts_anndata(counts: pd.DataFrame, obs: pd.DataFrame, path: Path) -> ad.AnnData:
    try:
        values = counts.to_numpy(dtype=np.float32)
    except (TypeError, ValueError) as err:
        msg = (
            f"{path.name} holds non-numeric values ({err}); the table must be cells x genes "
            "counts with the cell id in the first column and gene symbols as the header."
        )
        raise InputError(msg) from err
    return ad.AnnData(X=sp.csr_matrix(values), obs=obs,
                      var=pd.DataFrame(index=counts.columns.astype(str)))


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        msg = f"{what} file not found: {path}. Check the path (relative paths start at {Path.cwd()})."
        raise InputError(msg)
    if path.is_dir():
        msg = f"{what} path {path} is a folder; pass the file itself."
        raise InputError(msg)
    if path.stat().st_size == 0:
        msg = f"{what} file {path} is empty (0 bytes); re-export it."
        raise InputError(msg)


#: delimiters a table may use (a European Excel export writes ';')
_DELIMITERS = ",;\t|"


def _sniff_delimiter(path: Path, default: str) -> str:
    """The delimiter of a text table, from its first lines (gzip read transparently; a UTF-8
    byte-order mark is skipped): the one that splits the header and the next lines into the same
    number (> 1) of fields; ``default`` (from the suffix) when that is ambiguous."""
    import gzip
    import io

    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(1 << 16)
    except (OSError, EOFError):
        return default
    lines = [ln for ln in io.TextIOWrapper(io.BytesIO(head), encoding="utf-8-sig",
                                           errors="replace").read().splitlines()
             if ln.strip()][:6]
    if len(lines) > 2 and len(head) == 1 << 16:
        lines = lines[:-1]  # the last line may be cut
    counts = {d: [line.count(d) for line in lines] for d in _DELIMITERS}
    fits = [d for d, c in counts.items()
            if c and min(c) >= 1 and max(c) - min(c) <= 1]  # header may lack the index name
    if default in fits or not fits:
        return default
    return max(fits, key=lambda d: min(counts[d]))


def _read_table(path: Path, what: str) -> pd.DataFrame:
    _check_file(path, what)
    default = "\t" if ".tsv" in path.suffixes or ".txt" in path.suffixes else ","
    sep = _sniff_delimiter(path, default)
    if sep != default:
        log.info("%s: fields are separated by %r, not %r; reading it that way", path.name, sep,
                 default)
    try:
        table = pd.read_csv(path, sep=sep, index_col=0, encoding="utf-8-sig")
    except pd.errors.EmptyDataError as err:
        msg = f"{what} file {path} has no rows; re-export it."
        raise InputError(msg) from err
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        msg = f"{what} file {path} is not a readable {'TSV' if sep == chr(9) else 'CSV'} ({err})."
        raise InputError(msg) from err
    if table.shape[0] == 0 or table.shape[1] == 0:
        msg = f"{what} file {path} has {table.shape[0]} rows and {table.shape[1]} columns; it is empty."
        raise InputError(msg)
    return table


# ------------------------------------------------------------------------------------ validation
def counts_matrix(adata: ad.AnnData) -> Any:
    """The raw counts: ``layers['counts']`` when present, else ``X``."""
    return adata.layers["counts"] if "counts" in adata.layers else adata.X


def validate(
    adata: ad.AnnData,
    keys: Keys | None = None,
    *,
    require_counts: bool = True,
    min_donors_per_class: int = MIN_DONORS_PER_CLASS,
) -> Keys:
    """Check ``adata`` against the input contract before any work.

    Reads ``obs[label_key, donor_key, cell_type_key, batch_key, *covariate_keys]``, ``X`` or
    ``layers['counts']`` and ``var_names``. Writes ``obs['cell_unit']`` when there is no donor
    key (every cell its own unit) and ``obs['population']`` when there is no cell-type key (one
    population), and makes duplicated gene names unique in place (with a warning); nothing else. Returns the keys with ``case`` and ``controls`` resolved.
    Raises :class:`InputError` naming the problem and the fix.
    """
    keys = keys or Keys()
    _check_not_empty(adata)
    keys = _schema_keys(adata, keys)
    keys = _implicit_keys(adata, keys)

    batch_key = keys.batch_key
    if batch_key == "batch" and "batch" not in adata.obs:
        batch_key = None  # the default batch column is optional
    required = {
        "--label-key": keys.label_key,
        "--donor-key": keys.donor_key,
        "--cell-type-key": keys.cell_type_key,
    }
    if batch_key is not None:
        required["--batch-key"] = batch_key
    for i, cov in enumerate(keys.covariate_keys):
        required[f"--covariate-keys[{i}]"] = cov
    available = ", ".join(map(str, adata.obs.columns)) or "(none)"
    for flag, col in required.items():
        if col not in adata.obs.columns:
            msg = (
                f"obs column {col!r} (given by {flag.split('[')[0]}) is missing. Available obs "
                f"columns: {available}. Pass the right name, e.g. {flag.split('[')[0]} <column>."
            )
            raise InputError(msg)
    for flag, col in required.items():
        n_missing = int(adata.obs[col].isna().sum())
        if n_missing:
            msg = (
                f"obs column {col!r} ({flag.split('[')[0]}) has {n_missing} missing values (NaN); "
                "fill them or drop those cells before running."
            )
            raise InputError(msg)

    case, controls = _resolve_label(adata.obs[keys.label_key], keys)

    labels = adata.obs[keys.label_key].astype(str)
    donors = adata.obs[keys.donor_key].astype(str)
    per_donor = labels.groupby(donors, observed=True).nunique()
    mixed = per_donor.index[per_donor > 1].tolist()
    if mixed:
        msg = (
            f"{len(mixed)} donor(s) carry cells with different {keys.label_key!r} values "
            f"(e.g. {mixed[:5]}); a diagnosis belongs to a donor. Fix the labels, or check that "
            f"--donor-key ({keys.donor_key!r}) names the donor column."
        )
        raise InputError(msg)

    validate_matrix(adata, require_counts=require_counts)

    is_case = labels == case
    donor_case = is_case.groupby(donors, observed=True).first()
    n_case, n_ctrl = int(donor_case.sum()), int((~donor_case).sum())
    if min(n_case, n_ctrl) < min_donors_per_class:
        msg = (
            f"too few donors for a donor-held-out train/validation/test split: found {n_case} "
            f"{case!r} and {n_ctrl} control donors; at least {min_donors_per_class} per class are "
            "needed (one per split). Add donors, or check --donor-key."
        )
        raise InputError(msg)

    resolved = Keys(
        label_key=keys.label_key,
        case=case,
        donor_key=keys.donor_key,
        cell_type_key=keys.cell_type_key,
        batch_key=batch_key,
        covariate_keys=tuple(keys.covariate_keys),
        controls=tuple(controls),
    )
    log.info(
        "input valid: %d cells x %d genes, %d %s donors, %d control donors",
        adata.n_obs, adata.n_vars, n_case, case, n_ctrl,
    )
    return resolved


#: obs columns written when the donor / cell-type key is None
CELL_UNIT_KEY, POPULATION_KEY = "cell_unit", "population"


def cell_units(keys: Keys) -> bool:
    """Whether the run has no donor structure (every cell is its own statistical unit)."""
    return keys.donor_key == CELL_UNIT_KEY


#: obs columns of the CELLxGENE schema read when a default key's column is missing
SCHEMA_KEYS = {"label_key": ("diagnosis", "disease"), "donor_key": ("donor", "donor_id")}


def _schema_keys(adata: ad.AnnData, keys: Keys) -> Keys:
    """A CELLxGENE-schema file names its label ``disease`` and its donors ``donor_id``: used,
    with a warning, when the default key's column is missing and the schema's is present."""
    changes: dict[str, str] = {}
    for name, (default, schema) in SCHEMA_KEYS.items():
        if (getattr(keys, name) == default and default not in adata.obs
                and schema in adata.obs):
            changes[name] = schema
            flag = "--" + name.replace("_", "-")
            warnings.warn(f"obs has no {default!r} column: using {schema!r} (the CELLxGENE "
                          f"schema's) for {flag}; pass {flag} to choose another.",
                          UserWarning, stacklevel=3)
    return replace(keys, **changes) if changes else keys


def _implicit_keys(adata: ad.AnnData, keys: Keys) -> Keys:
    """Stand-in columns for a missing donor or cell-type key (written to ``obs``, with a
    warning that says what it means for the statistics)."""
    changes: dict[str, str] = {}
    if keys.donor_key is None:
        warnings.warn(
            "no donor key: every cell is treated as its own unit (obs['cell_unit']). The "
            "train/validation/test split is by cell, 'donor-level' statistics are cell-level, "
            "and no hypothesis can be 'supported' (that needs independent donors). Results "
            "describe this sample only.", UserWarning, stacklevel=3)
        adata.obs[CELL_UNIT_KEY] = adata.obs_names.astype(str)
        changes["donor_key"] = CELL_UNIT_KEY
    if keys.cell_type_key is None:
        adata.obs[POPULATION_KEY] = pd.Categorical(["all cells"] * adata.n_obs)
        changes["cell_type_key"] = POPULATION_KEY
    return replace(keys, **changes) if changes else keys


#: label strings that mean "no value" (written by pandas, R or a spreadsheet)
_MISSING_NAMES = frozenset({"none", "nan", "na", "n/a", "null", "<na>", ""})


def _resolve_label(label: pd.Series, keys: Keys) -> tuple[str, list[str]]:
    if pd.api.types.is_float_dtype(label) and label.nunique() > 2:
        msg = (
            f"obs[{keys.label_key!r}] holds {label.nunique()} distinct floating-point values "
            f"(e.g. {label.unique()[:3].tolist()}); it looks like a measurement, not a case/control "
            "label. Pass the column that holds the diagnosis with --label-key, or derive a "
            "two-group label from it first."
        )
        raise InputError(msg)
    values = sorted(label.astype(str).unique().tolist())
    missing = [v for v in values if v.strip().lower() in _MISSING_NAMES]
    if missing:
        n = int(label.astype(str).isin(missing).sum())
        msg = (
            f"obs[{keys.label_key!r}] holds {missing} for {n} cells: a missing diagnosis written "
            "as text, which would silently count those donors as controls. Fill in their "
            "diagnosis or drop those cells before running."
        )
        raise InputError(msg)
    spelled: dict[str, list[str]] = {}
    for v in values:
        spelled.setdefault(v.strip().casefold(), []).append(v)
    clashes = [vs for vs in spelled.values() if len(vs) > 1]
    if clashes:
        msg = (
            f"obs[{keys.label_key!r}] spells one label in more than one way: "
            f"{'; '.join(' / '.join(repr(v) for v in vs) for vs in clashes)} (they differ only "
            "in upper/lower case or spaces), so some donors of one group would be counted in "
            "the other. Make the spelling consistent, e.g. "
            f"adata.obs[{keys.label_key!r}] = adata.obs[{keys.label_key!r}].str.strip()"
            f".replace({{{clashes[0][1]!r}: {clashes[0][0]!r}}})."
        )
        raise InputError(msg)
    if len(values) < 2:
        msg = (
            f"obs[{keys.label_key!r}] has one class only ({values[0]!r}); a case/control "
            "comparison needs both. Add the other group, or pick another --label-key."
        )
        raise InputError(msg)
    if keys.case is not None:
        if str(keys.case) not in values:
            msg = (
                f"--case {keys.case!r} is not a value of obs[{keys.label_key!r}]; its values "
                f"are {values}."
            )
            raise InputError(msg)
        case = str(keys.case)
    elif len(values) > 2:
        msg = (
            f"obs[{keys.label_key!r}] has {len(values)} values {values}; name the case value with "
            "--case (all other values become controls)."
        )
        raise InputError(msg)
    else:
        controls = [v for v in values if v.lower() in _CONTROL_NAMES]
        if len(controls) != 1:
            msg = (
                f"cannot tell which of {values} in obs[{keys.label_key!r}] is the case; "
                f"pass --case, e.g. --case {values[0]}."
            )
            raise InputError(msg)
        case = next(v for v in values if v != controls[0])
    return case, [v for v in values if v != case]


def validate_matrix(adata: ad.AnnData, *, require_counts: bool = True) -> None:
    """The parts of the contract that need no labels: a non-empty numeric matrix (raw counts
    when ``require_counts``), unique cell ids; duplicated gene names are made unique in place
    (with a warning). Used alone for unlabelled data (QC, normalisation, gene selection, scoring
    with a trained model); :func:`validate` calls it too."""
    _check_not_empty(adata)
    _check_gene_names(adata)
    _check_matrix(adata, require_counts=require_counts)
    if not adata.obs_names.is_unique:
        dups = adata.obs_names[adata.obs_names.duplicated()].unique().tolist()
        msg = (
            f"{len(dups)} cell ids occur more than once in obs_names (e.g. {dups[:5]}). If the "
            "same cells were concatenated twice, drop the copies; if they are different cells "
            "(e.g. barcodes from several samples), make the ids unique first, e.g. "
            "`adata.obs_names_make_unique()` or prefix each barcode with its sample."
        )
        raise InputError(msg)
    if not adata.var_names.is_unique:
        dups = adata.var_names[adata.var_names.duplicated()].unique().tolist()
        warnings.warn(
            f"{len(dups)} duplicated gene names (e.g. {dups[:5]}) were made unique by appending "
            "'-1', '-2', ...",
            UserWarning,
            stacklevel=3,
        )
        adata.var_names_make_unique()


#: a gene name on more columns than this is a placeholder (``NA``, ``---``), not a gene
MAX_NAME_COPIES = 10
#: the largest plausible raw count of one gene in one cell (UMI counts rarely pass 1e5)
MAX_PLAUSIBLE_COUNT = 1e6
#: the largest plausible log-normalised value (log1p of 1e4-scaled counts stays below ~10)
MAX_PLAUSIBLE_LOG = 30.0


def _check_gene_names(adata: ad.AnnData) -> None:
    """Gene names a table export can break: all numbers (no header row) or all empty are
    refused; empty names are renamed ``unnamed_gene_<column>`` and a name on more than
    :data:`MAX_NAME_COPIES` columns (a placeholder) is dropped, each with a warning."""
    names = pd.Index(adata.var_names.astype(str))
    stripped = names.str.strip()
    empty = np.asarray(stripped.isin(["", "nan", "NaN", "<NA>"]))
    numeric = np.asarray(stripped.str.fullmatch(r"[-+]?\d+(\.\d+)?")) & ~empty
    # 0, 1, 2, ... (or 0.1-style mangling): a position, not a gene id (Entrez ids are numbers
    # too, but not consecutive from 0)
    positions = bool(numeric.all()) and np.array_equal(
        np.asarray(pd.to_numeric(stripped, errors="coerce"), dtype=float),
        np.arange(len(names), dtype=float))
    if empty.all() or positions:
        kind = "empty" if empty.all() else "column positions (0, 1, 2, ...)"
        msg = (f"the gene names are all {kind} (e.g. {list(names[:3])}): the header row with "
               "the gene names is missing, or a table has genes in rows and cells in columns "
               "(pass --genes-in-rows). Give var_names the gene symbols or ids.")
        raise InputError(msg)
    if empty.any():
        where = np.flatnonzero(empty)
        adata.var_names = [f"unnamed_gene_{i}" if e else n
                           for i, (e, n) in enumerate(zip(empty, names))]
        warnings.warn(
            f"{empty.sum()} genes have no name (columns {where[:5].tolist()}...); they are kept as "
            "'unnamed_gene_<column>'. Fill in var_names to interpret them.",
            UserWarning, stacklevel=4)
    if numeric.any():
        warnings.warn(
            f"{numeric.sum()} gene names are plain numbers (e.g. {list(names[numeric][:3])}); "
            "they are kept as they are (Entrez ids are numbers; gene sets and reports match "
            "symbols). Check the export if they should be symbols: a shifted header or a "
            "spreadsheet that turned names into numbers gives such names.",
            UserWarning, stacklevel=4)
    copies = pd.Index(adata.var_names).value_counts()
    placeholder = copies[copies > MAX_NAME_COPIES]
    if len(placeholder):
        drop = np.asarray(pd.Index(adata.var_names).isin(placeholder.index))
        if drop.all():
            msg = (f"every gene name is one of {list(placeholder.index[:3])}, repeated "
                   f"{int(placeholder.iloc[0])} times: the gene names are missing")
            raise InputError(msg)
        shown = ", ".join(f"{n!r} x {int(c)}" for n, c in placeholder.head(3).items())
        warnings.warn(
            f"{drop.sum()} of {adata.n_vars} columns share a name used more than "
            f"{MAX_NAME_COPIES} times ({shown}): a placeholder, not a gene, so they were "
            "dropped (kept, their copies would fill the gene panel). Give those columns their "
            "real names (e.g. from a var column of gene ids) to keep them.",
            UserWarning, stacklevel=4)
        adata._inplace_subset_var(~drop)


def _check_not_empty(adata: ad.AnnData) -> None:
    if adata.n_obs == 0 or adata.n_vars == 0:
        msg = f"the data is empty ({adata.n_obs} cells x {adata.n_vars} genes); nothing to analyse."
        raise InputError(msg)


def _check_matrix(adata: ad.AnnData, *, require_counts: bool) -> None:
    where = "layers['counts']" if "counts" in adata.layers else "X"
    mat = counts_matrix(adata)
    values = mat.data if sp.issparse(mat) else np.asarray(mat)
    if not np.issubdtype(values.dtype, np.number):
        msg = f"{where} has dtype {values.dtype}; expression must be numeric."
        raise InputError(msg)
    finite = np.isfinite(values)
    if not finite.all():
        n_bad = int((~finite).sum())
        msg = (
            f"{where} holds {n_bad} NaN/Inf values; counts must be finite. Replace them "
            "(e.g. with 0 for unobserved) or drop the affected cells/genes."
        )
        raise InputError(msg)
    if values.size == 0 or not np.any(values):
        msg = (
            f"{where} holds no signal: every value is 0. Check that the right matrix was "
            "exported (e.g. counts in X or layers['counts'], not an empty placeholder)."
        )
        raise InputError(msg)
    if not require_counts and (values < 0).any():
        msg = (
            f"{where} holds negative values (min {values.min():.3g}): it looks scaled "
            "(z-scores), which the log-normalised input mode cannot use. Pass the log-normalised "
            "matrix instead (e.g. `adata.raw.to_adata()` when X was scaled), or raw counts."
        )
        raise InputError(msg)
    top = float(values.max())
    limit = MAX_PLAUSIBLE_COUNT if require_counts else MAX_PLAUSIBLE_LOG
    if top > limit:
        warnings.warn(
            f"{where} holds values up to {top:.3g} ({int((values > limit).sum())} above "
            f"{limit:g}), implausible for "
            f"{'raw counts of one gene in one cell' if require_counts else 'log-normalised data'}."
            " The analysis treats them as given; check that the right matrix was exported "
            "(not values scaled by 1e6, not an overflow).", UserWarning, stacklevel=4)
    if require_counts:
        if (values < 0).any():
            msg = (
                f"{where} holds negative values (min {values.min():.3g}); raw counts are needed. "
                "If X is log-normalised or scaled, put the raw counts in layers['counts']."
            )
            raise InputError(msg)
        if not np.all(np.equal(np.mod(values, 1), 0)):
            msg = (
                f"{where} holds non-integer values (e.g. {values[np.mod(values, 1) != 0][:3]}); "
                "raw counts are needed. If X is normalised, put the raw counts in "
                "layers['counts'] (e.g. from adata.raw or the count matrix you started from)."
            )
            raise InputError(msg)


# --------------------------------------------------------------------------------------- helpers
#: fewest cells of a donor in a cell type for its pseudobulk to count in donor-level statistics
MIN_CELLS_PER_DONOR = 10


def check_donor_coverage(adata: ad.AnnData, keys: Keys, *,
                         min_cells: int = MIN_CELLS_PER_DONOR) -> dict[str, dict[str, int]]:
    """Donor-level statistics need cells: per cell type, the donors of each class with at
    least ``min_cells`` cells there. Raises :class:`InputError` (before any work is written)
    when no cell type has two such donors in each class — every donor-level test, baseline
    and replication would be empty. Returns ``{cell type: {"case": n, "control": n}}``.
    """
    if keys.donor_key in (None, CELL_UNIT_KEY):
        return {}  # no donors: statistics are cell-level (see :func:`validate`)
    ct = (adata.obs[keys.cell_type_key].astype(str) if keys.cell_type_key
          else pd.Series("all", index=adata.obs_names))
    frame = pd.DataFrame({"donor": adata.obs[keys.donor_key].astype(str).to_numpy(),
                          "ct": ct.to_numpy(), "case": case_mask(adata, keys)})
    n = frame.groupby(["ct", "donor"], observed=True).agg(cells=("case", "size"),
                                                         case=("case", "first"))
    per_donor = frame["donor"].value_counts()
    few = per_donor[per_donor < min_cells].sort_values()
    if len(few):
        shown = ", ".join(f"{d} ({c} cell{'s' if c != 1 else ''})" for d, c in few.head(5).items())
        warnings.warn(
            f"{len(few)} of {len(per_donor)} donors have fewer than {min_cells} cells in all "
            f"({shown}); their pseudobulk profiles are too noisy to count in donor-level "
            "statistics (groups under that size are skipped), so they add almost nothing. Check "
            "the donor column, or drop those donors.", UserWarning, stacklevel=2)
    ok = n[n["cells"] >= min_cells].reset_index()
    cover = {c: {"case": int(g["case"].sum()), "control": int((~g["case"]).sum())}
             for c, g in ok.groupby("ct")}
    if not any(min(v.values()) >= 2 for v in cover.values()):
        most = int(n["cells"].max()) if len(n) else 0
        msg = (f"too few cells per donor and cell type for donor-level statistics: no cell type "
               f"has 2 case and 2 control donors with >= {min_cells} cells there (the largest "
               f"donor x cell type group holds {most} cells). Add cells, or use coarser cell "
               f"types (--cell-type-key with broader labels) so that each donor has >= "
               f"{min_cells} cells in a cell type.")
        raise InputError(msg)
    return cover


def get_keys(adata: ad.AnnData) -> Keys:
    """The validated keys stored by :func:`discovery.pp.preprocess`."""
    try:
        raw = adata.uns["discovery"]["keys"]
    except KeyError as err:
        msg = (
            "adata has no validated keys in uns['discovery']['keys']; run "
            "`discovery.pp.preprocess(adata, keys)` first."
        )
        raise InputError(msg) from err
    # stored as a JSON string: h5ad turns lists into arrays and cannot hold None
    return Keys.from_dict(json.loads(raw) if isinstance(raw, str) else dict(raw))


def case_mask(adata: ad.AnnData | pd.DataFrame, keys: Keys | None = None) -> np.ndarray:
    """Boolean per cell: ``True`` where the label equals the case value.

    ``adata`` may also be an ``obs`` table (a file's cells read without their matrix); then
    ``keys`` is required."""
    if isinstance(adata, pd.DataFrame):
        if keys is None:
            msg = "case_mask of an obs table needs its keys (the label column and case value)"
            raise TypeError(msg)
        obs = adata
    else:
        keys = keys or get_keys(adata)
        obs = adata.obs
    return (obs[keys.label_key].astype(str) == str(keys.case)).to_numpy()
