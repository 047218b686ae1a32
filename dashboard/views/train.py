"""Train: upload a corpus, train a small model with live progress, then explore it on the other pages."""

import pandas as pd
import streamlit as st

from dashboard import charts_losses as cl
from dashboard import figures, runs, shaping, uploads

st.title("Train a model on your own text")
st.markdown(
    f"Upload a corpus and train a small text SDE on it, then explore it on the other pages (the sidebar shows the "
    f"active model). Accepted: **.jsonl, .json, .csv, .parquet** with HelpSteer's columns `prompt` and `response` "
    f"(score columns are kept if present), or **plain text (.txt)**. Limits: **{uploads.MAX_UPLOAD_MB} MB** per file "
    f"and the first **{uploads.MAX_ROWS:,} rows**.\n\n"
    f"*Plain text:* each paragraph (separated by a blank line) becomes a response, and consecutive paragraphs are "
    f"grouped under synthetic prompts “paragraph group 1”, “paragraph group 2”, ... (about {uploads.TARGET_GROUPS} "
    f"groups), because the engine splits training and validation data **by prompt**.")

upload = st.file_uploader("Corpus file", type=list(uploads.UPLOAD_TYPES), key="upload",
                          max_upload_size=uploads.MAX_UPLOAD_MB)
frame = None
if upload is not None:
    try:
        frame = uploads.read_upload(upload.name, upload.getvalue())
    except ValueError as exc:
        st.error(f"Cannot use this file: {exc}")
if frame is not None:
    st.success(f"{upload.name}: {len(frame):,} rows, {frame['prompt'].nunique():,} distinct prompts "
               f"(capped at {uploads.MAX_ROWS:,} rows).")
    preview = frame[["prompt", "response"]].head(5).copy()
    preview["response"] = preview["response"].str.slice(0, 160)
    st.dataframe(preview, hide_index=True, width="stretch")

    c = st.columns(4)
    epochs = c[0].number_input("Epochs (1-20)", 1, 20, 3, key="train_epochs")
    size = c[1].selectbox("Model size (hidden units)", list(runs.MODEL_SIZES), key="train_size")
    batch = c[2].select_slider("Batch size", [64, 128, 256, 512], value=256, key="train_batch")
    report = c[3].checkbox("Evaluate against baselines", value=False, key="train_report",
                           help="Writes report.json for the Evaluation page. Slow: adds a minute or more on a CPU.")
    if st.button("Train", type="primary", key="train_go"):
        bar = st.progress(0.0, text="Preparing: tokenising the corpus ...")
        live = st.empty()
        records: list[dict] = []

        def on_epoch(record: dict) -> None:
            records.append(record)
            v = record["validation"]
            bar.progress(len(records) / epochs, text=f"Epoch {record['epoch']} of {epochs}: validation total "
                         f"{v['total']:.3f}, token perplexity {v['token_ppl']:,.0f} ({record['seconds']:.0f} s)")
            rows = pd.DataFrame(shaping.history_rows({"epochs": records}), columns=["epoch", "split", "loss", "value"])
            live.plotly_chart(cl.history_chart(rows), config=figures.toolbar("training_history"))

        def on_wait(place: int) -> None:
            ahead = place - 1
            bar.progress(0.0, text=f"Waiting for the trainer: {ahead} run(s) ahead of yours" if ahead else
                         "Waiting for the trainer: yours is next")

        try:
            with runs.training_queue().slot(on_wait):
                bar.progress(0.0, text="Preparing: tokenising the corpus ...")
                out, history = runs.train_frame(frame, upload.name, int(epochs), runs.MODEL_SIZES[size], int(batch),
                                                on_epoch, report=bool(report))
        except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
            st.error(f"Training failed: {exc}")
        else:
            runs.activate(st.session_state, out, upload.name)
            runs.release(out)  # the run's own use ends; the session's goes on
            try:
                removed = runs.enforce_quota(keep={out})
            except (ValueError, OSError) as exc:
                removed = []
                st.session_state["quota_note"] = f"Older runs were not tidied: {exc}"
            if removed:
                st.session_state["quota_note"] = (f"Removed {len(removed)} older run folder(s) to keep within "
                                                  f"{runs.runs_quota_mb():g} MB.")
            st.session_state["last_training"] = {"folder": str(out), "history": history, "name": upload.name}
            st.rerun()
elif upload is None:
    st.info("No corpus uploaded yet. Upload a file above to train; training a small model on a few hundred rows "
            "takes a few minutes on a CPU.")

last = st.session_state.get("last_training")
if last:
    st.subheader(f"Last training: {last['name']}")
    hist = last["history"]
    rows = pd.DataFrame(shaping.history_rows(hist), columns=["epoch", "split", "loss", "value"])
    figures.show(cl.history_chart(rows, hist.get("references"), hist.get("best_epoch")), key="train_history")
    st.caption("Validation losses (dashed) below the dotted references mean the model learned more than a zero drift "
               "and a constant sigma.")
    st.success(f"Saved to `{last['folder']}` and active now: open **Generate** to explore it.")
    if st.session_state.get("quota_note"):
        st.caption(st.session_state["quota_note"])
    st.page_link("views/generate.py", label="Go to Generate", icon=":material/timeline:")

previous = runs.trained_models()
if previous:
    st.subheader("Models trained earlier")
    names = [p.name for p in previous]
    pick = st.selectbox("Reopen a model trained in this dashboard", names, key="reopen")
    if st.button("Make it the active model", key="reopen_go"):
        runs.activate(st.session_state, previous[names.index(pick)], pick)
        st.rerun()
