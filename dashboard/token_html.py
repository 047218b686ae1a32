"""Pure HTML helpers: tokens shaded by a per-token value (no Streamlit calls)."""

from __future__ import annotations

import html
import math

import numpy as np

# HTML's special characters and those Streamlit's markdown would read between the spans (emphasis,
# code, KaTeX, links), each to its numeric entity in one pass, so no entity is escaped again
_ENTITIES = str.maketrans({c: f"&#{ord(c)};" for c in "&<>\"'$*_`~[]\\|#"})


def escape_text(s: str) -> str:
    """HTML-escaped text that Streamlit's markdown also leaves as it is."""
    return s.translate(_ENTITIES)


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
        text = escape_text(tok[2:] if glue else tok)
        if math.isfinite(v):
            a = min(max(v / top, 0.0), 1.0) * 0.85
            style = f"background:rgba({rgb[0]},{rgb[1]},{rgb[2]},{a:.2f});border-radius:3px;padding:0 2px"
            title = escape_text(f"{tok}: {label} {fmt.format(v)}")
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


def aligned_table(drift: list[str], rows: list[tuple[str, list[str], int]]) -> str:
    """Texts aligned token by token under the drift-only text: an HTML table with one column per
    token position and one row per (label, tokens, first departure); a token that differs from the
    drift-only one at its position is shaded, the first departure of each row outlined."""
    width = max([len(drift)] + [len(t) for _, t, _ in rows])
    cell = "padding:2px 6px;border:1px solid #e3e7eb;white-space:nowrap;font-size:0.85em"
    head = "".join(f'<th style="{cell};color:#777;font-weight:normal">{k + 1}</th>' for k in range(width))
    lines = [f'<tr><th style="{cell}"></th>{head}</tr>']

    def row(label: str, toks: list[str], first: int | None) -> str:
        tds = []
        for k in range(width):
            tok = toks[k] if k < len(toks) else ""
            style = cell
            if first is not None and tok != (drift[k] if k < len(drift) else None):
                style += ";background:rgba(209,73,91,0.22)"
            if first is not None and k == first:
                style += ";outline:2px solid #d1495b;outline-offset:-2px;font-weight:bold"
            tds.append(f'<td style="{style}" title="{html.escape(tok)}">{html.escape(tok)}</td>')
        return f'<tr><th style="{cell};text-align:left">{html.escape(label)}</th>{"".join(tds)}</tr>'

    lines.append(row("drift only (s = 0)", drift, None))
    lines += [row(label, toks, first if first >= 0 else None) for label, toks, first in rows]
    return ('<div style="overflow-x:auto"><table style="border-collapse:collapse;margin-bottom:0.5em">'
            + "".join(lines) + "</table></div>")
