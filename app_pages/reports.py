"""Reports: the HTML report inline, and every file to download."""

import streamlit as st

from app_pages.data import current_run
from discovery.io import layout

run = current_run()
if run is not None:
    st.title("Reports and exports")
    html = run / layout.REPORT_HTML
    if not html.is_file():
        st.info("No report yet: `discovery report RUN_DIR` writes one.")
    else:
        c = st.columns(4)
        c[0].download_button(layout.REPORT_HTML, html.read_bytes(), layout.REPORT_HTML)
        for col, name in zip(c[1:], (layout.REPORT_MD, layout.HYPOTHESES, layout.PLANS)):
            p = run / name
            if p.is_file():
                col.download_button(name, p.read_bytes(), name)
        # the report is written by discovery from the run's own files (every value escaped),
        # self-contained: st.iframe embeds it as it is (components.v1.html is deprecated)
        st.iframe(html, height=900)
