"""Pure chart functions: arrays in, `plotly.graph_objects.Figure` out (no Streamlit calls).

Shared styling and the Generate page's charts live here; the other pages' charts are in
`charts_*.py`. Every figure has a title and labelled axes with units.
"""

from __future__ import annotations

import warnings

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative

PALETTE = qualitative.D3 + qualitative.Set2
DRIFT_COLOR, DIFFUSION_COLOR, BOUND_COLOR, MUTED = "#1f6f8b", "#d1495b", "#2b2d42", "#9aa5b1"
UNIT = "std. units"  # standardised embedding units: each dimension divided by its spread over the vocabulary
TIME_AXIS = "tokens after the prompt (t / dt)"


def style(fig: go.Figure, title: str, x_title: str, y_title: str, height: int = 420) -> go.Figure:
    """Title, axis labels and a compact, readable layout shared by every chart."""
    fig.update_layout(
        title={"text": title, "x": 0.0, "xanchor": "left", "font": {"size": 16}},
        height=height, margin={"l": 70, "r": 20, "t": 60, "b": 60}, hovermode="closest",
        legend={"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0.0},
        template="plotly_white",
    )
    fig.update_xaxes(title_text=x_title, showline=True, linecolor="#ccd3da", zeroline=False)
    fig.update_yaxes(title_text=y_title, showline=True, linecolor="#ccd3da", zeroline=False)
    return fig


def rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def quantiles(values: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """Quantiles across rows (paths) at each column, ignoring NaN: (paths, steps) -> (len(qs), steps)."""
    v = np.asarray(values, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column (every path stopped) stays NaN
        return np.nanquantile(v, qs, axis=0)


def band(fig: go.Figure, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, color: str, name: str, alpha: float,
         **kw) -> None:
    """A filled band between two curves (lower edge drawn first, upper filled down to it)."""
    fig.add_trace(go.Scatter(x=x, y=lo, mode="lines", line={"width": 0}, showlegend=False, hoverinfo="skip",
                             legendgroup=name, **kw))
    fig.add_trace(go.Scatter(x=x, y=hi, mode="lines", line={"width": 0}, fill="tonexty",
                             fillcolor=rgba(color, alpha), name=name, legendgroup=name, hoverinfo="skip", **kw))


def fan_chart(t: np.ndarray, values: np.ndarray, drift_only: np.ndarray | None, quantity: str, unit: str,
              title: str) -> go.Figure:
    """Quantile bands (5-95%, 25-75%) and the median of a per-step quantity across paths,
    each path faintly, and the drift-only path (scale 0) dashed.

    t: (steps + 1,); values: (paths, steps + 1); drift_only: (steps + 1,) or None.
    """
    fig = go.Figure()
    q = quantiles(values, (0.05, 0.25, 0.5, 0.75, 0.95))
    band(fig, t, q[0], q[4], DIFFUSION_COLOR, "5-95% of paths", 0.15)
    band(fig, t, q[1], q[3], DIFFUSION_COLOR, "25-75% of paths", 0.3)
    for i, row in enumerate(values):
        fig.add_trace(go.Scatter(x=t, y=row, mode="lines", line={"width": 1, "color": rgba(PALETTE[i % 10], 0.45)},
                                 name=f"path {i + 1}", showlegend=False,
                                 hovertemplate=f"path {i + 1}<br>t=%{{x}}<br>{quantity}=%{{y:.3g}}<extra></extra>"))
    fig.add_trace(go.Scatter(x=t, y=q[2], mode="lines", line={"width": 2.5, "color": DIFFUSION_COLOR},
                             name="median of paths"))
    if drift_only is not None:
        fig.add_trace(go.Scatter(x=t, y=drift_only, mode="lines+markers", marker={"size": 5},
                                 line={"width": 2.5, "dash": "dash", "color": BOUND_COLOR},
                                 name="drift only (scale 0)"))
    return style(fig, title, TIME_AXIS, f"{quantity} ({unit})")


def map_chart(ref_xy: np.ndarray, ref_tokens: list[str], paths_xy: list[np.ndarray], hovers: list[list[str]],
              drift_xy: np.ndarray | None, drift_hover: list[str] | None, map_label: str) -> go.Figure:
    """Sample paths drawn on a 2-D map of the embedding space over its reference tokens.

    ref_xy: (n, 2) reference token coordinates; paths_xy: per path (steps + 1, 2), NaN after
    divergence; hovers: per path, one label per point (its nearest token); drift_xy: (steps + 1, 2).
    """
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=ref_xy[:, 0], y=ref_xy[:, 1], mode="markers", text=ref_tokens,
                             marker={"size": 4, "color": rgba("#7f8c8d", 0.35)}, name="reference tokens",
                             hovertemplate="token %{text}<extra></extra>"))
    for i, (xy, hv) in enumerate(zip(paths_xy, hovers)):
        color = PALETTE[i % len(PALETTE)]
        fig.add_trace(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="lines+markers", text=hv, name=f"path {i + 1}",
                                 line={"width": 1.5, "color": color}, marker={"size": 6, "color": color},
                                 hovertemplate=f"path {i + 1}<br>%{{text}}<extra></extra>"))
    if drift_xy is not None:
        fig.add_trace(go.Scatter(x=drift_xy[:, 0], y=drift_xy[:, 1], mode="lines+markers", text=drift_hover,
                                 name="drift only (scale 0)", line={"width": 3, "dash": "dash", "color": BOUND_COLOR},
                                 marker={"size": 7, "color": BOUND_COLOR, "symbol": "diamond"},
                                 hovertemplate="drift only<br>%{text}<extra></extra>"))
    if paths_xy:
        start = paths_xy[0][0]
        fig.add_trace(go.Scatter(x=[start[0]], y=[start[1]], mode="markers", name="prompt's last token",
                                 marker={"size": 16, "symbol": "star", "color": "#f4a259",
                                         "line": {"width": 1, "color": BOUND_COLOR}}, hoverinfo="name"))
    fig = style(fig, f"Paths on the {map_label}", "map axis 1 (arbitrary units)", "map axis 2 (arbitrary units)",
                height=520)
    fig.update_layout(legend={"y": -0.14})
    return fig


def magnitude_chart(t: np.ndarray, drift: np.ndarray, diffusion: np.ndarray) -> go.Figure:
    """Per-step sizes of the two terms, |mu dt| and s sqrt(sum sigma^2 dt): median and
    25-75% band across paths. t: (steps,) step start times; drift, diffusion: (paths, steps)."""
    fig = go.Figure()
    for values, color, name in ((drift, DRIFT_COLOR, "drift |μ dt|"),
                                (diffusion, DIFFUSION_COLOR, "diffusion s·√(Σσ² dt)")):
        q = quantiles(values, (0.25, 0.5, 0.75))
        band(fig, t, q[0], q[2], color, f"{name.split()[0]}: 25-75% of paths", 0.2)
        fig.add_trace(go.Scatter(x=t, y=q[1], mode="lines+markers", marker={"size": 5}, line={"color": color,
                                 "width": 2.5}, name=f"{name}, median"))
    return style(fig, "Drift versus diffusion: size of each token step", "token step k -> k+1 (t / dt)",
                 f"step size ({UNIT})")


def paths_frame_rows(result: dict, xy: list[np.ndarray], map_label: str, drift: np.ndarray,
                     diffusion: np.ndarray) -> list[dict]:
    """Long-format rows (one per path and step) for the CSV download."""
    rows = []
    n_paths, n_steps = result["token_ids"].shape
    for i in range(n_paths):
        toks = result["token_strs"][i]
        for k in range(n_steps + 1):
            row = {"path": i + 1, "step": k, "t": float(result["t"][k]),
                   "token": toks[k - 1] if 1 <= k <= len(toks) else ("<prompt>" if k == 0 else ""),
                   "decode_prob": float(result["probs"][i, k - 1]) if k >= 1 else np.nan,
                   "distance_from_mean": float(np.linalg.norm(result["states"][i, k])),
                   f"{map_label} x": float(xy[i][k, 0]), f"{map_label} y": float(xy[i][k, 1]),
                   "drift_step": float(drift[i, k]) if k < n_steps else np.nan,
                   "diffusion_step": float(diffusion[i, k]) if k < n_steps else np.nan,
                   "diverged": bool(result["diverged"][i])}
            rows.append(row)
    return rows
