"""Pure chart functions: arrays in, `plotly.graph_objects.Figure` out (no Streamlit calls).

Shared styling and the Generate page's charts live here; the other pages' charts are in
`charts_*.py`. Every figure has a title and labelled axes with units.
"""

from __future__ import annotations

import functools
import json
import warnings

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative

PALETTE = qualitative.D3 + qualitative.Set2
DRIFT_COLOR, DIFFUSION_COLOR, BOUND_COLOR, MUTED = "#1f6f8b", "#d1495b", "#2b2d42", "#9aa5b1"
UNIT = "std. units"  # standardised embedding units: each dimension divided by its spread over the vocabulary
TIME_AXIS = "tokens after the prompt (t / dt)"


def base_layout(title: str, x_title: str, y_title: str, height: int = 420) -> dict:
    """Title, axis labels and a compact, readable layout shared by every chart, as a plain dict."""
    def axis(text: str) -> dict:
        return {"title": {"text": text}, "showline": True, "linecolor": "#ccd3da", "zeroline": False}

    return {"template": _template(), "title": {"text": title, "x": 0.0, "xanchor": "left", "font": {"size": 16}},
            "height": height, "margin": {"l": 70, "r": 20, "t": 60, "b": 60}, "hovermode": "closest",
            "legend": {"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0.0},
            "xaxis": axis(x_title), "yaxis": axis(y_title)}


@functools.cache
def _template_json() -> str:
    return json.dumps(pio.templates["plotly_white"].to_plotly_json())


def _template() -> dict:
    """The plotly_white template as a fresh dict (a figure may change its own copy)."""
    return json.loads(_template_json())


def style(fig: go.Figure, title: str, x_title: str, y_title: str, height: int = 420) -> go.Figure:
    """:func:`base_layout` applied to a figure built trace by trace."""
    return fig.update_layout(base_layout(title, x_title, y_title, height))


def figure(traces: list[dict], layout: dict) -> go.Figure:
    """A figure from plain trace and layout dicts, without plotly's property-by-property
    validation: building a chart through ``go.Scatter`` and ``update_layout`` costs 30-50 ms on
    a 2-core CPU, most of a slider's rerun, against about 1 ms. The dicts are what a validated
    figure holds; the tests validate every chart (``go.Figure(fig.to_dict())``)."""
    try:
        return go.Figure(data=traces, layout=layout, _validate=False)
    except TypeError:  # a plotly without the flag: validate after all
        return go.Figure(data=traces, layout=layout)


def rgba(color: str, alpha: float) -> str:
    """``color`` ("#rrggbb" or "rgb(r, g, b)", as plotly's palettes give them) with opacity ``alpha``."""
    if color.startswith("rgb"):
        r, g, b = (int(float(v)) for v in color[color.index("(") + 1:color.index(")")].split(",")[:3])
    else:
        h = color.lstrip("#")
        r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def quantiles(values: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """Quantiles across rows (paths) at each column, ignoring NaN: (paths, steps) -> (len(qs), steps)."""
    v = np.asarray(values, dtype=np.float64)
    if not np.isnan(v).any():  # the common case: numpy's vectorised quantile, several times faster
        return np.quantile(v, qs, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column (every path stopped) stays NaN
        return np.nanquantile(v, qs, axis=0)


def band_traces(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, color: str, name: str, alpha: float,
                **kw) -> list[dict]:
    """A filled band between two curves (lower edge drawn first, upper filled down to it)."""
    edge = {"type": "scatter", "x": x, "mode": "lines", "line": {"width": 0}, "legendgroup": name,
            "hoverinfo": "skip", **kw}
    return [{**edge, "y": lo, "showlegend": False},
            {**edge, "y": hi, "fill": "tonexty", "fillcolor": rgba(color, alpha), "name": name}]


def band(fig: go.Figure, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, color: str, name: str, alpha: float,
         **kw) -> None:
    """:func:`band_traces` added to a figure built trace by trace."""
    fig.add_traces(band_traces(x, lo, hi, color, name, alpha, **kw))


def path_style(i: int, highlight: int | None, width: float = 1.5, alpha: float = 1.0) -> tuple[str, float]:
    """(colour, line width) of path ``i``: its own colour, or, with a ``highlight`` (a path index),
    that path bold and every other one faint grey."""
    if highlight is None:
        return rgba(PALETTE[i % len(PALETTE)], alpha), width
    return (PALETTE[i % len(PALETTE)], width * 2.2) if i == highlight else (rgba(MUTED, 0.3), width * 0.7)


def fan_chart(t: np.ndarray, values: np.ndarray, drift_only: np.ndarray | None, quantity: str, unit: str,
              title: str, highlight: int | None = None, captions: list[str] | None = None,
              shown: list[int] | None = None) -> go.Figure:
    """Quantile bands (5-95%, 25-75%) and the median of a per-step quantity across all paths,
    the ``shown`` paths' own lines faintly (all by default; ``highlight``, a path index, bold and
    on top, the rest grey), and the drift-only path (scale 0) dashed. With ``captions`` (one text
    per step), the chart replays token by token (:func:`with_replay`).

    t: (steps + 1,); values: (paths, steps + 1); drift_only: (steps + 1,) or None.
    """
    q = quantiles(values, (0.05, 0.25, 0.5, 0.75, 0.95))
    traces = band_traces(t, q[0], q[4], DIFFUSION_COLOR, "5-95% of paths", 0.15)
    traces += band_traces(t, q[1], q[3], DIFFUSION_COLOR, "25-75% of paths", 0.3)
    shown = list(range(len(values))) if shown is None else list(shown)

    def line(i: int) -> dict:
        color, width = path_style(i, highlight, 1.0, 0.45)
        return {"type": "scatter", "x": t, "y": values[i], "mode": "lines", "name": f"path {i + 1}",
                "line": {"width": width, "color": color}, "showlegend": i == highlight,
                "hovertemplate": f"path {i + 1}<br>t=%{{x}}<br>{quantity}=%{{y:.3g}}<extra></extra>"}

    traces += [line(i) for i in shown if i != highlight]
    traces.append({"type": "scatter", "x": t, "y": q[2], "mode": "lines", "name": "median of paths",
                   "line": {"width": 2.5, "color": DIFFUSION_COLOR}})
    if drift_only is not None:
        traces.append({"type": "scatter", "x": t, "y": drift_only, "mode": "lines+markers", "marker": {"size": 5},
                       "line": {"width": 2.5, "dash": "dash", "color": BOUND_COLOR}, "name": "drift only (scale 0)"})
    if highlight in shown:
        traces.append(line(highlight))
    layout = base_layout(title, TIME_AXIS, f"{quantity} ({unit})")
    if captions:
        return with_replay(traces, layout, list(range(len(traces))), len(t) - 1, captions)
    return figure(traces, layout)


REF_GRID = (120, 70)  # the reference cloud's cells across and up: about 5 screen pixels square on a wide page
REF_NAMED = 4  # tokens a cell's hover names (the most frequent first)
REF_GREY = "#7f8c8d"


def reference_cloud(ref_xy: np.ndarray, ref_tokens: list[str], grid: tuple[int, int] = REF_GRID) -> dict:
    """The reference tokens as one heatmap trace: how many fall in each small cell of the map, the
    hover naming them (frequency order, as ``ref_tokens`` comes). A browser draws it as one image;
    1,500 markers, each styled on its own, were most of the time a 2-core laptop took to draw the
    map (docs/design.md §7). Cached per set of points (every rerun draws the same cloud)."""
    xy = np.ascontiguousarray(ref_xy, dtype=np.float64)
    return dict(_reference_cloud(xy.tobytes(), xy.shape, tuple(ref_tokens), tuple(grid)))  # a figure's own copy


@functools.lru_cache(maxsize=8)
def _reference_cloud(raw: bytes, shape: tuple, tokens: tuple, grid: tuple) -> dict:
    xy = np.frombuffer(raw, dtype=np.float64).reshape(shape)
    nx, ny = grid
    ok = np.isfinite(xy).all(-1) if len(xy) else np.zeros(0, bool)
    lo = xy[ok].min(0) if ok.any() else np.zeros(2)
    hi = xy[ok].max(0) if ok.any() else np.ones(2)
    span = np.where(hi > lo, hi - lo, 1.0)
    cell = np.minimum(((xy[ok] - lo) / span * (nx, ny)).astype(int), (nx - 1, ny - 1))
    names: dict[tuple[int, int], list[str]] = {}
    for (i, j), tok in zip(cell, np.asarray(tokens, dtype=object)[ok]):
        names.setdefault((j, i), []).append(tok)
    count = np.full((ny, nx), np.nan)
    text = [[""] * nx for _ in range(ny)]
    for (j, i), toks in names.items():
        count[j, i] = len(toks)
        more = f" and {len(toks) - REF_NAMED} more" if len(toks) > REF_NAMED else ""
        text[j][i] = ", ".join(toks[:REF_NAMED]) + more
    top = max(2.0, float(np.nanmax(count))) if names else 2.0
    x, y = lo[0] + (np.arange(nx) + 0.5) * span[0] / nx, lo[1] + (np.arange(ny) + 0.5) * span[1] / ny
    for a in (x, y, count):
        a.setflags(write=False)  # shared by every figure drawn from the cache
    return {"type": "heatmap", "x": x, "y": y, "z": count, "text": tuple(map(tuple, text)), "zmin": 1, "zmax": top,
            "colorscale": [[0, rgba(REF_GREY, 0.35)], [1, rgba(REF_GREY, 0.85)]], "showscale": False,
            "hoverongaps": False, "zsmooth": False, "name": "reference tokens", "showlegend": True,
            "hovertemplate": "token %{text}<extra></extra>"}


def map_chart(ref_xy: np.ndarray, ref_tokens: list[str], paths_xy: list[np.ndarray], hovers: list[list[str]],
              drift_xy: np.ndarray | None, drift_hover: list[str] | None, map_label: str, highlight: int | None = None,
              captions: list[str] | None = None, labels: list[int] | None = None) -> go.Figure:
    """Sample paths drawn on a 2-D map of the embedding space over its reference tokens.

    ref_xy: (n, 2) reference token coordinates; paths_xy: per path (steps + 1, 2), NaN after
    divergence; hovers: per path, one label per point (its nearest token); drift_xy: (steps + 1, 2).
    ``labels``: each given path's index among all the paths (default 0, 1, ...), which names and
    colours it; ``highlight``: that index drawn bold and on top, the rest grey; with ``captions``
    (one text per step) the paths replay token by token (:func:`with_replay`).
    """
    traces = [reference_cloud(ref_xy, ref_tokens)]
    labels = list(range(len(paths_xy))) if labels is None else list(labels)
    order = [j for j, i in enumerate(labels) if i != highlight] + [j for j, i in enumerate(labels) if i == highlight]
    for j in order:
        i, xy, hv = labels[j], paths_xy[j], hovers[j]
        color, width = path_style(i, highlight)
        traces.append({"type": "scatter", "x": xy[:, 0], "y": xy[:, 1], "mode": "lines+markers", "text": hv,
                       "name": f"path {i + 1}", "line": {"width": width, "color": color},
                       "marker": {"size": 6 if highlight in (None, i) else 4, "color": color},
                       "hovertemplate": f"path {i + 1}<br>%{{text}}<extra></extra>"})
    if drift_xy is not None:
        traces.append({"type": "scatter", "x": drift_xy[:, 0], "y": drift_xy[:, 1], "mode": "lines+markers",
                       "text": drift_hover, "name": "drift only (scale 0)",
                       "line": {"width": 3, "dash": "dash", "color": BOUND_COLOR},
                       "marker": {"size": 7, "color": BOUND_COLOR, "symbol": "diamond"},
                       "hovertemplate": "drift only<br>%{text}<extra></extra>"})
    timed = list(range(1, len(traces)))
    if paths_xy:
        start = paths_xy[0][0]
        traces.append({"type": "scatter", "x": [start[0]], "y": [start[1]], "mode": "markers",
                       "name": "prompt's last token", "hoverinfo": "name",
                       "marker": {"size": 16, "symbol": "star", "color": "#f4a259",
                                  "line": {"width": 1, "color": BOUND_COLOR}}})
    layout = base_layout(f"Paths on the {map_label}", "map axis 1 (arbitrary units)", "map axis 2 (arbitrary units)",
                         height=520)
    layout["legend"]["y"] = -0.14
    if captions and paths_xy:
        return with_replay(traces, layout, timed, len(paths_xy[0]) - 1, captions)
    return figure(traces, layout)


def magnitude_chart(t: np.ndarray, drift: np.ndarray, diffusion: np.ndarray) -> go.Figure:
    """Per-step sizes of the two terms, |mu dt| and s sqrt(sum sigma^2 dt): median and
    25-75% band across paths. t: (steps,) step start times; drift, diffusion: (paths, steps)."""
    traces = []
    for values, color, name in ((drift, DRIFT_COLOR, "drift |μ dt|"),
                                (diffusion, DIFFUSION_COLOR, "diffusion s·√(Σσ² dt)")):
        q = quantiles(values, (0.25, 0.5, 0.75))
        traces += band_traces(t, q[0], q[2], color, f"{name.split()[0]}: 25-75% of paths", 0.2)
        traces.append({"type": "scatter", "x": t, "y": q[1], "mode": "lines+markers", "marker": {"size": 5},
                       "line": {"color": color, "width": 2.5}, "name": f"{name}, median"})
    return figure(traces, base_layout("Drift versus diffusion: size of each token step",
                                      "token step k -> k+1 (t / dt)", f"step size ({UNIT})"))


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


# ----------------------------------------------------------------------------- a chart's data
def _axis_title(layout, name: str) -> str:
    ax = getattr(layout, name, None) if layout is not None else None
    text = ax.title.text if ax is not None and ax.title is not None else None
    return text or name.replace("axis", "")


def figure_rows(fig: go.Figure) -> list[dict]:
    """The data a chart draws, one row per point of each trace (``trace``, ``x``, ``y``, and ``z``
    for heat maps and contours, ``text`` where the points carry labels): the chart's CSV download. ``panel``
    names the axes a trace is drawn on, with their titles, when the chart has several."""
    lay = fig.layout
    panels = {(getattr(t, "xaxis", None) or "x", getattr(t, "yaxis", None) or "y") for t in fig.data}
    rows: list[dict] = []
    for i, tr in enumerate(fig.data):
        name = tr.name or getattr(tr, "legendgroup", None) or f"trace {i + 1}"
        xa, ya = getattr(tr, "xaxis", None) or "x", getattr(tr, "yaxis", None) or "y"
        panel = f"{_axis_title(lay, xa.replace('x', 'xaxis'))} / {_axis_title(lay, ya.replace('y', 'yaxis'))}"
        x, y = getattr(tr, "x", None), getattr(tr, "y", None)
        z = getattr(tr, "z", None) if tr.type in ("heatmap", "contour") else None
        text = getattr(tr, "text", None)

        head = {"trace": name, "panel": panel} if len(panels) > 1 else {"trace": name}

        def add(head=head, **kw) -> None:
            rows.append({**head, "x": None, "y": None, "z": None, "text": None, **kw})

        if z is not None:
            zz = np.asarray(z, dtype=object)
            for r in range(zz.shape[0]):
                for c in range(zz.shape[1]):
                    add(x=x[c] if x is not None else c, y=y[r] if y is not None else r, z=zz[r, c])
            continue
        n = len(y) if y is not None else (len(x) if x is not None else 0)
        labels = text if text is not None and not isinstance(text, str) and len(text) == n else None
        for j in range(n):
            add(x=x[j] if x is not None else j, y=y[j] if y is not None else None,
                text=labels[j] if labels is not None else None)
    if not any(r["z"] is not None for r in rows):
        for r in rows:
            r.pop("z")
    if not any(r["text"] is not None for r in rows):
        for r in rows:
            r.pop("text")
    if len(panels) == 1 and rows:  # name the columns after the axes
        xt, yt = _axis_title(lay, "xaxis"), _axis_title(lay, "yaxis")
        rows = [{("x: " + xt if k == "x" else "y: " + yt if k == "y" else k): v for k, v in r.items()} for r in rows]
    return rows


# ----------------------------------------------------------------------------- replay
REPLAY_FRAME_MS = 350


def _range(values: list, pad: float = 0.05) -> list[float] | None:
    flat = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in values]) if values else np.zeros(0)
    flat = flat[np.isfinite(flat)]
    if not flat.size:
        return None
    lo, hi = float(flat.min()), float(flat.max())
    span = (hi - lo) or 1.0
    return [lo - pad * span, hi + pad * span]


def with_replay(traces: list[dict], layout: dict, timed: list[int], steps: int, captions: list[str] | None = None,
                label: str = "token") -> go.Figure:
    """A chart that replays itself token by token: Plotly frames 0..steps, frame k drawing the
    ``timed`` traces' first k + 1 points (each point one step of the path), with a play/pause button
    and a slider; ``captions[k]`` (the decoded text so far) shows above the plot in step. The axes
    are fixed to the whole paths' range, so they do not move while it plays; the figure itself
    shows the whole paths until play is pressed."""
    layout = dict(layout)
    for axis, key in (("xaxis", "x"), ("yaxis", "y")):
        rng = _range([traces[i][key] for i in timed] + [t[key] for t in traces if t.get(key) is not None])
        if rng is not None:
            layout[axis] = {**layout.get(axis, {}), "range": rng, "autorange": False}

    def caption(k: int) -> list[dict]:
        if not captions:
            return []
        return [{"text": captions[k], "xref": "paper", "yref": "paper", "x": 0.0, "y": 1.0, "xanchor": "left",
                 "yanchor": "bottom", "showarrow": False, "align": "left", "font": {"size": 13, "color": BOUND_COLOR},
                 "bgcolor": "rgba(255,255,255,0.85)"}]

    frames = [{"name": str(k), "traces": list(timed), "layout": {"annotations": caption(k)},
               "data": [{"x": traces[i]["x"][:k + 1], "y": traces[i]["y"][:k + 1]} for i in timed]}
              for k in range(steps + 1)]
    play = {"frame": {"duration": REPLAY_FRAME_MS, "redraw": True}, "fromcurrent": False,
            "transition": {"duration": 0}, "mode": "immediate"}
    layout["updatemenus"] = [{"type": "buttons", "direction": "left", "showactive": False, "x": 0.0, "y": -0.2,
                              "xanchor": "left", "yanchor": "top", "pad": {"t": 0, "r": 8},
                              "buttons": [{"label": "▶ Play", "method": "animate", "args": [None, play]},
                                          {"label": "❚❚ Pause", "method": "animate",
                                           "args": [[None], {"frame": {"duration": 0, "redraw": False},
                                                             "mode": "immediate", "transition": {"duration": 0}}]}]}]
    layout["sliders"] = [{"active": steps, "x": 0.24, "len": 0.76, "y": -0.2, "yanchor": "top", "pad": {"t": 0},
                          "currentvalue": {"prefix": f"{label} ", "font": {"size": 12}},
                          "steps": [{"label": str(k), "method": "animate",
                                     "args": [[str(k)], {"frame": {"duration": 0, "redraw": True}, "mode": "immediate",
                                                         "transition": {"duration": 0}}]}
                                    for k in range(steps + 1)]}]
    layout["annotations"] = list(layout.get("annotations", [])) + caption(steps)
    layout["margin"] = {**layout.get("margin", {}), "b": 130, "t": 90}
    layout["legend"] = {**layout.get("legend", {}), "y": -0.42}
    layout["height"] = layout.get("height", 420) + 90
    try:
        return go.Figure(data=traces, layout=layout, frames=frames, _validate=False)
    except TypeError:
        return go.Figure(data=traces, layout=layout, frames=frames)
