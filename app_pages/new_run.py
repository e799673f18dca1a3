"""New run: upload a cohort (.h5ad), name its columns, run the whole pipeline into the runs
folder. Every check of the command line applies (size limit, run name, input contract); a
refused upload writes nothing."""

import tempfile
from pathlib import Path

import streamlit as st

from app_pages.data import check_upload, max_upload_mb, runs_root, upload_error
from discovery.io.contract import InputError

st.title("New run")
root = runs_root()
st.caption(f"The run is written to `{root}/<name>`; cohorts up to {max_upload_mb():g} MB "
           "(bigger ones: discovery's command line, then open the run here).")
upload = st.file_uploader("Cohort (.h5ad, raw counts)", type=["h5ad"], key="nr_file")
with st.form("new_run"):
    name = st.text_input("Run name", value="my_cohort", key="nr_name")
    c = st.columns(3)
    label_key = c[0].text_input("Label column", value="diagnosis", key="nr_label")
    case = c[1].text_input("Case value (blank: inferred)", value="", key="nr_case")
    donor_key = c[2].text_input("Donor column ('none': cells as units)", value="donor",
                                key="nr_donor")
    c = st.columns(3)
    cell_type_key = c[0].text_input("Cell-type column", value="cell_type", key="nr_ct")
    batch_key = c[1].text_input("Batch column (blank: none)", value="batch", key="nr_batch")
    preset = c[2].selectbox("Preset", ["quick", "standard"], key="nr_preset")
    go = st.form_submit_button("Run the pipeline")

if go:
    from pipelines.config import load_config
    from pipelines.run import keys_from_args, run_pipeline
    from pipelines.rundir import child_run_dir

    tmp: Path | None = None
    try:
        if upload is None:
            raise InputError("choose a .h5ad file to upload first")
        check_upload(upload.name, upload.size)
        out = child_run_dir(root, name)
        if out.exists():
            raise InputError(f"a run named {name!r} already exists in {root}; pick another name")
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(suffix=".h5ad", delete=False) as fh:
            fh.write(upload.getvalue())
            tmp = Path(fh.name)
        keys = keys_from_args(label_key=label_key or None, case=case or None,
                              donor_key=donor_key or None, cell_type_key=cell_type_key or None,
                              batch_key=batch_key or "none")
        config = load_config(preset=preset, overrides={"keys": keys})
        with st.spinner(f"Running the pipeline on {upload.name} ..."):
            run_pipeline(out, data=tmp, config=config, quiet=True)
    except InputError as err:
        st.error(upload_error(err, tmp, upload.name if upload is not None else ""))
    else:
        st.success(f"Run `{name}` written to `{out}`: pick it in the sidebar's Run list.")
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
