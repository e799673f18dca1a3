"""Feedback where its target is shown: what experts already said about a hypothesis, feature or
plan, and a small form to agree or disagree with a reason (the Feedback page has the full list
and the refine action)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app_pages.data import json_file, store
from discovery.io import layout
from discovery.io.feedback import REASONS, VERDICTS, FeedbackItem

__all__ = ["REASON_TEXT", "feedback_box", "feedback_notes"]

REASON_TEXT = {"technical_artifact": "technical artifact", "confounder": "confounder",
               "known_biology": "known biology", "wrong_cell_type": "wrong cell type (contamination)",
               "single_donor": "driven by a single donor",
               "implausible_direction": "implausible direction", "other": "other"}


def _run_id(run: Path) -> str:
    return (json_file(run, layout.MANIFEST) or {}).get("run_id", run.name)


def feedback_notes(run: Path, targets: list[tuple[str, str]]) -> int:
    """Show what experts said about any of ``targets`` ((kind, id) pairs), e.g. a plan's
    hypothesis and the features behind it (one query of the store for all of them); returns
    how many notes were shown."""
    items = store(run).items(_run_id(run))
    lines = [] if items.empty else [
        f"**{r.author}** {r.verdict}s with {target} ({REASON_TEXT.get(r.reason, r.reason)})"
        + (f": {r.note}" if r.note else "") + f" · {r.created}"
        for kind, target in targets
        for r in items[(items["target_kind"] == kind)
                       & (items["target_id"] == target)].itertuples()]
    for line in lines:
        st.info(line, icon=":material/rate_review:")
    return len(lines)


def feedback_box(run: Path, kind: str, target: str) -> None:
    """Existing feedback on ``target`` (a ``kind``: hypothesis | feature | plan) and a form to
    add one. The form keeps what was typed when it is refused (no name)."""
    run_id = _run_id(run)
    feedback_notes(run, [(kind, target)])
    slug = f"{kind}-{target}".replace(":", "_")
    with st.expander(f"Agree or disagree with {target}, and say why", expanded=False):
        with st.form(f"fb-{slug}", clear_on_submit=False):
            c = st.columns(2)
            verdict = c[0].radio("Verdict", VERDICTS, horizontal=True, index=1,
                                 key=f"fbv-{slug}")
            reason = c[1].selectbox("Reason", REASONS, format_func=lambda r: REASON_TEXT[r],
                                    key=f"fbr-{slug}")
            note = st.text_input("Why", placeholder="e.g. dissociation stress genes",
                                 key=f"fbn-{slug}")
            author = st.text_input("Your name", key=f"fba-{slug}")
            sent = st.form_submit_button("Save feedback")
        if sent:
            if not author.strip():
                st.error("Please enter your name: feedback is signed. What you typed is kept.")
            else:
                fid = store(run).add(FeedbackItem(run_id, kind, target, verdict, reason, author,
                                                  note=note, client="app"))
                st.success(f"Saved as feedback #{fid}: {verdict} on {target} "
                           f"({REASON_TEXT[reason]}). It shows here and on the Feedback page; "
                           "refine acts on it there.")
