"""Stability: Lyapunov function V and generator LV along paths, the fitted bound, the scale sweep."""

import math

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import charts_stability as cs
from dashboard import compute, figures, session

st.title("Stability")
st.markdown(
    "With **V(x) = |x - x\\*|²** (x\\* the vocabulary mean) the SDE's generator is "
    "**LV = 2 (x - x\\*)·mu + s² Σ sigma²**. If **LV ≤ -alpha V + beta**, then "
    "**E V(t) ≤ V(0) e^(-alpha t) + beta/alpha (1 - e^(-alpha t))**: paths stay within beta/alpha of the centre. "
    "When beta/alpha outgrows the vocabulary cloud, text goes off the rails.")

ck, folder, stamp = session.require_checkpoint()
lo_p, hi_p = session.PAGE_LIMITS["paths"]
lo_t, hi_t = session.PAGE_LIMITS["tokens"]
lo_s, hi_s = session.PAGE_LIMITS["diffusion_scale"]
lo_k, hi_k = session.PAGE_LIMITS["substeps"]
bind = session.URL_BOUND
prompt = st.text_area("Prompt", value=session.DEFAULT_PROMPT, key="prompt", height=68, **bind)
scale = st.slider("Diffusion magnitude s", lo_s, hi_s, 1.0, step=0.05, key="scale", **bind)
c = st.columns(4)
paths = c[0].number_input(f"Paths ({lo_p}-{hi_p})", lo_p, hi_p, 16, key="stab_paths", **bind)
tokens = c[1].number_input(f"Tokens ({lo_t}-{hi_t})", lo_t, hi_t, 24, key="stab_tokens", **bind)
substeps = c[2].number_input(f"Substeps ({lo_k}-{hi_k})", lo_k, hi_k, 4, key="stab_substeps", **bind,
                             help="Euler-Maruyama steps per token. The bound is for the SDE: use 4 or more.")
seed = c[3].number_input("Seed", 0, 2**31 - 1, 0, key="seed", **bind)

if not prompt.strip():
    st.error("The prompt is empty: type some text to start the paths from.")
    st.stop()
if substeps < 4:
    st.warning(f"With {substeps} substep(s) per token the paths are the coarse Euler chain, not the SDE the bound "
               "describes; use 4 or more.")

try:
    with st.spinner("Simulating unsnapped paths ..."):
        ly = compute.lyapunov(folder, stamp, prompt, int(paths), int(tokens), float(scale), int(substeps), int(seed))
except ValueError as exc:
    st.error(f"Cannot simulate: {exc}")
    st.stop()

m = st.columns(4)
m[0].metric("alpha (decay rate, per token)", f"{ly['alpha']:.3g}")
m[1].metric("beta", f"{ly['beta']:.3g}")
m[2].metric("beta/alpha (ultimate bound)", f"{ly['ultimate']:.3g}" if math.isfinite(ly["ultimate"]) else "unbounded")
m[3].metric("vocabulary radius^2", f"{ly['radius2']:.3g}")
note = (f"Paths are continuous (no snapping), integrated with {substeps} Euler-Maruyama substeps per token "
        f"(substeps = 1 would be the coarse Euler chain); {paths} paths, seed {seed}.")
if ly["diverged_share"] > 0:
    note += f" {ly['diverged_share']:.0%} of the paths diverged and stop there."
st.caption(note)

left, right = st.columns(2)
with left:
    figures.show(cs.v_chart(ly["t"], ly["V"], ly["mean_V"], ly["bound"], ly["ultimate"], ly["radius2"]),
                    key="v_chart")
    st.caption("The simulated mean should stay under the dashed bound; both level off near beta/alpha when alpha > 0.")
with right:
    figures.show(cs.envelope_chart(ly["V"], ly["LV"], ly["alpha"], ly["beta"], ly["t"]), key="envelope")
    st.caption("Nearly every point lies under the line; the steeper it falls (alpha), the harder the drift pulls back.")
left, right = st.columns(2)
with left:
    figures.show(cs.lv_time_chart(ly["t"], ly["LV"]), key="lv_time")
    st.caption("Negative LV means V is expected to shrink at that moment; raising s lifts LV by s^2 sum sigma^2.")

sweep_slot = right.container()  # filled last: the sweep is the slow part, the rest shows first

st.subheader("Process properties")
left, right = st.columns(2)
with left:
    figures.show(cs.qv_chart(ly["t"], ly["qv"], ly["isigma2"]), key="qv")
    st.caption("The realised quadratic variation tracks s^2 times the integrated sigma^2 when diffusion dominates; "
               "on the token grid the drift's own steps add to it.")
with right:
    if ly["acf"] is not None:
        figures.show(cs.acf_chart(ly["acf"]), key="acf")
        st.caption("Brownian increments are uncorrelated; bars away from zero show the memory the drift carries.")
    else:
        st.info("Too few steps for an increment autocorrelation: ask for more tokens.")

@st.fragment
def sweep_section(paths: int, tokens: int) -> None:
    """The scale sweep, the page's slow part: drawn last, and a fragment, so that choosing another
    grid reruns this section alone (each grid's sweep is cached once computed)."""
    grid = st.radio("Sweep grid", list(compute.SWEEP_GRIDS), horizontal=True, key="sweep_grid", **bind,
                    help="The scales the envelope is fitted at; the critical scale is interpolated between them.")
    scales = compute.SWEEP_GRIDS[grid]
    with st.spinner(f"Sweeping {len(scales)} diffusion scales (cached afterwards) ..."):
        sw = compute.sweep(folder, stamp, prompt, scales, paths, tokens, int(substeps), int(seed))
    figures.show(cs.sweep_chart(sw["scales"], sw["ultimate"], sw["beta"], sw["diverged_share"], sw["radius2"],
                                   sw["critical"], float(scale)), key="sweep")
    crit = (f"critical scale s ≈ {sw['critical']:.2f}" if sw["critical"] is not None
            else "no critical scale in the sweep")
    st.caption(f"Where beta/alpha crosses the vocabulary radius^2 the text goes off the rails: {crit}. "
               f"Sweep: {paths} paths x {tokens} tokens per scale, same seed.")
    sweep_df = pd.DataFrame({k: sw[k] for k in ("scales", "alpha", "beta", "ultimate", "diverged_share")})
    sweep_df["radius2"], sweep_df["critical_scale"] = sw["radius2"], sw["critical"]
    st.download_button("Scale sweep (CSV)", sweep_df.to_csv(index=False), "stability_sweep.csv", "text/csv",
                       on_click="ignore")


with sweep_slot:
    sweep_section(min(int(paths), 12), min(int(tokens), 20))

n_paths, n_t = ly["V"].shape
paths_df = pd.DataFrame({"path": np.repeat(np.arange(1, n_paths + 1), n_t), "t": np.tile(ly["t"], n_paths),
                         "V": ly["V"].ravel(), "LV": ly["LV"].ravel(), "quadratic_variation": ly["qv"].ravel(),
                         "integrated_sigma2": ly["isigma2"].ravel()})
st.download_button("V and LV per path (CSV)", paths_df.to_csv(index=False), "lyapunov_paths.csv", "text/csv",
                   on_click="ignore")
