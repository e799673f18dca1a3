"""Feedback: say that a hypothesis or a feature is wrong — and why."""

from pathlib import Path

import streamlit as st

from app_pages.data import current_run, json_file, store, table
from app_pages.feedback_box import REASON_TEXT
from app_pages.jobs import refine_job_panel
from discovery.io import layout
from discovery.io.contract import InputError
from discovery.io.feedback import REASONS, VERDICTS, FeedbackItem

run = current_run()
if run is not None:
    st.title("Feedback")
    manifest = json_file(run, layout.MANIFEST) or {}
    run_id = manifest.get("run_id", run.name)
    hyps = (json_file(run, layout.HYPOTHESES) or {}).get("hypotheses", [])
    ann = table(run, layout.ANNOTATIONS)
    kind = st.radio("About", ["hypothesis", "feature"], horizontal=True, key="fb_kind")
    if kind == "hypothesis":
        options = {h["id"]: f"{h['id']} · {h['cell_type']} · "
                   f"{', '.join(g['symbol'] for g in h['genes'][:4])}" for h in hyps}
    else:
        options = ({} if ann is None else
                   {r.feature: f"{r.feature} · {r.label}" for r in ann.itertuples()
                    if r.frac_active > 0})
    with st.form("feedback", clear_on_submit=False):  # a refused form keeps its text
        target = st.selectbox("Target", list(options), format_func=lambda t: options.get(t, t),
                              key="fb_target")
        verdict = st.radio("Verdict", VERDICTS, horizontal=True, index=1, key="fb_verdict")
        reason = st.selectbox("Reason", REASONS, format_func=lambda r: REASON_TEXT[r],
                              key="fb_reason")
        note = st.text_area("Why (free text)", placeholder="e.g. these are dissociation stress "
                            "genes; it is a batch artifact", key="fb_note")
        author = st.text_input("Your name", key="fb_author")
        sent = st.form_submit_button("Submit feedback")
    if sent:
        if not author.strip():
            st.error("Please enter your name: feedback is signed. What you typed is kept.")
        elif target is None:
            st.error("Nothing to give feedback on in this run.")
        else:
            fid = store(run).add(FeedbackItem(run_id, kind, str(target), verdict, reason,
                                              author, note=note, client="app"))
            st.success(f"Saved as feedback #{fid}: {verdict} on {target} ({REASON_TEXT[reason]}).")
    st.subheader("Feedback on this run")
    items = store(run).items(run_id)
    st.dataframe(items.drop(columns=["client"]) if not items.empty else items, hide_index=True)
    actions = store(run).actions(run_id)
    if not actions.empty:
        st.subheader("What feedback caused")
        st.dataframe(actions, hide_index=True)
    st.subheader("Act on it: refine the model")
    st.caption("A child run in which the features named by 'disagree' feedback with reason "
               "technical artifact or confounder are suppressed — ablate only (their directions "
               "removed from the head), fine-tune with them projected out, or retrain without "
               "the input genes that carry the artifact — with graphs, hypotheses and a "
               "before/after comparison. The other reasons act as well: known biology is "
               "ranked after new claims, a contamination example becomes a check on every "
               "hypothesis, a single-donor verdict excludes that donor, a rejection drops the "
               "plans (with only such feedback the model is kept).")
    with st.form("refine"):
        mode = st.radio("Mode", ["ablate", "finetune", "retrain"], horizontal=True, key="rf_mode")
        child_name = st.text_input("Child run name", value=f"{run.name}-refined", key="rf_name")
        go = st.form_submit_button("Start the refine job")
    if go:
        from pipelines.jobs import start_refine
        from pipelines.rundir import child_run_dir

        try:
            child = child_run_dir(run.parent, child_name)  # never a path outside the runs folder
            start_refine(run, child, mode=mode)
        except (InputError, OSError) as err:  # a bad name, a full disk: said, not a traceback
            st.error(str(err))
        else:
            st.session_state["refine_job"] = str(child)
    job_dir = st.session_state.get("refine_job")
    if job_dir:
        refine_job_panel(Path(job_dir))
