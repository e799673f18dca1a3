"""The Streamlit app: every page on a fixture run (AppTest), feedback that reads back, and a
feedback store that loses no row under concurrent writers."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from discovery.io.contract import InputError
from discovery.io.feedback import FeedbackItem, FeedbackStore

APP = str(Path(__file__).resolve().parent.parent / "app.py")
PAGES = ["hypotheses", "plan", "features", "graph", "feedback", "reports", "new_run"]


@pytest.fixture
def app(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("DISCOVERY_RUN", str(tiny_run))
    monkeypatch.setenv("DISCOVERY_FEEDBACK_URL", f"sqlite:///{tmp_path / 'fb.sqlite'}")
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_overview_page(app, tiny_run):
    """The headline numbers are the run's own: cells, donors and genes from its input summary,
    the held-out donor AUROC from its metrics."""
    import json

    _ok(app)
    assert app.title[0].value == "Overview"
    summary = json.loads((tiny_run / "input_summary.json").read_text())
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["cells"] == f"{summary['n_cells']:,}"
    assert metrics["donors"] == str(summary["n_donors"])
    assert metrics["genes"] == f"{summary['n_genes']:,}"
    assert len(app.dataframe) >= 3  # model metrics, SAE quality, graphs
    model = app.dataframe[0].value.set_index("split")
    test = json.loads((tiny_run / "model" / "metrics.json").read_text())["test"]
    assert model.loc["test", "donor AUROC"] == pytest.approx(test["donor_auroc"])
    assert model.loc["test", "donors"] == test["n_donors"]
    # plain numbers: no table cell is None / NaN (a missing value reads '–')
    for frame in app.dataframe:
        df = frame.value
        assert not df.isna().any().any(), df
        assert not (df.astype(str) == "None").any().any(), df
    # findings first: the report's summary heads the page
    assert app.subheader[0].value == "Summary"
    text = " ".join(m.value for m in app.markdown)
    assert "Plans to run first" in text and "Findings" in text


def _features_page(at, run):
    import pandas as pd

    ann = pd.read_json(run / "features" / "annotations.json")
    ann = ann[ann["frac_active"] > 0]
    sig = ann[ann["donor_q"] < 0.05]
    expected = (sig if len(sig) else ann)["feature"].tolist()
    assert len(at.selectbox[0].options) == len(expected)  # one entry per feature shown
    row = ann.set_index("feature").loc[at.selectbox[0].value]
    metrics = {m.label: m.value for m in at.metric}
    # a feature too rare for the donor test shows a dash, never "nan"
    assert metrics["donor effect"] == ("–" if pd.isna(row["donor_effect"])
                                       else f"{row['donor_effect']:+.2f}")
    assert metrics["donor q"] == ("–" if pd.isna(row["donor_q"]) else f"{row['donor_q']:.1e}")
    assert not any("nan" in str(v).lower() for v in metrics.values()), metrics
    assert metrics["active in cells"] == f"{row['frac_active']:.1%}"
    # the donors panel: one row per donor with cells where the feature acts, batch and split
    donors = next(d.value for d in at.dataframe if "split" in d.value.columns)
    assert {"donor", "label", "activation", "batch", "split"} <= set(donors.columns)
    assert donors["donor"].is_unique and len(donors) >= 4
    assert donors["split"].isin(["train", "val", "test"]).all()


def _graph_page(at, run):
    import json

    first = json.loads((run / "graphs" / "index.json").read_text())["graphs"][0]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["replacement"] == f"{first['replacement_score']:.3f}"
    assert metrics["completeness"] == f"{first['completeness_score']:.3f}"
    assert metrics["cells / donors"] == f"{first['n_cells']} / {first['n_donors']}"


def _feedback_page(at, run):
    import json

    hyps = json.loads((run / "hypotheses.json").read_text())["hypotheses"]
    # every hypothesis of the run can be the target of a judgement, named by id and genes
    targets = at.selectbox(key="fb_target").options
    assert len(targets) == len(hyps)
    assert targets[0].startswith(f"{hyps[0]['id']} · {hyps[0]['cell_type']}")


def test_overview_says_in_words_when_the_model_encodes_batch(tiny_run, tmp_path, monkeypatch):
    """A batch probe at balanced accuracy >= 0.7 is a sentence, not only a number; the probe
    table shows every covariate's score (batch: balanced accuracy, others: R²)."""
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    path = run / "model" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["shortcut_probe"] = {
        "n_splits": 5,
        "batch": {"kind": "batch", "case": {"balanced_accuracy": 0.87, "chance": 0.5},
                  "control": {"balanced_accuracy": 0.62, "chance": 0.5}},
        "pct_counts_mt": {"kind": "covariate", "case": {"r2": 0.36, "chance": 0.0},
                          "control": {"r2": 0.32, "chance": 0.0}}}
    path.write_text(json.dumps(metrics))
    monkeypatch.setenv("DISCOVERY_RUN", str(run))
    monkeypatch.setenv("DISCOVERY_FEEDBACK_URL", f"sqlite:///{tmp_path / 'fb.sqlite'}")
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    _ok(at)
    assert any("encodes batch" in w.value and "0.87" in w.value for w in at.warning)
    probe = next(f.value for f in at.dataframe if "covariate" in f.value.columns)
    probe = probe.set_index("covariate")
    assert probe.loc["pct_counts_mt", "case"] == pytest.approx(0.36)
    assert probe.loc["batch", "control"] == pytest.approx(0.62)


def _reports_page(at, run):
    names = {b.label for b in at.get("download_button")}
    assert {"report.html", "hypotheses.json", "plans.json"} <= names


def _new_run_page(at, run):
    labels = {t.label for t in at.text_input}
    assert {"Run name", "Label column", "Donor column ('none': cells as units)"} <= labels


#: what each page must show of the run, beyond rendering without an error (pages with a test of
#: their own: hypotheses, plan)
PAGE_CHECKS = {"features": _features_page, "graph": _graph_page, "feedback": _feedback_page,
               "reports": _reports_page, "new_run": _new_run_page}


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(app, page, tiny_run):
    app.switch_page(f"app_pages/{page}.py")
    app.run()
    _ok(app)
    assert app.title[0].value
    if page in PAGE_CHECKS:
        PAGE_CHECKS[page](app, tiny_run)


def test_hypotheses_page_filters(app, tiny_run):
    import json

    app.switch_page("app_pages/hypotheses.py")
    app.run()
    hyps = json.loads((tiny_run / "hypotheses.json").read_text())["hypotheses"]
    assert len(app.dataframe[0].value) == len(hyps)
    app.slider[0].set_value(1.0).run()  # minimum score 1.0 hides everything
    assert len(app.dataframe[0].value) == 0


def test_plan_page_shows_the_rationale(app, tiny_run):
    import json

    plans = json.loads((tiny_run / "plans.json").read_text())["plans"]
    app.switch_page("app_pages/plan.py")
    app.run()
    _ok(app)
    text = " ".join(m.value for m in app.markdown)
    first = plans[0]
    assert first["rationale"][0]["claim"] in text
    assert "Falsified if" in text and first["falsified_if"] in text
    # the graph path comes with its legend; the hypothesis's cell type with its volcano
    assert "pushes towards the case call" in text and "named in the plan" in text
    import pandas as pd

    hyp = next(h for h in json.loads((tiny_run / "hypotheses.json").read_text())["hypotheses"]
               if h["id"] == first["hypothesis"])
    tested = set(pd.read_csv(tiny_run / "donor_tests.csv")["cell_type"])
    heads = [s.value for s in app.subheader]
    assert (f"Every gene in {hyp['cell_type']}, donor level" in heads) == (
        hyp["cell_type"] in tested)


def _plan_app(run, tmp_path, monkeypatch, **params):
    monkeypatch.setenv("DISCOVERY_RUN", str(run))
    monkeypatch.setenv("DISCOVERY_FEEDBACK_URL", f"sqlite:///{tmp_path / 'fb.sqlite'}")
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("app_pages/plan.py")
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    _ok(at)
    return at


def test_plan_rests_on_an_artifact_feature_is_a_warning_at_the_top(tiny_run, tmp_path,
                                                                      monkeypatch):
    """A plan whose hypothesis leads with a batch-explained feature says so first, as a
    warning box naming the feature and its share — and the same plan on the untouched run shows
    no such box unless its own features are technical. Each feature behind the plan links to
    the Features page with that feature selected."""
    import json
    import shutil

    plans = json.loads((tiny_run / "plans.json").read_text())["plans"]
    first = plans[0]
    clean = _plan_app(tiny_run, tmp_path, monkeypatch, plan=first["id"])
    hyps = json.loads((tiny_run / "hypotheses.json").read_text())
    h = next(x for x in hyps["hypotheses"] if x["id"] == first["hypothesis"])
    roles = sorted(h["evidence"]["feature_roles"], key=lambda r: -r["share"])
    technical = [r for r in roles if r["confounded_by"] or r["artifact"]]

    def boxes(at):
        ids = {r["feature"] for r in roles}
        return [w.value for w in at.warning
                if w.value.startswith("Flagged (") or w.value.split(" ")[0] in ids]

    assert len(boxes(clean)) == len(technical) + len(h["flags"])
    links = [e for e in clean.get("page_link") if "features" in e.proto.page]
    assert [e.proto.query_string for e in links] == [
        f"feature={r['feature'].replace(':', '%3A')}" for r in roles]

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    roles[0].update(confounded_by="batch", artifact=True)
    h["evidence"]["feature_roles"] = roles
    (run / "hypotheses.json").write_text(json.dumps(hyps))
    dirty = _plan_app(run, tmp_path, monkeypatch, plan=first["id"])
    shown = boxes(dirty)
    assert len(shown) == len(boxes(clean)) + (0 if roles[0] in technical else 1)
    lead = next(b for b in shown if b.startswith(roles[0]["feature"]))
    assert "batch-explained" in lead and "leading feature" in lead


def test_feature_link_opens_that_feature(app, tiny_run):
    """?feature=ID (what a plan's link carries) selects that feature, even one the default
    filter (donor q < 0.05) would hide."""
    import pandas as pd

    ann = pd.read_json(tiny_run / "features" / "annotations.json")
    ann = ann[ann["frac_active"] > 0]
    target = ann.sort_values("donor_q")["feature"].iloc[-1]  # the least significant
    assert not ann.set_index("feature").loc[target, "donor_q"] < 0.05  # the filter hides it
    app.switch_page("app_pages/features.py")
    app.query_params["feature"] = target
    app.run()
    _ok(app)
    assert app.toggle(key="features_only_sig").value  # the filter stays on
    assert app.selectbox[0].value == target
    app.run()  # a rerun keeps both the filter and the linked feature
    assert app.toggle(key="features_only_sig").value and app.selectbox[0].value == target


def test_feedback_is_written_and_read_back(app, tmp_path):
    app.switch_page("app_pages/feedback.py")
    app.run()
    app.radio(key="fb_kind").set_value("feature").run()
    target = app.selectbox(key="fb_target").options[0]
    app.text_area(key="fb_note").input("dissociation stress genes: a batch artifact")
    app.text_input(key="fb_author").input("Ada Lovelace")
    app.selectbox(key="fb_reason").set_value("technical_artifact")
    app.button[0].click().run()
    _ok(app)
    assert any("Saved as feedback" in s.value for s in app.success)
    rows = FeedbackStore(f"sqlite:///{tmp_path / 'fb.sqlite'}").items()
    assert len(rows) == 1
    row = rows.iloc[0]
    assert row["author"] == "Ada Lovelace" and row["reason"] == "technical_artifact"
    assert row["target_kind"] == "feature" and row["verdict"] == "disagree"
    assert row["target_id"] in target
    assert len(app.dataframe[-1].value) == 1  # the table on the page shows it


def test_feedback_without_a_name_is_refused(app, tmp_path):
    app.switch_page("app_pages/feedback.py")
    app.run()
    app.button[0].click().run()
    assert any("enter your name" in e.value for e in app.error)
    assert FeedbackStore(f"sqlite:///{tmp_path / 'fb.sqlite'}").items().empty


def test_feedback_on_a_feature_shows_where_it_appears(tiny_run, tmp_path, monkeypatch):
    """Feedback given on a feature's own page (a refused form keeps what was typed) is shown on
    the Plan page of a plan that rests on that feature."""
    import json

    plans = json.loads((tiny_run / "plans.json").read_text())["plans"]
    hyps = {h["id"]: h for h in json.loads((tiny_run / "hypotheses.json").read_text())
            ["hypotheses"]}
    plan = next(p for p in plans if hyps[p["hypothesis"]]["features"])
    feature = hyps[plan["hypothesis"]]["features"][0]
    monkeypatch.setenv("DISCOVERY_RUN", str(tiny_run))
    monkeypatch.setenv("DISCOVERY_FEEDBACK_URL", f"sqlite:///{tmp_path / 'fb.sqlite'}")
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("app_pages/features.py")
    at.query_params["feature"] = feature
    at.run()
    _ok(at)
    slug = f"feature-{feature}".replace(":", "_")
    at.text_input(key=f"fbn-{slug}").input("dissociation stress genes")
    at.selectbox(key=f"fbr-{slug}").set_value("technical_artifact")
    submit = next(b for b in at.button if b.label == "Save feedback")
    submit.click().run()
    assert any("enter your name" in e.value for e in at.error)
    assert at.text_input(key=f"fbn-{slug}").value == "dissociation stress genes"  # kept
    at.text_input(key=f"fba-{slug}").input("Ada Lovelace")
    next(b for b in at.button if b.label == "Save feedback").click().run()
    _ok(at)
    assert any("Saved as feedback" in s.value for s in at.success)
    at.switch_page("app_pages/plan.py")
    at.query_params["plan"] = plan["id"]
    at.run()
    _ok(at)
    notes = [i.value for i in at.info]
    assert any("Ada Lovelace" in n and feature in n and "dissociation stress genes" in n
               for n in notes), notes


def _write_rows(args: tuple[str, int]) -> int:
    url, writer = args
    store = FeedbackStore(url)
    for j in range(50):
        store.add(FeedbackItem("run1", "feature", f"pooled:F{j}", "disagree", "confounder",
                               f"writer{writer}", note=f"{writer}-{j}"))
    return writer


def test_concurrent_writers_lose_no_row(tmp_path):
    url = f"sqlite:///{tmp_path / 'fb.sqlite'}"
    FeedbackStore(url)
    with ProcessPoolExecutor(8) as ex:
        assert sorted(ex.map(_write_rows, [(url, i) for i in range(8)])) == list(range(8))
    rows = FeedbackStore(url).items("run1")
    assert len(rows) == 400
    assert set(rows["note"]) == {f"{i}-{j}" for i in range(8) for j in range(50)}


def test_store_schema_is_versioned_and_validates(tmp_path):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'fb.sqlite'}")
    assert store.version == 2
    again = FeedbackStore(store.url)  # reopening applies no migration twice
    assert again.version == 2
    with pytest.raises(InputError, match="reason must be one of"):
        FeedbackItem("r", "feature", "pooled:F1", "disagree", "because", "me")
    with pytest.raises(InputError, match="verdict"):
        FeedbackItem("r", "feature", "pooled:F1", "maybe", "other", "me")


# ------------------------------------------------------------------------------------ new run
def _new_run_app(root, monkeypatch, tmp_path, *, limit_mb: str = "1024") -> AppTest:
    monkeypatch.delenv("DISCOVERY_RUN", raising=False)
    monkeypatch.setenv("DISCOVERY_RUNS_ROOT", str(root))
    monkeypatch.setenv("DISCOVERY_MAX_UPLOAD_MB", limit_mb)
    monkeypatch.setenv("DISCOVERY_FEEDBACK_URL", f"sqlite:///{tmp_path / 'fb.sqlite'}")
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.switch_page("app_pages/new_run.py")
    at.run()
    return at


def _submit(at: AppTest, filename: str, content: bytes, name: str) -> AppTest:
    at.file_uploader[0].upload(filename, content).run()
    at.text_input(key="nr_name").set_value(name)
    at.button[0].click().run()
    return at


@pytest.mark.slow
def test_new_run_from_an_upload(tmp_path, monkeypatch):
    """A scientist uploads a cohort in the app and gets a finished run in the runs folder."""
    import pipelines.config
    from discovery.io.simulate import simulate

    from .conftest import TINY_STAGES

    root = tmp_path / "runs"
    path = tmp_path / "cohort.h5ad"
    # a small cohort, and the page's "quick" preset shrunk to the tiny stage settings: the test
    # is about upload -> run -> files, end to end, in seconds
    simulate("alzheimers", seed=0, n_donors=12, cells_per_donor=40, n_genes=700).write_h5ad(path)
    monkeypatch.setitem(pipelines.config.PRESETS, "quick", TINY_STAGES)
    at = _submit(_new_run_app(root, monkeypatch, tmp_path), "cohort.h5ad", path.read_bytes(),
                 "from_app")
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert "from_app" in at.success[0].value
    assert (root / "from_app" / "hypotheses.json").is_file()
    assert (root / "from_app" / "report.html").is_file()


@pytest.mark.parametrize(("filename", "content", "name", "limit", "expect"), [
    ("big.h5ad", b"\0" * 300_000, "big", "0.1", "this app accepts cohorts up to 0.1 MB"),
    ("cut.h5ad", b"\x89HDF\r\n\x1a\n" + b"\0" * 100, "cut", "1024", "not a readable AnnData"),
    ("ok.h5ad", b"\0" * 10, "../escape", "1024", "is not allowed"),
])
def test_refused_uploads_write_nothing(tmp_path, monkeypatch, filename, content, name, limit,
                                       expect):
    root = tmp_path / "runs"
    root.mkdir()
    at = _submit(_new_run_app(root, monkeypatch, tmp_path, limit_mb=limit), filename, content,
                 name)
    assert not at.exception, [e.value for e in at.exception]
    assert at.error and expect in at.error[0].value, [e.value for e in at.error]
    _said_for_the_app(at.error[0].value)
    assert list(root.iterdir()) == []  # no run directory, no leftover upload
    assert not (tmp_path / "escape").exists()


def _said_for_the_app(msg: str) -> None:
    """An upload error as the app says it: no server temp path, no command-line option."""
    import re
    import tempfile

    assert tempfile.gettempdir() not in msg and not re.search(r"tmp\w{6,}", msg), msg
    assert not re.search(r"(?<![\w-])--[a-z]", msg), msg


def test_upload_error_names_the_file_and_the_field_to_fix(tmp_path, monkeypatch):
    """An upload whose label column is not the one typed is refused in the app's words: the
    page's field to change (not a command-line option), the available columns, nothing
    written."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    root = tmp_path / "runs"
    root.mkdir()
    path = tmp_path / "cohort.h5ad"
    obs = pd.DataFrame({"condition": ["AD", "CT"] * 4, "donor": list("aabbccdd"),
                        "cell_type": ["Microglia"] * 8, "batch": ["b1"] * 8},
                       index=[f"c{i}" for i in range(8)])
    ad.AnnData(np.ones((8, 5), np.float32), obs=obs).write_h5ad(path)
    at = _submit(_new_run_app(root, monkeypatch, tmp_path), "cohort.h5ad", path.read_bytes(),
                 "nolabel")
    assert not at.exception, [e.value for e in at.exception]
    msg = at.error[0].value
    assert "'diagnosis'" in msg and "“Label column” field" in msg and "condition" in msg, msg
    _said_for_the_app(msg)
    assert list(root.iterdir()) == []


def test_first_page_does_not_load_the_heavy_libraries():
    """The Overview page's imports (the run's files, tables, the findings summary) load neither
    PyTorch, scanpy nor matplotlib: those cost seconds at the app's first render and are
    imported by the pages and report figures that use them."""
    import subprocess
    import sys

    code = ("import sys, app_pages.data, app_pages.components, pipelines.report, "
            "pipelines.jobs, discovery.get, discovery.tl, discovery.pl; "
            "print(sorted(m for m in ('torch', 'scanpy', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(APP).parent).stdout.strip().splitlines()[-1]
    assert out == "[]", out


@pytest.mark.parametrize(("message", "said"), [
    ("obs column 'diagnosis' (given by --label-key) is missing. Available obs columns: a, b. "
     "Pass the right name, e.g. --label-key <column>.",
     "obs column 'diagnosis' (given by the “Label column” field) is missing. Available obs "
     "columns: a, b. Pass the right name in the “Label column” field."),
    ("cannot tell which of ['Alzheimer disease', 'normal'] in obs['dx'] is the case; pass "
     "--case, e.g. --case Alzheimer disease.",
     "cannot tell which of ['Alzheimer disease', 'normal'] in obs['dx'] is the case; fill in "
     "the “Case value” field, e.g. Alzheimer disease."),
    ("obs['dx'] has one class only ('AD'). Add the other group, or pick another --label-key.",
     "obs['dx'] has one class only ('AD'). Add the other group, or pick another value in the "
     "“Label column” field."),
    ("TMP is not a readable AnnData .h5ad file (OSError: x). Write it with "
     "`adata.write_h5ad(...)`, or pass a counts CSV with --metadata.",
     "cohort.h5ad is not a readable AnnData .h5ad file (OSError: x). Write it with "
     "`adata.write_h5ad(...)`."),
    ("obs column 'c--label-key' is fine", "obs column 'c--label-key' is fine"),
])
def test_upload_errors_are_said_in_the_apps_words(tmp_path, message, said):
    """Each command-line option becomes the New run page's field, a value with spaces survives,
    an alternative only the command line offers is dropped, the server's temporary copy is
    named as the uploaded file, and text that merely contains an option's name is untouched."""
    from app_pages.data import upload_error

    saved = tmp_path / "tmpk3x9q1.h5ad"
    assert upload_error(ValueError(message.replace("TMP", str(saved))), saved,
                        "cohort.h5ad") == said
