"""Long runs as background jobs: a child process with its own log, progress read from the run's
manifest, cancel, and a state the run picker can trust.

A job writes ``RUN_DIR/job.json`` before it starts (the command, its process id, the log file
``RUN_DIR/job.log``); the process runs in its own session, so it outlives the browser tab and
the app that started it. :func:`job_state` says ``running`` (process alive), ``done`` (the run's
``report`` stage finished), ``failed`` (the process ended without it; the log says why) or
``cancelled``. :func:`cancel` stops the process group and removes the half-written run, keeping
``job.json`` and the log in a ``.cancelled`` file beside it so the picker never shows it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from discovery.io import layout
from discovery.io.contract import InputError
from discovery.io.files import write_json

log = logging.getLogger(__name__)

__all__ = ["JOB_FILE", "JOB_LOG", "cancel", "job_state", "progress", "run_state",
           "start_refine"]

JOB_FILE, JOB_LOG = "job.json", "job.log"
#: the stages of a child run, in order (refine writes these)
CHILD_STAGES = ("model", "features", "graphs", "hypotheses", "report")


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # our own child: reap it when it has ended
        if done == pid:
            return False
    except ChildProcessError:
        pass  # started by another process (the CLI, an earlier app): not ours to reap
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_refine(parent: str | Path, child: str | Path, *, mode: str = "ablate",
                 covariate: str | None = None, only_named: bool = False) -> dict[str, Any]:
    """Start ``discovery refine PARENT --out CHILD --mode MODE`` as a background job; returns
    its ``job.json`` record. Refuses a child folder that already holds a run or a job."""
    parent, child = Path(parent), Path(child)
    if (child / layout.MANIFEST).exists() or (child / JOB_FILE).exists():
        msg = f"{child} already holds a run or a job; pick another name for the child run"
        raise InputError(msg)
    child.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pipelines.cli", "refine", str(parent), "--out", str(child),
           "--mode", mode, "--quiet"]
    if covariate:
        cmd += ["--covariate", covariate]
    if only_named:
        cmd.append("--only-named")
    logf = (child / JOB_LOG).open("ab")
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=os.getcwd())
    logf.close()
    rec = {"kind": "refine", "pid": proc.pid, "command": cmd, "parent": str(parent),
           "mode": mode, "started": datetime.now(UTC).isoformat(timespec="seconds"),
           "started_unix": time.time(), "log": JOB_LOG}
    write_json(child / JOB_FILE, rec)
    log.info("refine job %d started: %s", proc.pid, " ".join(cmd))
    return rec


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def job_state(run_dir: str | Path) -> str | None:
    """``running`` | ``done`` | ``failed`` | ``cancelled`` for a run started as a job; None for
    a run with no job file (a run made in the foreground)."""
    run_dir = Path(run_dir)
    job = _read(run_dir / JOB_FILE)
    if job is None:
        return None
    if job.get("state") in ("cancelled", "failed", "done"):
        return job["state"]
    manifest = _read(run_dir / layout.MANIFEST) or {}
    if (manifest.get("stages", {}).get("report", {}).get("status") == "done"
            and not _alive(int(job["pid"]))):
        return "done"
    return "running" if _alive(int(job["pid"])) else "failed"


def run_state(run_dir: str | Path) -> str:
    """What the run picker shows: ``complete`` (every stage that ran finished, a report was
    written), ``running`` / ``failed`` (a job), or ``incomplete`` (a foreground run that
    stopped)."""
    state = job_state(run_dir)
    if state in ("running", "failed", "cancelled"):
        return state
    manifest = _read(Path(run_dir) / layout.MANIFEST) or {}
    report = manifest.get("stages", {}).get("report", {})
    return "complete" if report.get("status") == "done" else "incomplete"


def progress(run_dir: str | Path) -> dict[str, Any]:
    """Where a job stands: each child stage's status and seconds, the share done, an estimate
    of the seconds left (the parent's own time for the stages not yet done; 1.5x for a
    retrain's model), and the last lines of its log."""
    run_dir = Path(run_dir)
    job = _read(run_dir / JOB_FILE) or {}
    stages = (_read(run_dir / layout.MANIFEST) or {}).get("stages", {})
    parent = (_read(Path(job.get("parent", "")) / layout.MANIFEST) or {}).get("stages", {}) \
        if job.get("parent") else {}
    rows, left = [], 0.0
    for name in CHILD_STAGES:
        rec = stages.get(name, {})
        status = rec.get("status", "waiting")
        ref = float(parent.get(name, {}).get("seconds") or 0.0)
        if name == "model" and job.get("mode") in ("finetune", "retrain"):
            ref *= 1.5
        if status != "done":
            left += ref
        rows.append({"stage": name, "status": status, "seconds": rec.get("seconds")})
    done = sum(r["status"] == "done" for r in rows)
    log_path = run_dir / JOB_LOG
    tail = log_path.read_text(errors="replace").splitlines()[-15:] if log_path.is_file() else []
    return {"state": job_state(run_dir), "stages": rows, "fraction": done / len(rows),
            "seconds_left": round(left, 1),
            "elapsed": round(time.time() - float(job.get("started_unix", time.time())), 1),
            "log_tail": tail}


def cancel(run_dir: str | Path, *, timeout: float = 10.0) -> bool:
    """Stop a running job (SIGTERM to its process group, SIGKILL after ``timeout`` s) and remove
    its half-written run; ``job.json`` and the log are kept as ``RUN_DIR.cancelled.json`` and
    ``RUN_DIR.cancelled.log`` beside it. Returns whether a job was stopped."""
    run_dir = Path(run_dir)
    job = _read(run_dir / JOB_FILE)
    if job is None or job_state(run_dir) != "running":
        return False
    pid = int(job["pid"])
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    end = time.time() + timeout
    while _alive(pid) and time.time() < end:
        time.sleep(0.1)
    if _alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while _alive(pid) and time.time() < end + timeout:
            time.sleep(0.1)
    job.update(state="cancelled", cancelled=datetime.now(UTC).isoformat(timespec="seconds"))
    write_json(run_dir.with_name(run_dir.name + ".cancelled.json"), job)
    if (run_dir / JOB_LOG).is_file():
        shutil.copyfile(run_dir / JOB_LOG, run_dir.with_name(run_dir.name + ".cancelled.log"))
    shutil.rmtree(run_dir, ignore_errors=True)
    log.info("refine job %d cancelled; %s removed", pid, run_dir)
    return True
