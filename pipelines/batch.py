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
With two or more finished runs, ``OUT/comparison.json`` and ``OUT/comparison.html`` match their
hypotheses across cohorts (:func:`discovery.tl.cohorts.compare_cohorts`): which programs
replicate in which cohorts, effects side by side, and which appear in one cohort only.
"""

from __future__ import annotations

import html
import json
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

from discovery.io import layout
from discovery.io.contract import InputError
from discovery.io.files import read_json, write_json, write_text
from discovery.tl.cohorts import compare_cohorts
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
        try:
            _write_comparison(root, records)
        except (InputError, KeyError, OSError) as err:  # one unreadable run must not stop the batch
            rec["comparison_error"] = f"{type(err).__name__}: {err}"
        _write_index(root, records, path)
    return records


def _write_comparison(root: Path, records: list[dict[str, Any]]) -> None:
    """comparison.json / .html across the finished runs (two or more)."""
    done = [r for r in records if r["status"] == "done"]
    if len(done) < 2:  # never leave an earlier batch's comparison behind as if it were ours
        for name in ("comparison.json", "comparison.html"):
            (root / name).unlink(missing_ok=True)
        return
    cmp = compare_cohorts({r["name"]: read_json(root / r["dir"] / layout.HYPOTHESES)["hypotheses"]
                           for r in done})
    write_json(root / "comparison.json", cmp)
    n_rep = sum(p["status"] == "replicated" for p in cmp["programs"])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cmp["cohorts"])
    rows = []
    for p in cmp["programs"]:
        cells = []
        for c in cmp["cohorts"]:
            hs = p["cohorts"].get(c, [])
            cells.append("<td>" + "<br/>".join(
                f"<a href='{html.escape(c)}/report.html'>{html.escape(e['id'])}</a> "
                f"{html.escape(e['status'])} · effect {_num(e['donor_effect'])} · q "
                f"{_num(e['donor_q'])}" for e in hs) + "</td>" if hs else "<td>–</td>")
        rows.append(f"<tr><td>{p['id']}</td><td><b>{html.escape(p['status'])}</b></td>"
                    f"<td>{html.escape(str(p['cell_type']))}</td><td>{p['direction']}</td>"
                    f"<td>{html.escape(', '.join(p['shared_genes'] or p['genes'][:5]))}</td>"
                    + "".join(cells) + "</tr>")
    rules = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>"
                    for k, v in cmp["rules"].items())
    write_text(root / "comparison.html",
               "<!doctype html><html><head><meta charset='utf-8'/><title>discovery: programs "
               f"across cohorts</title>{_STYLE}</head><body><h1>Programs across cohorts</h1>"
               f"<p>{n_rep} of {len(cmp['programs'])} programs replicate in two or more of the "
               f"{len(cmp['cohorts'])} cohorts.</p><ul>{rules}</ul><table><tr><th>program</th>"
               "<th>status</th><th>cell type</th><th>direction</th><th>genes (shared)</th>"
               f"{head}</tr>{''.join(rows)}</table><p><a href='index.html'>all runs</a></p>"
               "</body></html>")


def _num(v: Any) -> str:
    return "–" if v is None or v != v else f"{float(v):.2g}"


_STYLE = ("<style>body{font-family:system-ui,sans-serif;margin:2rem}td,th{border:1px "
          "solid #ccc;padding:.3rem .6rem;vertical-align:top}table{border-collapse:collapse}"
          "</style>")


def _write_index(root: Path, records: list[dict[str, Any]], batch_file: Path) -> None:
    write_json(root / "index.json", {
        "schema_version": 1, "batch_file": str(batch_file), "runs": records,
        "comparison": "comparison.json" if (root / "comparison.json").is_file() else None})
    rows = []
    for r in records:
        link = (f"<a href='{html.escape(r['report'])}'>report</a>" if r["status"] == "done"
                else html.escape(r.get("error", "")))
        counts = (f"{r['n_hypotheses']} hypotheses, {r['n_supported']} supported, "
                  f"{r['n_flagged']} flagged" if r["status"] == "done" else "")
        rows.append(f"<tr><td>{html.escape(r['name'])}</td><td>{r['status']}</td>"
                    f"<td>{counts}</td><td>{r['seconds']}</td><td>{link}</td></tr>")
    comparison = ("<p><a href='comparison.html'>Programs across cohorts</a>: which hypotheses "
                  "replicate in which cohorts.</p>" if (root / "comparison.html").is_file()
                  else "")
    write_text(root / "index.html",
               "<!doctype html><html><head><meta charset='utf-8'/><title>discovery batch</title>"
               f"{_STYLE}</head>"
               f"<body><h1>discovery batch: {html.escape(batch_file.name)}</h1>{comparison}<table><tr>"
               "<th>run</th><th>status</th><th>result</th><th>seconds</th><th>report / error"
               f"</th></tr>{''.join(rows)}</table></body></html>")
