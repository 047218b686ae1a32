"""Charts of the Primer's 2-D toy SDE (pure: arrays in, Figure out)."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from .charts import BOUND_COLOR, DIFFUSION_COLOR, PALETTE, band, quantiles, style


def field_chart(fld: dict, t: np.ndarray, x: np.ndarray, title: str, max_paths: int = 12) -> go.Figure:
    """Potential contours, drift arrows and sample paths.

    fld: from toy.field (arrow grid x, y, u, v; fine grid and potential U); x: (paths, steps + 1, 2)."""
    fig = go.Figure()
    fig.add_trace(go.Contour(x=fld["fine"], y=fld["fine"], z=fld["U"], colorscale="Blues", reversescale=True,
                             opacity=0.35, showscale=False, contours={"showlines": False}, hoverinfo="skip",
                             name="potential U"))
    mag = np.hypot(fld["u"], fld["v"])
    step = (fld["x"].max() - fld["x"].min()) / (math.sqrt(len(fld["x"])) - 1)
    # Arrows show direction; length grows with |mu| but is capped at one grid step so they never overlap.
    length = 0.85 * step * np.clip(mag / (np.percentile(mag, 90) or 1.0), 0.15, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ux, vy = np.where(mag > 0, fld["u"] / mag, 0.0), np.where(mag > 0, fld["v"] / mag, 0.0)
    ex, ey = fld["x"] + ux * length, fld["y"] + vy * length
    lx, ly = [], []
    for a, b, c, d in zip(fld["x"], fld["y"], ex, ey):
        lx += [a, c, None]
        ly += [b, d, None]
    fig.add_trace(go.Scatter(x=lx, y=ly, mode="lines", line={"color": "#34495e", "width": 1.2}, hoverinfo="skip",
                             name="drift mu(x)"))
    fig.add_trace(go.Scatter(x=ex, y=ey, mode="markers", showlegend=False, hoverinfo="skip",
                             marker={"symbol": "triangle-up", "size": 7, "color": "#34495e",
                                     "angle": 90 - np.degrees(np.arctan2(vy, ux))}))
    for i, p in enumerate(x[:max_paths]):
        fig.add_trace(go.Scatter(x=p[:, 0], y=p[:, 1], mode="lines", line={"width": 1.2, "color": PALETTE[i % 10]},
                                 name="sample paths" if i == 0 else f"path {i + 1}", showlegend=i == 0,
                                 legendgroup="paths",
                                 hovertemplate=f"path {i + 1}<br>x1=%{{x:.2f}}<br>x2=%{{y:.2f}}<extra></extra>"))
    if len(x):
        fig.add_trace(go.Scatter(x=[x[0, 0, 0]], y=[x[0, 0, 1]], mode="markers", name="start x0",
                                 marker={"symbol": "star", "size": 15, "color": "#f4a259",
                                         "line": {"width": 1, "color": BOUND_COLOR}}))
    lim = float(fld["fine"].max())
    fig = style(fig, title, "x1 (state units)", "x2 (state units)", height=520)
    fig.update_xaxes(range=[-lim, lim])
    fig.update_yaxes(range=[-lim, lim], scaleanchor="x", scaleratio=1)
    return fig


def toy_v_chart(t: np.ndarray, V: np.ndarray, bound: np.ndarray, exact: np.ndarray | None,
                ultimate: float) -> go.Figure:
    """V = |x|^2 along the toy paths: 10-90% band, mean, Lyapunov bound, exact mean (OU only)."""
    fig = go.Figure()
    q = quantiles(V, (0.1, 0.9))
    band(fig, t, q[0], q[1], DIFFUSION_COLOR, "10-90% of paths", 0.2)
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(V, axis=0)
    fig.add_trace(go.Scatter(x=t, y=mean, mode="lines", line={"color": DIFFUSION_COLOR, "width": 2.5},
                             name="simulated mean E V"))
    fig.add_trace(go.Scatter(x=t, y=bound, mode="lines", line={"color": BOUND_COLOR, "width": 2.5, "dash": "dash"},
                             name="Lyapunov bound"))
    if exact is not None:
        fig.add_trace(go.Scatter(x=t, y=exact, mode="lines", line={"color": PALETTE[2], "width": 2, "dash": "dot"},
                                 name="exact E V (OU formula)"))
    if math.isfinite(ultimate):
        fig.add_hline(y=ultimate, line={"color": BOUND_COLOR, "dash": "dot", "width": 1},
                      annotation_text="beta/alpha", annotation_position="top right")
    return style(fig, "V = |x|^2 over time, against the bound", "time t (time units)", "V (state units^2)")
