"""Resumable, reproducible runs: a run killed with SIGKILL in the middle of the SAE stage resumes
to the same result as an uninterrupted run, byte for byte."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pipelines.cli import main
from tests.conftest import TINY


def _stage_status(out, name: str) -> str | None:
    try:
        return json.loads((out / "manifest.json").read_text())["stages"].get(name, {}).get(
            "status")
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None  # not written yet, or caught between temp file and rename


@pytest.mark.slow
def test_sigkill_during_sae_stage_then_rerun_gives_identical_hypotheses(tiny_run, tmp_path):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--config", str(cfg), "--out", str(out),
           "--quiet"]
    proc = subprocess.Popen(cmd, env={**os.environ, "TQDM_DISABLE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if _stage_status(out, "features") == "running":
                time.sleep(0.3)  # inside activation collection / SAE fitting
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before the SAE stage was reached"
    assert _stage_status(out, "features") == "running"  # killed mid-stage, not after it
    assert _stage_status(out, "model") == "done"
    assert not (out / "hypotheses.json").exists()
    model_before = (out / "model" / "model.safetensors").read_bytes()

    assert main(["run", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert (out / "model" / "model.safetensors").read_bytes() == model_before  # reused
    assert _stage_status(out, "features") == "done"
    assert (out / "hypotheses.json").read_bytes() == (tiny_run / "hypotheses.json").read_bytes()
    assert (out / "plans.json").read_bytes() == (tiny_run / "plans.json").read_bytes()


#: every stage of a run, in order (the yardstick runs on simulated cohorts)
STAGES = ("input", "preprocess", "baselines", "yardstick", "model", "features", "graphs",
          "hypotheses", "report")


@pytest.mark.slow
def test_kill_after_each_stage_then_rerun_is_byte_identical(tiny_run, tmp_path):
    """SIGKILL in every stage, one after the other (each process resumes the previous kill and is
    killed once the next stage has written its outputs, before the stage is recorded as done):
    every stage is recomputed once after a kill and reused by every later process, and the
    final hypotheses.json and plans.json equal an uninterrupted run's, byte for byte."""
    from pipelines.rundir import FAULT_ENV

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--config", str(cfg), "--out", str(out),
           "--quiet"]
    for stage in STAGES:
        proc = subprocess.run(cmd, env={**os.environ, "TQDM_DISABLE": "1", FAULT_ENV: stage},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300,
                              check=False)
        assert proc.returncode == -signal.SIGKILL, (stage, proc.stderr.decode()[-2000:])
        assert _stage_status(out, stage) == "running", stage  # outputs written, not yet done
        # a temporary file caught between write and rename: removed when the run starts again
        (out / f".adata.h5ad.{stage}.tmp").write_bytes(b"partial")
    assert main(["run", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert not list(out.rglob(".*.tmp"))
    assert all(_stage_status(out, s) == "done" for s in STAGES)
    assert (out / "hypotheses.json").read_bytes() == (tiny_run / "hypotheses.json").read_bytes()
    assert (out / "plans.json").read_bytes() == (tiny_run / "plans.json").read_bytes()


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.slow
@pytest.mark.parametrize(("cached", "stages"), [
    ("model/model.safetensors", {"model"}),
    ("baselines/rankings.csv.gz", {"baselines"}),
    ("graphs/microglia_case.json", {"graphs"}),
    # the SAE's features are relabelled by the graphs stage, which rewrites annotations.json
    ("features/sae_seed0/sae.safetensors", {"features", "graphs"}),
    ("hypotheses.json", {"hypotheses"}),
    # written by preprocess, model and features: each of them runs again
    ("adata.h5ad", {"preprocess", "model", "features", "graphs"}),
])
def test_a_truncated_cache_recomputes_its_stage(tiny_run, tmp_path, caplog, cached, stages):
    """A cached output cut in half is detected by its sha256 (manifest ``files``): the stage that
    wrote it runs again, says why, and the run finishes with the uninterrupted run's bytes. The
    input summary, yardstick and report are rewritten on every run (they are not caches)."""
    import logging
    import shutil

    from pipelines.config import load_config
    from pipelines.run import run_pipeline

    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    _truncate(out / cached)
    with caplog.at_level(logging.INFO, logger="pipelines.rundir"):
        run_pipeline(out, config=load_config(overrides=TINY), quiet=True)
    ran = {r.getMessage().split()[1] for r in caplog.records
           if r.getMessage().startswith("stage ") and " done in " in r.getMessage()}
    assert ran - {"input", "yardstick", "report"} == stages
    manifest = json.loads((out / "manifest.json").read_text())
    first = next(s for s in STAGES if s in stages)
    assert cached in manifest["stages"][first]["recomputed_because"]
    assert (out / "hypotheses.json").read_bytes() == (tiny_run / "hypotheses.json").read_bytes()
    assert (out / "plans.json").read_bytes() == (tiny_run / "plans.json").read_bytes()
