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


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state first), or None where
    there is no /proc entry."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22), or
    None where there is no /proc: with the pid it identifies one process (pids are reused)."""
    fields = _proc_stat(pid)
    return None if fields is None else fields[19]


def _alive(pid: int, started: str | None = None) -> bool:
    """Whether process ``pid`` still runs (a zombie does not; a process that reused the pid
    since ``started`` is not the job)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # our own child: reap it when it has ended
        if done == pid:
            return False
    except ChildProcessError:
        pass  # started by another process (the CLI, an earlier app): not ours to reap
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or another user's: not our job
        return False
    fields = _proc_stat(pid)
    if fields is None:
        return True  # no /proc: os.kill said it exists
    if fields[0] == "Z":
        return False
    return started is None or fields[19] == started


def _job_alive(job: dict[str, Any]) -> bool:
    return _alive(int(job["pid"]), job.get("pid_started"))


def start_refine(parent: str | Path, child: str | Path, *, mode: str = "ablate",
                 covariate: str | None = None, only_named: bool = False) -> dict[str, Any]:
    """Start ``discovery refine PARENT --out CHILD --mode MODE`` as a background job; returns
    its ``job.json`` record. Refuses a child folder that already holds a run or a job."""
    parent, child = Path(parent), Path(child)
    if child.exists() and (not child.is_dir() or any(child.iterdir())):
        msg = (f"{child} already exists and is not empty (a run, a job or other files); pick "
               "another name for the child run")
        raise InputError(msg)
    child.mkdir(parents=True, exist_ok=True)
    try:  # claimed before the process starts: a second start into the same folder fails here
        with (child / JOB_FILE).open("x") as fh:
            fh.write("{}")
    except FileExistsError as err:
        msg = f"{child} already holds a job; pick another name for the child run"
        raise InputError(msg) from err
    cmd = [sys.executable, "-m", "pipelines.cli", "refine", str(parent), "--out", str(child),
           "--mode", mode, "--quiet"]
    if covariate:
        cmd += ["--covariate", covariate]
    if only_named:
        cmd.append("--only-named")
    try:
        with (child / JOB_LOG).open("ab") as logf:
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    cwd=os.getcwd())
    except OSError:
        shutil.rmtree(child, ignore_errors=True)  # nothing started: no claimed folder left
        raise
    rec = {"kind": "refine", "pid": proc.pid, "pid_started": _start_time(proc.pid),
           "command": cmd, "parent": str(parent),
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
    if not job.get("pid"):
        return "running"  # claimed, the process about to start
    alive = _job_alive(job)
    if manifest.get("stages", {}).get("report", {}).get("status") == "done" and not alive:
        return "done"
    return "running" if alive else "failed"


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
    if job is None or not job.get("pid") or job_state(run_dir) != "running":
        return False
    pid = int(job["pid"])
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    end = time.time() + timeout
    while _job_alive(job) and time.time() < end:
        time.sleep(0.1)
    if _job_alive(job):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while _job_alive(job) and time.time() < end + timeout:
            time.sleep(0.1)
    manifest = _read(run_dir / layout.MANIFEST) or {}
    if manifest.get("stages", {}).get("report", {}).get("status") == "done":
        log.info("job %d had finished before the cancel reached it; %s kept", pid, run_dir)
        return False
    job.update(state="cancelled", cancelled=datetime.now(UTC).isoformat(timespec="seconds"))
    write_json(run_dir.with_name(run_dir.name + ".cancelled.json"), job)
    if (run_dir / JOB_LOG).is_file():
        shutil.copyfile(run_dir / JOB_LOG, run_dir.with_name(run_dir.name + ".cancelled.log"))
    shutil.rmtree(run_dir, ignore_errors=True)
    log.info("refine job %d cancelled; %s removed", pid, run_dir)
    return True
