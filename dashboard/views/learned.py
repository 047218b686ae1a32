"""What the nets learned: where the diffusion is small or large, where the drift points, and
where the drift alone leads."""

import numpy as np
import streamlit as st

from dashboard import charts_learned as cl
from dashboard import compute, figures, session, token_html

st.title("What the nets learned")
st.markdown(
    "The drift **mu** should carry the predictable part of language and the diffusion **sigma** its uncertainty. "
    "Three ways to check that they learned patterns of language rather than an arbitrary map: which tokens the "
    "model is sure or unsure after, what the drift expects next along a text, and where the drift leads when "
    "nothing else pushes.")

ck, folder, stamp = session.require_checkpoint()
bind = session.URL_BOUND

# ----------------------------------------------------------------------------- per token
st.subheader("Sure and unsure: the diffusion at each token")
among = st.select_slider("Among the most frequent tokens", [1000, 2000, 5000, 10000], value=5000, key="among",
                         **bind, help="Rare tokens were seen too seldom in training for their sigma to mean much.")
try:
    rank = compute.ranking(folder, stamp, int(among))
except ValueError as exc:
    st.error(f"Cannot rank the tokens: {exc}")
    st.stop()
left, right = st.columns(2)
with left:
    figures.show(cl.ranking_chart(rank["least"], "Most certain: the smallest diffusion after the token",
                                  cl.DRIFT_COLOR), key="least_sigma", name="most_certain_tokens")
with right:
    figures.show(cl.ranking_chart(rank["most"], "Least certain: the largest diffusion after the token",
                                  cl.DIFFUSION_COLOR), key="most_sigma", name="least_certain_tokens")
st.caption("sigma is evaluated at each token's own embedding, as if the text were that token alone. A small "
           "sigma means the model has a firm idea of what follows; a large one that many continuations are "
           "plausible.")
figures.show(cl.sigma_histogram(rank["sigma"], rank["among"]), key="sigma_hist", name="diffusion_histogram")

# ----------------------------------------------------------------------------- along a text
st.subheader("Along a text: uncertainty and the drift's next tokens")
text = st.text_area("Text", value=session.DEFAULT_PROMPT, key="text", height=68, **bind,
                    help="Read with teacher forcing: each position sees the text before it.")
if not text.strip():
    st.error("The text is empty: type a sentence to read, e.g. “The weather today is sunny and warm.”.")
else:
    try:
        steps = compute.text_steps(folder, stamp, text)
    except ValueError as exc:
        st.error(f"Cannot read the text: {exc}")
        steps = None
    if steps is not None:
        st.markdown(token_html.legend_html("shading: diffusion after the token", (209, 73, 91),
                                           float(max(np.nanmax(steps["sigma"]), 1e-9))), unsafe_allow_html=True)
        st.markdown(token_html.token_spans(steps["tokens"], steps["sigma"], None, (209, 73, 91), "sigma"),
                    unsafe_allow_html=True)
        left, right = st.columns([3, 2])
        with left:
            figures.show(cl.text_sigma_chart(steps["tokens"], steps["sigma"], steps["next_tokens"],
                                             steps["next_probs"]), key="text_sigma", name="diffusion_along_text")
        with right:
            figures.show(cl.next_tokens_chart(steps["next_tokens"][-1], steps["next_probs"][-1], steps["tokens"][-1]),
                         key="next_tokens", name="drift_next_tokens")
        st.caption("Hover a bar on the left for the tokens the drift points to after that position: the tokens "
                   "decoded where one noiseless step lands, read through the read-out (x + mu dt + r). The right "
                   "chart is the same after the whole text.")


# ----------------------------------------------------------------------------- the drift alone
@st.fragment
def attractor_view() -> None:
    """A fragment: the scan runs a few seconds and must not hold the rest of the page."""
    st.subheader("Where the drift alone leads")
    st.markdown("With s = 0 the text is the drift's own: decoded, snapped, step after step. It often settles "
                "into a loop, one phrase repeated for ever: the drift's attractor. Noise can knock the text out "
                "of it: the scan below raises s on one seed until the paths' texts stop looping.")
    prompt = st.text_input("Prompt", value=session.DEFAULT_PROMPT, key="attractor_prompt", **bind)
    if not prompt.strip():
        st.error("The prompt is empty: type some text to start the drift from.")
        return
    try:
        with st.spinner("Following the drift and scanning the diffusion scale ..."):
            a = compute.attractor(folder, stamp, prompt)
    except ValueError as exc:
        st.error(f"Cannot follow the drift: {exc}")
        return
    cols = st.columns(3)
    if a["kind"] == "none":
        cols[0].metric("Attractor", "none found")
        st.info(f"The drift-only text does not repeat within {a['tokens']} tokens: no loop to escape.")
    else:
        cols[0].metric("Attractor", f"{a['kind']} of {a['period']} token{'s' if a['period'] != 1 else ''}")
        cols[1].metric("Entered at token", f"{a['start'] + 1}")
        cols[2].metric("Smallest s that escapes", f"{a['escape_scale']:.3g}" if a["escape_scale"]
                       else f"none up to {max(a['scales']):g}")
        st.markdown("<b>The loop:</b> " + " → ".join(f"<code>{token_html.escape_text(t)}</code>" for t in a["cycle"])
                    + " → …", unsafe_allow_html=True)
    text = a["drift_text"]
    start = a["start"] if a["start"] is not None else len(text)
    marks = [1.0 if k >= start else float("nan") for k in range(len(text))]
    with st.expander(f"The drift-only text ({a['tokens']} tokens; shaded from where it loops)"):
        st.markdown(token_html.token_spans(text, marks, 1.0, (31, 111, 139), "in the loop", "{:.0f}"),
                    unsafe_allow_html=True)
    if a["scales"]:
        figures.show(cl.escape_chart(a["scales"], a["escaped"], a["same_cycle"], a["escape_scale"]), key="escape",
                     name="escape_scan")
        st.caption("A path escapes when its text no longer ends in a loop. Even a tiny s moves the paths off the "
                   "drift's own loop (dashed), but they may fall into another; only a larger s keeps them from "
                   "looping at all.")


attractor_view()
