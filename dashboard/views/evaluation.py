"""Evaluation: held-out metrics against baselines, calibration, relevance-vs-diversity frontier."""

import streamlit as st

from dashboard import charts_eval as ce
from dashboard import figures, session, shaping

st.title("Evaluation")
st.markdown(
    "How well the SDE predicts held-out text, next to baselines that share its emission (so perplexities compare "
    "dynamics, not decoders): **unigram** and **bigram** (Kneser-Ney) token models, **brownian** (no drift), "
    "**ar1** (a linear drift) and **drift_only** (the learned drift with a constant sigma).")
ck, folder, stamp = session.require_checkpoint()
files = shaping.evaluation_files(folder)
report, frontier = files["report"], files["frontier"]
HOW = (f"run `python -m sdecore evaluate --corpus ../shared/data/helpsteer_dev.jsonl --model {folder} --save` "
       f"(writes `report.json`) and `python -m sdecore frontier --corpus ../shared/data/helpsteer_dev.jsonl "
       f"--model {folder} --save` (writes `frontier.json`), then reload this page.")

if report is None and frontier is None:
    st.info(f"**Not computed yet:** this model folder has no evaluation files. To compute them, {HOW}")
    st.stop()

st.subheader("Held-out metrics")
if report is None:
    st.info(f"**Not computed yet:** `report.json` is missing. To compute it, {HOW}")
elif isinstance(report, str):
    st.error(report)
else:
    try:
        frame = ce.models_frame(report["models"])
        st.caption(f"Corpus `{report.get('corpus', '?')}`, split `{report.get('split', '?')}`, "
                   f"{report.get('n_transitions', '?'):,} transitions (the same for every model).")
        figures.show(ce.metrics_chart(frame), key="metrics")
        st.caption("The SDE (first bar) should have a lower perplexity and higher accuracy than the baselines; "
                   "drift_only against sde shows what the learned sigma adds.")
        st.dataframe(ce.display_frame(frame), width="stretch")
        st.download_button("Metrics (CSV)", frame.to_csv(index=False), "metrics.csv", "text/csv", on_click="ignore")
        left, right = st.columns(2)
        with left:
            by = report.get("by_complexity") or {}
            if by:
                figures.show(ce.complexity_chart(by), key="complexity")
                st.caption("Look for where the SDE's advantage holds: more complex responses are usually harder for "
                           "every model.")
            else:
                st.info("The report has no breakdown by complexity.")
        with right:
            cal = report.get("calibration") or {}
            if cal.get("levels"):
                cov = frame.loc[frame["model"] == "sde", "coverage90"]
                figures.show(ce.calibration_chart(cal["levels"], cal["observed"],
                                                     float(cov.iloc[0]) if len(cov) else None), key="calibration")
                st.caption("Points on the diagonal mean sigma is calibrated; below it, the predicted intervals are too "
                           "narrow (noise underestimated).")
            else:
                st.info("The report has no calibration curve.")
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        st.error(f"`report.json` in {folder} has an unexpected structure ({type(exc).__name__}: {exc}); "
                 f"recompute it: {HOW}")

st.subheader("Relevance versus diversity")
if frontier is None:
    st.info(f"**Not computed yet:** `frontier.json` is missing. To compute it, {HOW}")
elif isinstance(frontier, str):
    st.error(frontier)
else:
    try:
        fr = ce.frontier_frame(frontier)
        if fr.empty:
            st.info("`frontier.json` has no rows.")
        else:
            figures.show(ce.frontier_chart(fr), key="frontier")
            st.caption("Moving right means more varied text; the best generator stays high (on topic) as it does. "
                       "Hover a point for BLEU, ROUGE-L, self-BLEU and the share of diverged paths.")
            st.download_button("Frontier (CSV)", fr.to_csv(index=False), "frontier.csv", "text/csv",
                               on_click="ignore")
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        st.error(f"`frontier.json` in {folder} has an unexpected structure ({type(exc).__name__}: {exc}).")
