"""Charts of Lyapunov stability and process properties (pure: arrays in, Figure out).

V(x) = |x - x*|^2, LV = 2 (x - x*).mu + s^2 sum sigma^2, the envelope LV <= -alpha V + beta and
the bound E V(t) <= V(0) e^{-alpha t} + beta/alpha (1 - e^{-alpha t}) (docs/design.md §4.1).
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .charts import BOUND_COLOR, DIFFUSION_COLOR, DRIFT_COLOR, MUTED, TIME_AXIS, UNIT, band, quantiles, rgba, style

V_AXIS = f"V = |x - x*|^2 ({UNIT}^2)"
LV_AXIS = f"LV ({UNIT}^2 per token)"


def _nanmean(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    n = np.isfinite(a).sum(0)
    return np.where(n > 0, np.nansum(a, 0) / np.maximum(n, 1), np.nan)


def v_chart(t: np.ndarray, V: np.ndarray, mean_V: np.ndarray, bound: np.ndarray, ultimate: float,
            radius2: float) -> go.Figure:
    """V along paths (10-90% band and mean) against the Lyapunov bound, beta/alpha and radius^2.

    t: (steps + 1,); V: (paths, steps + 1); mean_V, bound: (steps + 1,)."""
    fig = go.Figure()
    q = quantiles(V, (0.1, 0.9))
    band(fig, t, q[0], q[1], DIFFUSION_COLOR, "10-90% of paths", 0.2)
    fig.add_trace(go.Scatter(x=t, y=mean_V, mode="lines+markers", marker={"size": 4},
                             line={"color": DIFFUSION_COLOR, "width": 2.5}, name="simulated mean E V"))
    fig.add_trace(go.Scatter(x=t, y=bound, mode="lines", line={"color": BOUND_COLOR, "width": 2.5, "dash": "dash"},
                             name="bound V(0)e^(-alpha t) + beta/alpha (1 - e^(-alpha t))"))
    if math.isfinite(ultimate):
        fig.add_hline(y=ultimate, line={"color": BOUND_COLOR, "dash": "dot", "width": 1},
                      annotation_text="beta/alpha", annotation_position="top left")
    fig.add_hline(y=radius2, line={"color": MUTED, "dash": "dot", "width": 1.5},
                  annotation_text="vocabulary radius^2", annotation_position="bottom right")
    return style(fig, "Lyapunov function V along the paths, against the bound", TIME_AXIS, V_AXIS)


def lv_time_chart(t: np.ndarray, LV: np.ndarray) -> go.Figure:
    """The generator LV along paths: 10-90% band and mean; below zero V is expected to fall."""
    fig = go.Figure()
    q = quantiles(LV, (0.1, 0.9))
    band(fig, t, q[0], q[1], DRIFT_COLOR, "10-90% of paths", 0.2)
    fig.add_trace(go.Scatter(x=t, y=_nanmean(LV), mode="lines+markers", marker={"size": 4},
                             line={"color": DRIFT_COLOR, "width": 2.5}, name="mean LV"))
    fig.add_hline(y=0, line={"color": MUTED, "width": 1})
    return style(fig, "Generator LV = 2(x - x*).mu + s^2 sum sigma^2 along the paths", TIME_AXIS, LV_AXIS)


def envelope_chart(V: np.ndarray, LV: np.ndarray, alpha: float, beta: float, t: np.ndarray | None = None,
                   max_points: int = 4000) -> go.Figure:
    """Every (V, LV) state as a point, coloured by time, and the fitted line LV = -alpha V + beta."""
    v, lv = np.asarray(V, dtype=np.float64), np.asarray(LV, dtype=np.float64)
    tt = np.broadcast_to(t, v.shape) if t is not None else np.zeros_like(v)
    keep = np.isfinite(v) & np.isfinite(lv)
    v, lv, tt = v[keep], lv[keep], tt[keep]
    if v.size > max_points:  # a readable scatter; the fit itself used every point
        pick = np.random.default_rng(0).choice(v.size, max_points, replace=False)
        v, lv, tt = v[pick], lv[pick], tt[pick]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=v, y=lv, mode="markers", name="states (V, LV)",
                             marker={"size": 5, "color": tt, "colorscale": "Viridis", "opacity": 0.6,
                                     "colorbar": {"title": {"text": "t (tokens)"}, "thickness": 12}},
                             hovertemplate="V=%{x:.3g}<br>LV=%{y:.3g}<extra></extra>"))
    if v.size:
        xs = np.linspace(0.0, float(v.max()) * 1.05, 50)
        fig.add_trace(go.Scatter(x=xs, y=-alpha * xs + beta, mode="lines", line={"color": BOUND_COLOR, "width": 2.5},
                                 name=f"envelope LV = -{alpha:.3g} V + {beta:.3g}"))
    fig.add_hline(y=0, line={"color": MUTED, "width": 1})
    return style(fig, "Fitted envelope LV <= -alpha V + beta (99% of states)", V_AXIS, LV_AXIS)


def sweep_chart(scales: np.ndarray, ultimate: np.ndarray, beta: np.ndarray, diverged: np.ndarray, radius2: float,
                critical: float | None, current: float | None = None) -> go.Figure:
    """The ultimate bound beta/alpha and beta against the diffusion scale (log axis), the
    vocabulary radius^2, the critical scale, and the share of diverged paths (right axis)."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    finite = np.where(np.isfinite(ultimate), ultimate, np.nan)
    fig.add_trace(go.Scatter(x=scales, y=finite, mode="lines+markers", name="ultimate bound beta/alpha",
                             line={"color": DIFFUSION_COLOR, "width": 2.5}), secondary_y=False)
    fig.add_trace(go.Scatter(x=scales, y=np.maximum(beta, 1e-9), mode="lines+markers", name="beta",
                             line={"color": DRIFT_COLOR, "width": 1.5, "dash": "dot"}), secondary_y=False)
    fig.add_trace(go.Bar(x=scales, y=diverged, name="share of paths diverged", marker_color=rgba(MUTED, 0.35),
                         width=0.15), secondary_y=True)
    fig.add_hline(y=radius2, line={"color": BOUND_COLOR, "dash": "dash", "width": 1.5},
                  annotation_text="vocabulary radius^2", annotation_position="top left")
    if critical is not None:
        fig.add_vline(x=critical, line={"color": DIFFUSION_COLOR, "dash": "dash", "width": 1.5},
                      annotation_text=f"critical s = {critical:.2f}", annotation_position="top right")
    if current is not None:
        fig.add_vline(x=current, line={"color": MUTED, "width": 1}, annotation_text="your s",
                      annotation_position="bottom right")
    style(fig, "How the bound grows with the diffusion scale", "diffusion scale s", "")
    fig.update_yaxes(title_text=f"beta/alpha and beta ({UNIT}^2)", type="log", secondary_y=False)
    fig.update_yaxes(title_text="share of paths diverged", range=[0, 1.05], secondary_y=True, showgrid=False,
                     tickmode="array", tickvals=[0, 0.25, 0.5, 0.75, 1.0], tickformat=".0%")
    return fig


def qv_chart(t: np.ndarray, qv: np.ndarray, isigma2: np.ndarray) -> go.Figure:
    """Realised quadratic variation against s^2 int sum sigma^2 dt, means across paths."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=t, y=_nanmean(qv), mode="lines+markers", marker={"size": 4},
                             line={"color": DIFFUSION_COLOR, "width": 2.5},
                             name="realised QV sum |x_(k+1) - x_k|^2"))
    fig.add_trace(go.Scatter(x=t, y=_nanmean(isigma2), mode="lines", line={"color": BOUND_COLOR, "dash": "dash",
                             "width": 2.5}, name="s^2 * integral of sum sigma^2 dt"))
    return style(fig, "Quadratic variation against the integrated diffusion", TIME_AXIS, f"mean over paths ({UNIT}^2)")


def acf_chart(acf: np.ndarray) -> go.Figure:
    """Autocorrelation of the increments at lags 0..L (zero at every lag >= 1 for Brownian motion)."""
    lags = np.arange(len(acf))
    fig = go.Figure(go.Bar(x=lags, y=acf, marker_color=DRIFT_COLOR, name="increment autocorrelation"))
    fig.add_hline(y=0, line={"color": MUTED, "width": 1})
    return style(fig, "Autocorrelation of the increments dx", "lag (tokens)", "correlation (unitless)")
