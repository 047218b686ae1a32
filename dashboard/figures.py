"""Every chart on a page, with its downloads (docs/design.md §7).

:func:`show` draws a Plotly figure whose toolbar camera saves it as PNG at three times its
size on screen (print resolution) or as SVG, as the sidebar's "Chart images" says, under a file
name of its own; below it, a button downloads the chart's data as CSV
(:func:`dashboard.charts.figure_rows`), built only when pressed.
"""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from . import charts, shaping

IMAGE_FORMATS = {"PNG (3x, for print)": ("png", 3), "SVG (vector)": ("svg", 1)}
DEFAULT_FORMAT = next(iter(IMAGE_FORMATS))


def toolbar(name: str, image_format: str = DEFAULT_FORMAT) -> dict:
    """Plotly's config for a chart: the camera button's format, scale and file name."""
    fmt, scale = IMAGE_FORMATS.get(image_format, IMAGE_FORMATS[DEFAULT_FORMAT])
    return {"displaylogo": False,
            "toImageButtonOptions": {"format": fmt, "scale": scale, "filename": name, "height": None, "width": None}}


def show(fig: go.Figure, key: str, *, name: str | None = None, csv: bool = True) -> None:
    """Draw ``fig`` (its element keyed ``key``) with its image toolbar and, with ``csv``, the
    button that downloads its data."""
    name = name or key
    st.plotly_chart(fig, key=key, config=toolbar(name, st.session_state.get("image_format", DEFAULT_FORMAT)))
    if csv:
        st.download_button("Chart data (CSV)", lambda: shaping.csv_text(charts.figure_rows(fig)), f"{name}.csv",
                           "text/csv", key=f"{key}_csv", on_click="ignore", type="tertiary",
                           icon=":material/download:")
