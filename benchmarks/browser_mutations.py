"""Does the browser test fail when the app is broken? A mutation check, run before each release.

    .venv/bin/python benchmarks/browser_mutations.py      # writes benchmarks/results/browser_mutations.md

Each mutation copies the project's tracked files to a temporary folder, breaks one thing the
browser test (`tests/test_browser.py`) is meant to guard, and runs that test there with Debian's
Chromium. The unmutated copy must pass; every mutation must make it fail. Exit code 1 when a
mutation survives (the test would not have noticed the bug).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "browser_mutations.md"

#: name -> (file, text to find, replacement); None = the unmutated baseline
MUTATIONS: dict[str, tuple[str, str, str] | None] = {
    "none (baseline)": None,
    "graph drawn empty": ("app_pages/components.py", "sel = cytoscape(elements,",
                          "sel = cytoscape([],"),
    "rationale chain removed": ("app_pages/plan.py",
                                "st.markdown(f\"**{i}. {step['step']}** — {step['claim']}\")",
                                "pass"),
    "node click shows nothing": ("app_pages/plan.py", "node_details(g, selected[0])", "pass"),
    "graph path drops the refs' outline": ("app_pages/components.py",
                                           '"classes": "ref" if n in highlight else ""',
                                           '"classes": ""'),
    "plan's artifact warning removed": ("app_pages/plan.py",
                                        'st.warning(w, icon=":material/warning:")', "pass"),
    "hypothesis -> feature link loses its target": ("app_pages/hypotheses.py",
                                                    'query_params={"feature": r["feature"]})',
                                                    "query_params={})"),
    "feature's donors not shown": ("app_pages/features.py",
                                   "_donor_panel(adata, act, fid, where)", "pass"),
    "feedback not shown on the plan": ("app_pages/plan.py", "feedback_notes(run, [(",
                                       "(lambda *a: 0)(run, [("),
    "cancel leaves the half-written run": ("pipelines/jobs.py",
                                           "    shutil.rmtree(run_dir, ignore_errors=True)\n"
                                           '    log.info("refine job %d cancelled',
                                           '    log.info("refine job %d cancelled'),
}


def _copy(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for f in files:
        src, dst = ROOT / f, dest / f
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())


def run_one(name: str, mutation: tuple[str, str, str] | None) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
        tmp = Path(tmp)
        _copy(tmp)
        if mutation is not None:
            path, find, replace = mutation
            text = (tmp / path).read_text()
            if find not in text:
                msg = f"mutation {name!r}: {find!r} not found in {path} (update the script)"
                raise SystemExit(msg)
            (tmp / path).write_text(text.replace(find, replace, 1))
        env = {**os.environ, "PYTHONPATH": str(tmp), "TQDM_DISABLE": "1"}
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                              "tests/test_browser.py"], cwd=tmp, env=env, capture_output=True,
                             text=True, check=False)
        tail = [ln for ln in res.stdout.splitlines() if ln.startswith(("E ", "FAILED", "SKIPPED"))
                or " passed" in ln or " failed" in ln or " skipped" in ln]
    why = next((ln[2:].strip() for ln in tail if ln.startswith("E ")), tail[-1] if tail else "")
    # caught = a test ran and failed on an assertion or a wait; a copy that cannot even import
    # or collect (a file missing from git, a syntax error) tests nothing
    broken = res.returncode not in (0, 1) or re.search(
        r"ModuleNotFoundError|ImportError|SyntaxError|error(s)? during collection|no tests ran",
        res.stdout + res.stderr) is not None
    return {"mutation": name, "rc": res.returncode, "broken": broken,
            "seconds": round(time.perf_counter() - t0), "why": why[:140]}


def main() -> int:
    rows = [run_one(name, m) for name, m in MUTATIONS.items()]
    lines = ["# Browser test mutation check", "",
             f"Command: `.venv/bin/python {Path(__file__).relative_to(ROOT)}` (written by the "
             "script; do not edit by hand).", "",
             "Each mutation breaks one thing in a copy of the project and runs "
             "`tests/test_browser.py` there. The baseline must pass and every mutation must "
             "fail.", "",
             "| mutation | test result | expected | first assertion that failed |",
             "|---|---|---|---|"]
    survived = []
    for r in rows:
        baseline = r["mutation"] == "none (baseline)"
        result = ("error (the copy did not run)" if r["broken"] else
                  "passed" if r["rc"] == 0 else "failed")
        ok = not r["broken"] and ((r["rc"] == 0) if baseline else (r["rc"] != 0))
        if not ok:
            survived.append(r["mutation"])
        why = str(r["why"]).replace("|", "/") if r["rc"] else ""
        lines.append(f"| {r['mutation']} | {result} | {'pass' if baseline else 'fail'} | "
                     f"{why} |")
    lines += ["", "Every mutation caught." if not survived else
              f"NOT caught (or the copy did not run): {', '.join(survived)}."]
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
