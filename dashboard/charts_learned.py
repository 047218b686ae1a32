"""Charts of the same noise at several scales and of what the nets learned (pure: arrays in,
Figure out; docs/design.md §4.6)."""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go

from .charts import BOUND_COLOR, DIFFUSION_COLOR, DRIFT_COLOR, PALETTE, base_layout, figure

SIGMA_AXIS = "diffusion size sqrt(mean σ²) (std. units per √token)"


def departure_share_chart(scales: list[float], shares: list[list[float]]) -> go.Figure:
    """Share of paths that have left the drift-only text by each step, one line per scale."""
    traces = []
    for i, (s, share) in enumerate(zip(scales, shares)):
        k = np.arange(1, len(share) + 1)
        traces.append({"type": "scatter", "x": k, "y": share, "mode": "lines+markers", "name": f"s = {s:g}",
                       "line": {"width": 2.5, "color": PALETTE[i % len(PALETTE)], "shape": "hv"},
                       "marker": {"size": 5},
                       "hovertemplate": f"s = {s:g}<br>by token %{{x}}: %{{y:.0%}} of paths<extra></extra>"})
    layout = base_layout("Paths that have left the drift-only text", "token (1 = the first one generated)",
                         "share of paths that have left")
    layout["yaxis"].update({"range": [-0.03, 1.03], "tickformat": ".0%"})
    return figure(traces, layout)


def ranking_chart(rows: list[dict], title: str, color: str) -> go.Figure:
    """Tokens and their diffusion size as horizontal bars, the first row on top."""
    toks = [r["token"] for r in rows][::-1]
    sig = [r["sigma"] for r in rows][::-1]
    traces = [{"type": "bar", "orientation": "h", "x": sig, "y": [f"{t} " for t in toks], "name": "tokens",
               "marker": {"color": color}, "hovertemplate": "%{y}: %{x:.3f}<extra></extra>"}]
    layout = base_layout(title, SIGMA_AXIS, "token", height=440)
    layout["yaxis"]["type"] = "category"
    layout["margin"]["l"] = 110
    return figure(traces, layout)


def sigma_histogram(sigma: np.ndarray, among: int, bins: int = 40) -> go.Figure:
    """How the diffusion size spreads over the most frequent tokens (counts per bin)."""
    s = np.asarray(sigma, dtype=np.float64)
    counts, edges = np.histogram(s[np.isfinite(s)], bins=bins)
    mid = (edges[:-1] + edges[1:]) / 2
    traces = [{"type": "bar", "x": mid, "y": counts, "width": float(edges[1] - edges[0]), "name": "tokens",
               "marker": {"color": DIFFUSION_COLOR, "opacity": 0.75},
               "hovertemplate": "σ about %{x:.3f}: %{y} tokens<extra></extra>"}]
    return figure(traces, base_layout(f"Diffusion size over the {among:,} most frequent tokens", SIGMA_AXIS,
                                      "tokens", height=360))


def text_sigma_chart(tokens: list[str], sigma: np.ndarray, next_tokens: list[list[str]],
                     next_probs: np.ndarray) -> go.Figure:
    """The diffusion after each token of a text; hovering a bar shows the drift's next tokens there."""
    labels = [f"{k + 1}. {t}" for k, t in enumerate(tokens)]
    hover = ["<br>".join(f"{html.escape(n)} ({p:.2f})" for n, p in zip(names, probs))
             for names, probs in zip(next_tokens, next_probs)]
    traces = [{"type": "bar", "x": labels, "y": sigma, "text": hover, "textposition": "none",
               "name": "diffusion after the token",
               "marker": {"color": DIFFUSION_COLOR},
               "hovertemplate": "%{x}: σ %{y:.3f}<br>the drift points to:<br>%{text}<extra></extra>"}]
    layout = base_layout("Diffusion along the text: where the model is unsure of the next step",
                         "position and token", SIGMA_AXIS, height=400)
    layout["xaxis"].update({"type": "category", "tickangle": -45})
    return figure(traces, layout)


def next_tokens_chart(names: list[str], probs: np.ndarray, after: str) -> go.Figure:
    """The tokens one noiseless step lands on after a text, most likely on top."""
    traces = [{"type": "bar", "orientation": "h", "x": list(probs)[::-1], "y": [f"{n} " for n in names][::-1],
               "name": "next token", "marker": {"color": DRIFT_COLOR},
               "hovertemplate": "%{y}: p = %{x:.3f}<extra></extra>"}]
    layout = base_layout(f"Where the drift points after “{after}”", "emission probability at x + μ dt + r", "token",
                         height=360)
    layout["yaxis"]["type"] = "category"
    layout["margin"]["l"] = 110
    return figure(traces, layout)


def escape_chart(scales: list[float], escaped: list[float], same_cycle: list[float],
                 escape_scale: float | None) -> go.Figure:
    """Against the diffusion scale: the share of paths whose text no longer loops, and the share
    still on the drift's own cycle; the smallest scale that escapes marked."""
    traces = [{"type": "scatter", "x": scales, "y": escaped, "mode": "lines+markers", "name": "text no longer loops",
               "line": {"width": 2.5, "color": DIFFUSION_COLOR}, "marker": {"size": 7},
               "hovertemplate": "s = %{x:g}: %{y:.0%} escaped<extra></extra>"},
              {"type": "scatter", "x": scales, "y": same_cycle, "mode": "lines+markers",
               "name": "still on the drift's own cycle", "line": {"width": 2, "dash": "dash", "color": DRIFT_COLOR},
               "marker": {"size": 6}, "hovertemplate": "s = %{x:g}: %{y:.0%} on the cycle<extra></extra>"}]
    layout = base_layout("Escaping the drift's loop", "diffusion scale s (log axis)", "share of paths")
    layout["xaxis"]["type"] = "log"
    layout["yaxis"].update({"range": [-0.03, 1.03], "tickformat": ".0%"})
    if escape_scale is not None:
        layout["shapes"] = [{"type": "line", "x0": escape_scale, "x1": escape_scale, "y0": 0, "y1": 1, "yref": "paper",
                             "line": {"color": BOUND_COLOR, "dash": "dot", "width": 1.5}}]
        layout["annotations"] = [{"x": float(np.log10(escape_scale)), "y": 1.0, "yref": "paper", "yanchor": "bottom",
                                  "text": f"half escape from s ≈ {escape_scale:.3g} on", "showarrow": False,
                                  "font": {"color": BOUND_COLOR}}]
    return figure(traces, layout)

