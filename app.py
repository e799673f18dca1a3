"""discovery's Streamlit app: why each experimental plan was proposed, what the model saw, and a
place to disagree. Start it with ``discovery app [RUN_DIR] [--port N]`` (or
``DISCOVERY_RUN=RUN_DIR streamlit run app.py``). The pages live in ``app_pages/``; they
read the run directory through ``app_pages.data`` and hold no science of their own.
"""

from pathlib import Path

import streamlit as st

HERE = Path(__file__).resolve().parent
PAGES = HERE / "app_pages"

st.set_page_config(page_title="discovery", page_icon="🧬", layout="wide")
nav = st.navigation([
    st.Page(PAGES / "overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page(PAGES / "hypotheses.py", title="Hypotheses", icon=":material/lightbulb:"),
    st.Page(PAGES / "plan.py", title="Plan — why", icon=":material/route:", url_path="why"),
    st.Page(PAGES / "features.py", title="Features", icon=":material/scatter_plot:"),
    st.Page(PAGES / "graph.py", title="Graph", icon=":material/hub:"),
    st.Page(PAGES / "feedback.py", title="Feedback", icon=":material/rate_review:"),
    st.Page(PAGES / "reports.py", title="Reports", icon=":material/description:"),
    st.Page(PAGES / "new_run.py", title="New run", icon=":material/upload_file:"),
])
st.sidebar.caption("discovery · interpretable plans")
nav.run()
