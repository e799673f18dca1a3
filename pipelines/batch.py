"""``discovery batch CONFIG``: many cohorts or configurations, one run directory each.

The batch file (YAML or JSON)::

    out: runs/batch                 # root folder; each run goes to OUT/<name>
    defaults:                       # pipeline config applied to every run (optional)
      preset: quick
    runs:
      - name: ad_seed0              # required, unique: letters, digits, - and _
        scenario: alzheimers        # a simulated cohort (without data) ...
        seed: 0
      - name: my_cohort
        data: cohorts/my.h5ad       # ... or a file (paths relative to the batch file)
        keys: {label_key: status, case: AD, donor_key: subject}
        config: {model: {kind: transformer}}

A run that fails is recorded (its error message) and the others go on; its directory keeps
whatever earlier stages finished, and no other run's files are touched. ``OUT/index.html``
(self-contained) and ``OUT/index.json`` list every run with its status and a link to its report.
"""

from __future__ import annotations

import html
import json
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

from discovery.io.contract import InputError
from discovery.io.files import write_json, write_text
from pipelines.config import load_config, merge_overrides
from pipelines.rundir import child_run_dir, valid_run_name

__all__ = ["run_batch"]



def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        msg = f"batch file not found: {path}"
        raise InputError(msg)
    try:
        spec = (json.loads(path.read_text()) if path.suffix == ".json"
                else yaml.safe_load(path.read_text()))
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        msg = f"batch file {path} is not valid YAML/JSON: {err}"
        raise InputError(msg) from err
    if not isinstance(spec, dict) or not isinstance(spec.get("runs"), list) or not spec["runs"]:
        msg = f"batch file {path} needs a non-empty 'runs' list (see `discovery batch --help`)"
        raise InputError(msg)
    names = []
    for i, r in enumerate(spec["runs"]):
        if not isinstance(r, dict) or not valid_run_name(r.get("name")):
            msg = (f"run #{i + 1} in {path} needs a 'name' made of letters, digits, '-', '_' "
                   f"or '.' (got {r.get('name') if isinstance(r, dict) else r!r})")
            raise InputError(msg)
        unknown = set(r) - {"name", "scenario", "seed", "data", "metadata", "keys", "config"}
        if unknown:
            msg = f"run {r['name']!r}: unknown field(s) {sorted(unknown)}"
            raise InputError(msg)
        names.append(r["name"])
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        msg = f"run names must be unique; repeated: {sorted(dup)}"
        raise InputError(msg)
    return spec


def run_batch(batch_file: str | Path, *, out: str | Path | None = None,
              quiet: bool = False) -> list[dict[str, Any]]:
    """Run every entry of ``batch_file``; returns one status record per run (also in index.json)."""
    from pipelines.run import run_pipeline

    path = Path(batch_file)
    spec = _load(path)
    root = Path(out or spec.get("out") or path.with_suffix(""))
    if not root.is_absolute() and out is None and spec.get("out"):
        root = path.parent / root
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for r in spec["runs"]:
        t0 = time.perf_counter()
        rec: dict[str, Any] = {"name": r["name"], "dir": r["name"]}
        try:
            overrides = merge_overrides(dict(spec.get("defaults") or {}), dict(r.get("config") or {}))
            if "scenario" in r:
                overrides = merge_overrides(overrides, {"cohort": {"scenario": r["scenario"]}})
            if "seed" in r:
                overrides = merge_overrides(overrides, {"seed": int(r["seed"]),
                                               "cohort": {"seed": int(r["seed"])}})
            if "keys" in r:
                overrides = merge_overrides(overrides, {"keys": r["keys"]})
            preset = overrides.pop("preset", None)
            config = load_config(preset=preset, overrides=overrides)
            data = r.get("data")
            meta = r.get("metadata")
            res = run_pipeline(child_run_dir(root, r["name"]),
                               data=(path.parent / data) if data else None,
                               metadata=(path.parent / meta) if meta else None,
                               config=config, quiet=quiet)
            hyps = (res.hypotheses or {}).get("hypotheses", [])
            rec.update(status="done", report=f"{r['name']}/report.html",
                       n_hypotheses=len(hyps),
                       n_supported=sum(h["status"] == "supported" for h in hyps),
                       n_flagged=sum(h["status"] == "flagged" for h in hyps))
        except Exception as err:  # noqa: BLE001 - one failing cohort must not stop the others
            rec.update(status="failed", error=f"{type(err).__name__}: {err}",
                       traceback=traceback.format_exc(limit=5))
        rec["seconds"] = round(time.perf_counter() - t0, 1)
        records.append(rec)
        _write_index(root, records, path)
    return records


def _write_index(root: Path, records: list[dict[str, Any]], batch_file: Path) -> None:
    write_json(root / "index.json", {"schema_version": 1, "batch_file": str(batch_file),
                                     "runs": records})
    rows = []
    for r in records:
        link = (f"<a href='{html.escape(r['report'])}'>report</a>" if r["status"] == "done"
                else html.escape(r.get("error", "")))
        counts = (f"{r['n_hypotheses']} hypotheses, {r['n_supported']} supported, "
                  f"{r['n_flagged']} flagged" if r["status"] == "done" else "")
        rows.append(f"<tr><td>{html.escape(r['name'])}</td><td>{r['status']}</td>"
                    f"<td>{counts}</td><td>{r['seconds']}</td><td>{link}</td></tr>")
    write_text(root / "index.html",
               "<!doctype html><html><head><meta charset='utf-8'/><title>discovery batch</title>"
               "<style>body{font-family:system-ui,sans-serif;margin:2rem}td,th{border:1px "
               "solid #ccc;padding:.3rem .6rem}table{border-collapse:collapse}</style></head>"
               f"<body><h1>discovery batch: {html.escape(batch_file.name)}</h1><table><tr>"
               "<th>run</th><th>status</th><th>result</th><th>seconds</th><th>report / error"
               f"</th></tr>{''.join(rows)}</table></body></html>")
