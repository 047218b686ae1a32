"""The README's chart of sampling cost, from a benchmark's JSON.

    python -m bench --out bench.json        # the full run holds the ``cost`` rows
    python -m bench.plot bench.json docs/sampling_cost.png

Two panels from ``cost``: seconds of one ``em`` run against the number of paths (1 to 4,096, at
16 tokens) and against the number of tokens (8 to 512, at 16 paths), both on log axes, with the
log-log slope (cost ~ n^slope), for the paths of the first and the last three points apart. The figure is a Plotly
chart rendered to PNG in headless Chromium (Debian's ``/usr/bin/chromium``, through Playwright),
the same browser the dashboard's tests use.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

CHROMIUM = "/usr/bin/chromium"


def loglog_slope(n: list[float], seconds: list[float]) -> float:
    """Slope of the least-squares line through (log n, log seconds): cost grows like n^slope."""
    return float(np.polyfit(np.log(n), np.log(seconds), 1)[0])


def growth(n: list[float], seconds: list[float]) -> str:
    """How the cost grows: the log-log slope of all the points or, with six or more, of the first
    and of the last three."""
    if len(n) < 6:
        return f"slope {loglog_slope(n, seconds):.2f}"
    low, high = loglog_slope(n[:3], seconds[:3]), loglog_slope(n[-3:], seconds[-3:])
    return f"slope {low:.2f} up to {n[2]:g}, {high:.2f} from {n[-3]:g}"


def cost_figure(cost: dict, machine: str):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = (("by_paths", "paths", "paths (16 tokens each)"), ("by_tokens", "tokens", "tokens (16 paths)"))
    titles = []
    for key, field, _ in panels:
        rows = cost[key]
        titles.append(f"Seconds against {field} ({growth([r[field] for r in rows], [r['seconds'] for r in rows])})")
    fig = make_subplots(rows=1, cols=2, subplot_titles=titles, horizontal_spacing=0.12)
    for col, (key, field, axis) in enumerate(panels, start=1):
        rows = cost[key]
        x, y = [r[field] for r in rows], [r["seconds"] for r in rows]
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers+text", text=[f"{v:.2g} s" for v in y],
                                 textposition=["bottom right"] * (len(x) - 1) + ["middle left"],
                                 marker={"size": 8, "color": "#1f6f8b"},
                                 line={"width": 2.5, "color": "#1f6f8b"}, showlegend=False), row=1, col=col)
        fig.update_xaxes(type="log", title_text=axis, row=1, col=col, tickvals=x, showline=True, linecolor="#ccd3da")
        fig.update_yaxes(type="log", title_text="seconds for one run (log)", row=1, col=col, dtick=1,
                         showline=True, linecolor="#ccd3da")
    fig.update_layout(template="plotly_white", width=1100, height=470, margin={"l": 80, "r": 40, "t": 100, "b": 60},
                      title={"text": f"Cost of sampling with em (simulate_paths), {machine}", "x": 0.01,
                             "xanchor": "left", "font": {"size": 16}})
    return fig


def render_png(fig, out: Path) -> None:
    """Write ``fig`` to ``out`` as a PNG through headless Chromium."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / "chart.html"
        fig.write_html(html, include_plotlyjs=True, full_html=True, config={"staticPlot": True})
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": int(fig.layout.width), "height": int(fig.layout.height)})
            page.goto(html.as_uri())
            page.wait_for_selector(".main-svg")
            page.locator(".js-plotly-plot").first.screenshot(path=str(out))
            browser.close()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench_json", help="the output of python -m bench --out FILE (a full run: it holds 'cost')")
    ap.add_argument("out_png")
    a = ap.parse_args(argv)
    result = json.loads(Path(a.bench_json).read_text(encoding="utf-8"))
    if "cost" not in result:
        raise SystemExit(f"{a.bench_json} has no 'cost' rows: run the full benchmark (python -m bench), not --quick")
    machine = f"{result.get('threads', '?')} threads on {result.get('machine', '?')} ({result.get('device', '?')})"
    render_png(cost_figure(result["cost"], machine), Path(a.out_png))
    print(f"wrote {a.out_png}")


if __name__ == "__main__":
    main()
