"""Charts of held-out evaluation (pure: frames in, Figure out): metrics against baselines,
calibration of the diffusion, and the relevance-versus-diversity frontier."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sdecore.evaluate import METRICS

from .charts import BOUND_COLOR, MUTED, PALETTE, style

MODEL_ORDER = ("sde", "drift_only", "brownian", "ar1", "bigram", "unigram")


def models_frame(models: dict) -> pd.DataFrame:
    """{NAME: {metric: value or None}} -> one row per model (NaN for null), SDE first."""
    names = sorted(models, key=lambda n: (MODEL_ORDER.index(n) if n in MODEL_ORDER else 99, n))
    rows = [{"model": n, **{m: (np.nan if (models[n] or {}).get(m) is None else float(models[n][m]))
                            for m in METRICS}} for n in names]
    return pd.DataFrame(rows, columns=["model", *METRICS])


def display_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The metrics as text for a table: 4 significant digits, "n/a" where a model defines none."""
    out = frame.set_index("model")
    return out.apply(lambda col: col.map(lambda v: "n/a" if pd.isna(v) else f"{v:.4g}"))


def _color(name: str) -> str:
    return PALETTE[0] if name == "sde" else PALETTE[(MODEL_ORDER.index(name) if name in MODEL_ORDER else 7) + 1]


def metrics_chart(frame: pd.DataFrame) -> go.Figure:
    """Token perplexity (log axis, lower is better) and top-1 / top-10 accuracy (higher is better) per model."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("token perplexity (lower is better)",
                                                        "top-1 (solid) and top-10 (hatched) accuracy"),
                        horizontal_spacing=0.12)
    colors = [_color(n) for n in frame["model"]]
    fig.add_trace(go.Bar(x=frame["model"], y=frame["token_ppl"], marker_color=colors, name="token perplexity",
                         text=frame["token_ppl"], texttemplate="%{text:,.0f}", textposition="outside",
                         showlegend=False, hovertemplate="%{x}: perplexity %{y:,.1f}<extra></extra>"), row=1, col=1)
    for metric, pattern in (("top1", ""), ("top10", "/")):
        fig.add_trace(go.Bar(x=frame["model"], y=frame[metric], name=metric, marker_color=colors, showlegend=False,
                             marker_pattern_shape=pattern, hovertemplate=f"%{{x}}: {metric} %{{y:.3f}}<extra></extra>"),
                      row=1, col=2)
    style(fig, "Held-out next-token metrics against baselines", "model", "")
    ppl = pd.to_numeric(frame["token_ppl"], errors="coerce").replace([np.inf, -np.inf], np.nan).dropna()
    # A linear axis from 0 reads plainly when the models are within an order of magnitude;
    # a log axis only when they are not (a badly fitted model can be at 1e60).
    if len(ppl) and ppl.max() / max(ppl.min(), 1e-9) > 20:
        fig.update_yaxes(title_text="perplexity (tokens, log scale)", type="log", dtick=1, row=1, col=1)
    else:
        top = float(ppl.max()) * 1.15 if len(ppl) else 1.0
        fig.update_yaxes(title_text="perplexity (tokens)", range=[0, top], row=1, col=1)
    fig.update_yaxes(title_text="accuracy (share of transitions)", range=[0, 1], row=1, col=2)
    fig.update_xaxes(title_text="model")
    fig.update_layout(barmode="group")
    return fig


def complexity_chart(by_complexity: dict) -> go.Figure:
    """Token perplexity of each model per HelpSteer complexity level (log axis)."""
    levels = sorted(by_complexity, key=lambda k: float(k) if str(k).replace(".", "", 1).isdigit() else 1e9)
    names = []
    for lv in levels:
        for n in (by_complexity[lv] or {}).get("models", {}):
            if n not in names:
                names.append(n)
    names.sort(key=lambda n: MODEL_ORDER.index(n) if n in MODEL_ORDER else 99)
    fig = go.Figure()
    for n in names:
        y = [((by_complexity[lv].get("models") or {}).get(n) or {}).get("token_ppl") for lv in levels]
        counts = [by_complexity[lv].get("n_transitions") for lv in levels]
        fig.add_trace(go.Scatter(x=[str(v) for v in levels], y=[np.nan if v is None else v for v in y],
                                 mode="lines+markers", name=n, customdata=counts,
                                 line={"color": _color(n), "width": 3 if n == "sde" else 1.5},
                                 hovertemplate=f"{n}<br>complexity %{{x}}<br>perplexity %{{y:,.1f}}"
                                               "<br>%{customdata} transitions<extra></extra>"))
    fig = style(fig, "Token perplexity by the response's complexity score", "HelpSteer complexity score (0-4)",
                "perplexity (tokens, log scale)")
    fig.update_yaxes(type="log", dtick=1)
    return fig


def calibration_chart(levels, observed, coverage90: float | None = None) -> go.Figure:
    """Observed coverage of the diffusion's predicted central intervals against their nominal level."""
    lv = np.asarray(levels, dtype=np.float64)
    ob = np.asarray([np.nan if v is None else v for v in observed], dtype=np.float64)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"color": MUTED, "dash": "dash"},
                             name="perfect calibration"))
    fig.add_trace(go.Scatter(x=lv, y=ob, mode="lines+markers", line={"color": PALETTE[0], "width": 2.5},
                             marker={"size": 8}, name="SDE diffusion",
                             hovertemplate="nominal %{x:.2f}<br>observed %{y:.3f}<extra></extra>"))
    if coverage90 is not None and np.isfinite(coverage90):
        fig.add_trace(go.Scatter(x=[0.9], y=[coverage90], mode="markers", name="reported coverage90",
                                 marker={"size": 13, "symbol": "star", "color": BOUND_COLOR}))
    fig = style(fig, "Calibration of the diffusion",
                "nominal coverage of the predicted interval", "observed share of increments inside")
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1], scaleanchor="x", scaleratio=1)
    return fig


def frontier_chart(rows: pd.DataFrame, diversity: str = "distinct2") -> go.Figure:
    """Relevance against diversity for each generator, one point per diffusion scale (or
    setting), joined in scale order; the dotted line is relevance to a random prompt."""
    fig = go.Figure()
    for i, (gen, d) in enumerate(rows.groupby("generator", sort=False)):
        d = d.sort_values("scale")
        color = PALETTE[0] if gen == "sde" else PALETTE[(i + 3) % len(PALETTE)]
        hover = [f"{gen}, scale {r.scale:g}<br>relevance {r.relevance:.3f} (random {r.relevance_random:.3f})"
                 f"<br>distinct-2 {r.distinct2:.3f}, self-BLEU {r.self_bleu:.3f}<br>BLEU {r.bleu:.3f}, "
                 f"ROUGE-L {r.rouge_l:.3f}<br>diverged {r.diverged_share:.0%}" for r in d.itertuples()]
        fig.add_trace(go.Scatter(x=d[diversity], y=d["relevance"], mode="lines+markers+text", name=gen,
                                 text=[f"s={v:g}" for v in d["scale"]], textposition="top center",
                                 hovertext=hover, hoverinfo="text", line={"color": color, "width": 2},
                                 marker={"size": 9}))
        if d["relevance_random"].notna().any():
            fig.add_trace(go.Scatter(x=d[diversity], y=d["relevance_random"], mode="lines",
                                     name=f"{gen}: random prompt",
                                     line={"color": color, "width": 1, "dash": "dot"}, hoverinfo="skip"))
    return style(fig, "Relevance versus diversity as the diffusion scale grows",
                 "diversity: distinct-2 (share of distinct bigrams)", "relevance to the prompt (similarity, 0-1)")


def frontier_frame(frontier: dict) -> pd.DataFrame:
    cols = ["generator", "scale", "relevance", "relevance_random", "distinct2", "self_bleu", "bleu", "rouge_l",
            "diverged_share"]
    df = pd.DataFrame(frontier.get("rows") or [], columns=cols)
    for c in cols[1:]:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df
