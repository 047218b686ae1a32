"""Charts of training losses and of a real text's path (pure: arrays and frames in, Figure out)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .charts import BOUND_COLOR, DIFFUSION_COLOR, DRIFT_COLOR, MUTED, PALETTE, reference_cloud, rgba, style

# (loss name, panel title, y-axis title with units)
PANELS = (("total", "total loss", "drift + diffusion + w_ce * CE"),
          ("drift", "drift loss", "MSE per dim (std. units^2)"),
          ("diffusion", "diffusion loss", "Gaussian NLL per dim (nats)"),
          ("ce", "emission cross-entropy", "nats per token"))
SPLIT_STYLE = {"train": {"color": DRIFT_COLOR, "dash": "solid"},
               "validation": {"color": DIFFUSION_COLOR, "dash": "dash"}}


def history_chart(rows: pd.DataFrame, references: dict | None = None, best_epoch: int | None = None) -> go.Figure:
    """Train and validation curves of the total, drift, diffusion and cross-entropy losses
    (one panel each), with the reference losses as horizontal lines.

    rows: columns epoch, split ("train"/"validation"), loss, value. references:
    {"drift_zero_drift", "diffusion_constant_sigma"} (validation split)."""
    refs = references or {}
    fig = make_subplots(rows=2, cols=2, subplot_titles=[p[1] for p in PANELS], horizontal_spacing=0.1,
                        vertical_spacing=0.18)
    for i, (name, _, _) in enumerate(PANELS):
        r, c = i // 2 + 1, i % 2 + 1
        for split, st_ in SPLIT_STYLE.items():
            d = rows[(rows["loss"] == name) & (rows["split"] == split)].sort_values("epoch")
            if d.empty:
                continue
            fig.add_trace(go.Scatter(x=d["epoch"], y=d["value"], mode="lines+markers", name=split,
                                     legendgroup=split, showlegend=i == 0, line={"color": st_["color"],
                                     "dash": st_["dash"], "width": 2}, marker={"size": 6}), row=r, col=c)
        ref = {"drift": ("drift_zero_drift", "zero drift"),
               "diffusion": ("diffusion_constant_sigma", "constant sigma")}.get(name)
        if ref and refs.get(ref[0]) is not None:
            fig.add_hline(y=refs[ref[0]], line={"color": BOUND_COLOR, "dash": "dot", "width": 1.5}, row=r, col=c,
                          annotation_text=f"reference: {ref[1]}", annotation_position="top right")
        if best_epoch is not None:
            fig.add_vline(x=best_epoch, line={"color": MUTED, "width": 1}, row=r, col=c)
    style(fig, "Training history (grey line: best epoch, kept in the checkpoint)", "epoch", "", height=620)
    dtick = max(1, int(rows["epoch"].max()) // 8) if not rows.empty else 1
    for i, (_, _, y_title) in enumerate(PANELS):
        fig.update_yaxes(title_text=y_title, row=i // 2 + 1, col=i % 2 + 1)
    fig.update_xaxes(title_text="epoch", dtick=dtick)
    fig.update_layout(legend={"y": -0.1})
    return fig


def token_loss_chart(tokens: list[str], drift: np.ndarray, diffusion: np.ndarray, nll: np.ndarray) -> go.Figure:
    """Per transition k -> k+1 (labelled by the token reached): drift and diffusion loss
    (left axis) and the next token's negative log-likelihood (right axis)."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    x = np.arange(1, len(tokens))
    labels = [f"{k}: {t}" for k, t in zip(x, tokens[1:])]
    fig.add_trace(go.Bar(x=x, y=drift, name="drift loss", marker_color=DRIFT_COLOR, customdata=labels,
                         hovertemplate="%{customdata}<br>drift loss %{y:.3g}<extra></extra>"), secondary_y=False)
    fig.add_trace(go.Bar(x=x, y=diffusion, name="diffusion loss", marker_color=DIFFUSION_COLOR, customdata=labels,
                         hovertemplate="%{customdata}<br>diffusion loss %{y:.3g}<extra></extra>"), secondary_y=False)
    fig.add_trace(go.Scatter(x=x, y=nll, mode="lines+markers", name="-log p(next token)", customdata=labels,
                             line={"color": BOUND_COLOR, "width": 1.5}, marker={"size": 5},
                             hovertemplate="%{customdata}<br>NLL %{y:.3g} nats<extra></extra>"), secondary_y=True)
    style(fig, "Per-token losses along the text", "", "")
    ticks = x if len(x) <= 40 else x[:: int(np.ceil(len(x) / 40))]
    fig.update_xaxes(title_text="transition to token k (token shown)", tickvals=ticks,
                     ticktext=[tokens[k] for k in ticks], tickangle=-60)
    fig.update_yaxes(title_text="loss per dimension (nats / squared std. units)", secondary_y=False)
    fig.update_yaxes(title_text="-log p(next token) (nats)", secondary_y=True, showgrid=False)
    fig.update_layout(barmode="group", margin={"b": 110}, legend={"y": -0.38})
    return fig


def trajectory_map_chart(ref_xy: np.ndarray, ref_tokens: list[str], actual: np.ndarray, one_step: np.ndarray,
                         free_run: np.ndarray, tokens: list[str], map_label: str) -> go.Figure:
    """A text's actual path on the map against the drift's one-step and free-running predictions.

    actual, one_step, free_run: (L, 2) map coordinates."""
    fig = go.Figure(data=[reference_cloud(ref_xy, ref_tokens)])
    labels = [f"{k}: {t}" for k, t in enumerate(tokens)]
    # One-step predictions are separate guesses, one per prefix: markers only, not a path.
    for xy, name, color, dash, sym, mode in (
            (actual, "actual path (the text)", PALETTE[0], "solid", "circle", "lines+markers"),
            (one_step, "one-step prediction x + mu dt", PALETTE[1], "dot", "x", "markers"),
            (free_run, "free-running drift (no noise)", BOUND_COLOR, "dash", "diamond", "lines+markers")):
        fig.add_trace(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode=mode, name=name, text=labels,
                                 line={"color": color, "dash": dash, "width": 2}, marker={"size": 6, "symbol": sym},
                                 hovertemplate=f"{name}<br>%{{text}}<extra></extra>"))
    # Thin links from each predicted point to the token it should have reached show the one-step error.
    ex, ey = [], []
    for a, p in zip(actual[1:], one_step[1:]):
        ex += [p[0], a[0], None]
        ey += [p[1], a[1], None]
    fig.add_trace(go.Scatter(x=ex, y=ey, mode="lines", line={"color": rgba(PALETTE[1], 0.6), "width": 1.2},
                             name="one-step error", hoverinfo="skip"))
    fig = style(fig, f"The text's path against the drift's predictions ({map_label})", "map axis 1 (arbitrary units)",
                "map axis 2 (arbitrary units)", height=520)
    fig.update_layout(legend={"y": -0.14})
    return fig
