"""A background refine job on the page: progress by stage with an estimate, its log, cancel, and
the child run's comparison once it is done. The job is a process of its own
(:mod:`pipelines.jobs`): closing the tab does not stop it, and the panel picks it up again."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from discovery.io import layout
from discovery.io.files import read_json
from pipelines.jobs import cancel, progress

__all__ = ["refine_job_panel"]


@st.fragment(run_every=2.0)
def refine_job_panel(child: Path) -> None:
    """The job in ``child``: refreshed every 2 s while it runs."""
    pr = progress(child)
    state = pr["state"]
    st.markdown(f"**Refine job → `{child.name}`**: {state}")
    if state == "running":
        st.progress(pr["fraction"], text=f"{pr['fraction']:.0%} of stages done · "
                                         f"{pr['elapsed']:.0f} s elapsed · about "
                                         f"{pr['seconds_left']:.0f} s left (the parent's "
                                         "own stage times)")
        if st.button("Cancel the job", key=f"cancel-{child.name}", type="secondary"):
            cancel(child)
            st.session_state.pop("refine_job", None)
            st.warning(f"Cancelled; the half-written run {child.name} was removed.")
            return
    st.dataframe(pd.DataFrame(pr["stages"]), hide_index=True)
    if state == "failed":
        st.error("The job stopped before its report; the last lines of its log:")
        st.code("\n".join(pr["log_tail"]) or "(empty log)")
    elif state == "cancelled" or not child.exists():
        st.info("The job was cancelled.")
    elif state == "done" and (child / layout.REFINE).is_file():
        from pipelines.child_run import comparison_rows
        from pipelines.report import refine_effect_rows

        res = read_json(child / layout.REFINE)
        st.success(f"Child run {child.name} ({res['mode']}) is complete: "
                   f"{', '.join(res['suppressed']) or 'no feature'} suppressed. Pick it in the "
                   "sidebar to explore it.")
        for w in res.get("warnings", []):
            st.warning(w)
        for line in res.get("also_acted_on", []):
            st.info(f"Also corrected: {line}")
        st.dataframe(refine_effect_rows(res), hide_index=True)
        st.dataframe(comparison_rows(res), hide_index=True)
    if pr["log_tail"] and state == "running":
        with st.expander("log"):
            st.code("\n".join(pr["log_tail"]))
