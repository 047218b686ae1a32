"""Pure HTML helpers: tokens shaded by a per-token value (no Streamlit calls)."""

from __future__ import annotations

import html
import math

import numpy as np


def token_spans(tokens: list[str], values, vmax: float | None = None, rgb: tuple[int, int, int] = (209, 73, 91),
                label: str = "value", fmt: str = "{:.3f}") -> str:
    """Tokens as inline spans whose background opacity is value / vmax (hover shows the value).

    WordPiece continuation pieces (``##ing``) are joined to the previous piece, as in the text.
    ``values[i]`` may be NaN (no shading, e.g. the first token, which no transition reaches).
    """
    vals = np.asarray(values, dtype=np.float64)
    finite = vals[np.isfinite(vals)]
    top = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    top = top if top > 0 else 1.0
    parts = []
    for tok, v in zip(tokens, vals):
        glue = tok.startswith("##")
        text = html.escape(tok[2:] if glue else tok)
        if math.isfinite(v):
            a = min(max(v / top, 0.0), 1.0) * 0.85
            style = f"background:rgba({rgb[0]},{rgb[1]},{rgb[2]},{a:.2f});border-radius:3px;padding:0 2px"
            title = html.escape(f"{tok}: {label} {fmt.format(v)}")
            span = f'<span style="{style}" title="{title}">{text}</span>'
        else:
            span = f'<span style="padding:0 2px">{text}</span>'
        parts.append(span if glue or not parts else " " + span)
    return "".join(parts)


def legend_html(label: str, rgb: tuple[int, int, int], vmax: float, fmt: str = "{:.2f}") -> str:
    """A small gradient legend from 0 to vmax for token_spans' shading."""
    grad = f"linear-gradient(90deg, rgba({rgb[0]},{rgb[1]},{rgb[2]},0), rgba({rgb[0]},{rgb[1]},{rgb[2]},0.85))"
    return (f'<span style="font-size:0.85em;color:#555">{html.escape(label)}: 0 '
            f'<span style="display:inline-block;width:90px;height:0.8em;background:{grad};'
            f'vertical-align:middle;border:1px solid #ddd"></span> {html.escape(fmt.format(vmax))}</span>')
