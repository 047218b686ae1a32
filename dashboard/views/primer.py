"""Primer: drift versus diffusion on a 2-D toy SDE (pure numpy, instant)."""

import math

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import charts_primer as cp
from dashboard import charts_stability as cs
from dashboard import figures, toy
from sdecore import stability

st.title("Primer: drift and diffusion in two dimensions")
st.markdown(
    "Before 384 dimensions, two. A point moves by **dX = mu(X) dt + sigma dW**: the **drift** mu (arrows) pulls it "
    "downhill on a potential, the **diffusion** sigma shakes it. Raise the noise and the paths spread; raise the "
    "drift strength and they are held tighter. With **V = |x|²** the generator is **LV = 2 x·mu + 2 sigma²**: "
    "where LV < 0 the point is expected to come back. The text SDE on the other pages works the same way.")

c = st.columns([1.4, 1, 1, 0.8, 0.8])
kind = c[0].radio("Drift", toy.KINDS, key="toy_kind", horizontal=True,
                  help="Ornstein-Uhlenbeck: mu = -k x, one basin. Double well: mu = -k (x1^3 - x1, x2), two basins "
                       "at x1 = ±1.")
strength = c[1].slider("Drift strength k", 0.0, 3.0, 1.0, step=0.05, key="toy_strength")
noise = c[2].slider("Noise sigma", 0.0, 2.0, 0.5, step=0.05, key="toy_noise")
paths = c[3].number_input("Paths (1-500)", 1, 500, 40, key="toy_paths")
seed = c[4].number_input("Seed", 0, 2**31 - 1, 0, key="toy_seed")

x0 = (2.0, 1.5) if kind == toy.KINDS[0] else (0.2, 1.5)
try:
    t, x = toy.simulate(kind, float(strength), float(noise), int(paths), seed=int(seed), x0=x0)
except ValueError as exc:
    st.error(f"Cannot simulate the toy SDE: {exc}")
    st.stop()
V, LV = toy.lyapunov(kind, x, float(strength), float(noise))
env = stability.fit_envelope(V, LV)
bound = stability.lyapunov_bound(float(V[0, 0]), env.alpha, env.beta, t)
exact = toy.ou_mean_V(t, x0, float(strength), float(noise)) if kind == toy.KINDS[0] else None

m = st.columns(4)
m[0].metric("alpha (fitted)", f"{env.alpha:.3g}", help="For OU the exact value is 2k.")
m[1].metric("beta (fitted)", f"{env.beta:.3g}", help="For OU the exact value is 2 sigma^2.")
m[2].metric("beta/alpha", f"{env.ultimate:.3g}" if math.isfinite(env.ultimate) else "unbounded")
if exact is not None:
    m[3].metric("exact alpha, beta (OU)", f"{2 * strength:.3g}, {2 * noise ** 2:.3g}")

left, right = st.columns([1.1, 1])
with left:
    figures.show(cp.field_chart(toy.field(kind, float(strength)), t, x, f"{kind}: drift field and sample paths"),
                    key="toy_field")
    st.caption("Arrows show the drift; with noise 0 every path follows them to the bottom of a basin. In the double "
               "well, enough noise lets paths hop between the two basins.")
with right:
    figures.show(cp.toy_v_chart(t, V, bound, exact, env.ultimate), key="toy_v")
    st.caption("The simulated mean stays under the dashed Lyapunov bound; for Ornstein-Uhlenbeck the bound is exact "
               "and the dotted formula lies on it.")
    fig = cs.envelope_chart(V[:, ::4], LV[:, ::4], env.alpha, env.beta, t[::4])
    fig.update_xaxes(title_text="V = |x|^2 (state units^2)")
    fig.update_yaxes(title_text="LV (state units^2 per time unit)")
    figures.show(fig, key="toy_envelope")
    st.caption("Each point is one state; the line LV = -alpha V + beta lies above nearly all of them. Noise lifts "
               "every point by 2 sigma^2.")

df = pd.DataFrame({"path": np.repeat(np.arange(1, x.shape[0] + 1), x.shape[1]), "t": np.tile(t, x.shape[0]),
                   "x1": x[..., 0].ravel(), "x2": x[..., 1].ravel(), "V": V.ravel(), "LV": LV.ravel()})
st.download_button("Toy paths (CSV)", df.to_csv(index=False), "toy_paths.csv", "text/csv", on_click="ignore")
