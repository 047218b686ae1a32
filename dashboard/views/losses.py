"""Losses and trajectories: the training history, and any text analysed token by token."""

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import charts_losses as cl
from dashboard import compute, figures, session, shaping, token_html

DEFAULT_TEXT = ("Try to go to bed at the same time every night, keep your bedroom dark and cool, "
                "and avoid screens for an hour before sleep.")

st.title("Losses and trajectories")
ck, folder, stamp = session.require_checkpoint()

st.subheader("Training history")
hist = ck.history or {}
rows = pd.DataFrame(shaping.history_rows(hist), columns=["epoch", "split", "loss", "value"])
if rows.empty:
    st.info("This checkpoint has no training history (history.json is missing or empty).")
else:
    best = hist.get("best_validation") or {}
    refs = hist.get("references") or {}
    m = st.columns(4)
    m[0].metric("Best epoch", f"{hist.get('best_epoch', '?')} of {rows['epoch'].max()}")
    m[1].metric("Validation token perplexity", f"{best['token_ppl']:,.0f}" if best.get("token_ppl") else "n/a")
    if refs.get("drift_zero_drift") and best.get("drift") is not None:
        m[2].metric("Drift loss vs zero drift", f"{best['drift']:.3f}",
                    f"{best['drift'] - refs['drift_zero_drift']:+.3f}", delta_color="inverse")
    if refs.get("diffusion_constant_sigma") and best.get("diffusion") is not None:
        m[3].metric("Diffusion loss vs constant sigma", f"{best['diffusion']:.3f}",
                    f"{best['diffusion'] - refs['diffusion_constant_sigma']:+.3f}", delta_color="inverse")
    figures.show(cl.history_chart(rows, refs, hist.get("best_epoch")), key="history")
    st.caption("Validation curves (dashed) should fall with the training ones and end below the dotted reference "
               "lines: a learned drift beats no drift, a learned sigma beats a constant one.")
    st.download_button("Training history (CSV)", rows.to_csv(index=False), "history.csv", "text/csv",
                       on_click="ignore")

st.subheader("A text, token by token")
text = st.text_area("Text to analyse (up to 256 tokens are read)", value=DEFAULT_TEXT, key="traj_text", height=90,
                    bind="query-params", persist_state="session")
if not text.strip():
    st.error("The text is empty: type or paste at least two words.")
    st.stop()
try:
    tr = compute.trajectory(folder, stamp, text)
except ValueError as exc:
    st.error(f"Cannot analyse this text: {exc}")
    st.stop()

toks = tr["tokens"]
pad = np.concatenate([[np.nan], tr["drift_loss"]])  # the first token is reached by no transition
st.markdown("**Drift loss** of the step that reaches each token (darker: the drift predicted it worse)  \n"
            + token_html.token_spans(toks, pad, float(np.nanmax(pad)), (31, 111, 139), "drift loss")
            + "  \n" + token_html.legend_html("drift loss", (31, 111, 139), float(np.nanmax(pad)), "{:.2f}"),
            unsafe_allow_html=True)
pad = np.concatenate([[np.nan], tr["diffusion_loss"]])
lo = float(np.nanmin(pad))
shifted = pad - min(lo, 0.0)  # the Gaussian NLL can be negative; shade from the smallest value
st.markdown("**Diffusion loss** of the step that reaches each token (darker: the step was more surprising "
            "for sigma)  \n" + token_html.token_spans(toks, shifted, float(np.nanmax(shifted)), (209, 73, 91),
                                                        "diffusion loss (shifted)")
            + "  \n" + token_html.legend_html(f"diffusion loss above {min(lo, 0.0):.2f}", (209, 73, 91),
                                              float(np.nanmax(shifted)), "{:.2f}"), unsafe_allow_html=True)

figures.show(cl.token_loss_chart(toks, tr["drift_loss"], tr["diffusion_loss"], tr["nll"]), key="token_losses")
st.caption("Tall bars mark the tokens the drift did not see coming; the black line is how unlikely the emission "
           "found the actual next token.")

m_stored = compute.maps(folder, stamp)
use_pca = st.toggle("Use PCA instead of the stored map", key="traj_pca", disabled=m_stored["stored"] is None,
                    help=m_stored["note"] or "Switch between the checkpoint's reference map and PCA.")
proj = shaping.projection(m_stored, use_pca)
def tf(points):
    return shaping.project(proj, points)


figures.show(cl.trajectory_map_chart(proj["ref_xy"], proj["ref_tokens"], tf(tr["states"]), tf(tr["one_step"]),
                                        tf(tr["free_run"]), toks, proj["label"]), key="trajectory_map")
st.caption("One-step predictions (crosses) start from the true prefix each time; the free-running drift (dashed) "
           "starts from the first token and never sees the text again, so it drifts toward the attractor.")

per_token = pd.DataFrame({"k": np.arange(1, len(toks)), "token": toks[1:], "drift_loss": tr["drift_loss"],
                          "diffusion_loss": tr["diffusion_loss"], "nll": tr["nll"], "mean_sigma": tr["sigma"]})
st.download_button("Per-token losses (CSV)", per_token.to_csv(index=False), "token_losses.csv", "text/csv",
                   on_click="ignore")
