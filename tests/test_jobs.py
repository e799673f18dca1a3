"""Refine as a background job: its own process and log, progress by stage, cancel that leaves no
half-written run, and a run picker that shows only complete runs unmarked."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from discovery.io.feedback import FeedbackItem, FeedbackStore, default_url
from pipelines.cli import main
from pipelines.jobs import cancel, job_state, progress, run_state, start_refine


@pytest.fixture
def parent(tiny_run, tmp_path, monkeypatch):
    monkeypatch.delenv("DISCOVERY_FEEDBACK_URL", raising=False)
    out = tmp_path / "runs" / "parent"
    shutil.copytree(tiny_run, out)
    (out / "feedback.sqlite").unlink(missing_ok=True)
    run_id = json.loads((out / "manifest.json").read_text())["run_id"]
    ann = json.loads((out / "features" / "annotations.json").read_text())
    feature = next(a["feature"] for a in ann if a["frac_active"] > 0)
    FeedbackStore(default_url(out)).add(FeedbackItem(
        run_id, "feature", feature, "disagree", "technical_artifact", "Ada"))
    return out


def _said(capsys) -> str:
    out = capsys.readouterr()
    return (out.out + out.err).replace("\n", "")


def _wait(child, states, timeout=600.0):
    end = time.time() + timeout
    while job_state(child) not in states and time.time() < end:
        time.sleep(0.5)
    return job_state(child)


def test_a_cancelled_job_leaves_no_half_written_run(parent, capsys, request):
    from app_pages.data import list_runs, run_label

    child = parent.parent / "child"
    request.addfinalizer(lambda: cancel(child))  # never leave a job behind a failed test
    # the CLI starts it and returns at once
    assert main(["refine", str(parent), "--out", str(child), "--mode", "finetune",
                 "--background"]) == 0
    assert "started in the background" in _said(capsys)
    assert job_state(child) == "running" and run_state(child) == "running"
    # the picker marks it, and lists the complete parent first
    runs = list_runs(parent.parent)
    assert runs == [parent, child] and run_label(child) == "child (running)"
    # progress: the child's stages in order, none done yet or some, an estimate left
    pr = progress(child)
    assert [r["stage"] for r in pr["stages"]] == ["model", "features", "graphs", "hypotheses",
                                                 "report"]
    assert 0.0 <= pr["fraction"] < 1.0 and pr["seconds_left"] > 0
    assert main(["job", str(child)]) == 0
    assert "running" in _said(capsys)
    # refusing a second job into the same folder
    with pytest.raises(Exception, match="already"):
        start_refine(parent, child)
    pid = json.loads((child / "job.json").read_text())["pid"]
    assert main(["job", str(child), "--cancel"]) == 0
    assert "cancelled" in _said(capsys)
    assert not child.exists()
    assert json.loads((parent.parent / "child.cancelled.json").read_text())["state"] == \
        "cancelled"
    assert list_runs(parent.parent) == [parent]
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(pid, 0)
    assert cancel(child) is False  # nothing left to cancel


def test_a_job_runs_to_a_complete_child(parent):
    from app_pages.data import list_runs, run_label

    child = parent.parent / "child-ablate"
    start_refine(parent, child, mode="ablate")
    assert _wait(child, {"done", "failed"}) == "done", (child / "job.log").read_text()
    pr = progress(child)
    assert pr["fraction"] == 1.0 and all(r["status"] == "done" for r in pr["stages"])
    assert run_state(child) == "complete" and run_label(child) == "child-ablate"
    assert set(list_runs(parent.parent)) == {parent, child}
    assert json.loads((child / "refine.json").read_text())["mode"] == "ablate"
    # a finished job is not cancelled: its run stays
    assert cancel(child) is False and (child / "refine.json").is_file()
    # a job never starts into a folder that holds anything (cancel would remove it)
    other = parent.parent / "data"
    other.mkdir()
    (other / "cohort.h5ad").write_bytes(b"precious")
    with pytest.raises(Exception, match="not empty"):
        start_refine(parent, other)
    assert (other / "cohort.h5ad").read_bytes() == b"precious"
