"""Same noise: one seed (one Brownian path) at several diffusion scales, against the drift-only text."""

import numpy as np
import streamlit as st

from dashboard import charts_learned as cl
from dashboard import compute, figures, session, token_html

st.title("Same noise, different scales")
st.markdown(
    "A seed fixes the Brownian path **W**; the scale **s** only multiplies it, dx = mu dt + **s** sigma dW. So the "
    "runs below share every random number: what differs between them is how hard the same noise pushes. Each row "
    "is the same path at another **s**, aligned token by token under the drift-only text (s = 0); shaded tokens "
    "differ from it, and the outlined one is where the path first leaves it.")

ck, folder, stamp = session.require_checkpoint()
lo_p, hi_p = session.PAGE_LIMITS["paths"]
lo_t, hi_t = session.PAGE_LIMITS["tokens"]
bind = session.URL_BOUND
SCALE_CHOICES = ["0.01", "0.02", "0.05", "0.1", "0.25", "0.5", "1", "1.5", "2", "3", "5"]

prompt = st.text_area("Prompt", value=session.DEFAULT_PROMPT, key="prompt", height=68, **bind)
picked = st.multiselect("Diffusion scales s (two to four)", SCALE_CHOICES, default=["0.05", "0.1", "0.25", "1"],
                        max_selections=4, key="scales", **bind,
                        help="Each is run on the same seed: the same Brownian path, scaled.")
c = st.columns(4)
paths = c[0].number_input(f"Paths ({lo_p}-{hi_p})", lo_p, hi_p, 16, key="paths", **bind,
                          help="For the chart of how many paths have left the drift-only text.")
tokens = c[1].number_input(f"Tokens ({lo_t}-{hi_t})", lo_t, hi_t, 24, key="tokens", **bind)
seed = c[2].number_input("Seed", 0, 2**31 - 1, 0, key="seed", **bind)
snap = c[3].toggle("Snap", value=True, key="snap", **bind,
                   help="After each token, set x to the decoded token's embedding (as on the Generate page).")

if not prompt.strip():
    st.error("The prompt is empty: type some text to continue, e.g. “How can I improve my sleep?”.")
    st.stop()
scales = tuple(sorted({float(s) for s in picked}))
if len(scales) < 2:
    st.info("Pick at least two diffusion scales to compare.")
    st.stop()

try:
    with st.spinner("Simulating the same paths at each scale ..."):
        cmp = compute.compare(folder, stamp, prompt, scales, int(paths), int(tokens), int(seed), bool(snap))
except ValueError as exc:
    st.error(f"Cannot compare: {exc}")
    st.stop()

m = st.columns(len(scales))
for col, s, first in zip(m, cmp["scales"], cmp["first"]):
    left = [f for f in first if f >= 0]
    col.metric(f"s = {s:g}: paths that left", f"{len(left)} / {len(first)}",
               help="Paths whose tokens differ from the drift-only text somewhere in the run.")
    col.caption(f"median first departure: token {int(np.median(left)) + 1}" if left else "none left the drift's text")

st.subheader("The texts, aligned")
which = st.number_input(f"Path to align (1-{int(paths)})", 1, int(paths), 1, key="align_path", **bind,
                        help="The same path (the same noise) at every scale.")
i = min(int(which), int(paths)) - 1
rows = [(f"s = {s:g}", toks[i], first[i]) for s, toks, first in zip(cmp["scales"], cmp["tokens"], cmp["first"])]
with st.container(key="aligned"):
    st.markdown(token_html.aligned_table(cmp["drift"], rows), unsafe_allow_html=True)
st.caption("Read down a column: the same moment under more and more noise. Small s leaves the drift's text late, or "
           "never; large s leaves at once. After it leaves, a path is on its own: snapping to a new token changes "
           "everything after it.")

figures.show(cl.departure_share_chart(cmp["scales"], cmp["share"]), key="departure_share", name="departure_share")
st.caption("Each curve climbs as the paths leave the drift-only text, earlier for larger s: the counterfactual "
           "replay of one noise at several strengths, over all the paths.")
