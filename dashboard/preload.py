"""Streamlit's Plotly chart code, loaded by the browser while a session's first run computes
(docs/design.md §7).

Streamlit's frontend fetches its Plotly component, a 4.7 MB script, only when a page's first
chart arrives, and then compiles and runs it before drawing anything: about a second of the
browser's time on a 2-core machine, spent after the server's work instead of beside it. A hidden
element sent at the start of every run asks the browser to import that same script at once; the
component's own import later finds it loaded (one module per URL). The element's script is this
module's constant text and the chunk's file name from the installed Streamlit, never user input.
Where Streamlit's build holds no single Plotly chunk, or ``st.html`` cannot run script (Streamlit
before ``unsafe_allow_javascript``), nothing is sent and the chart loads as it always did.
"""

from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path

import streamlit as st

KEY = "plotly_preload"  # the hidden container's key (its CSS class is st-key-plotly_preload)


@functools.cache
def plotly_chunk() -> str | None:
    """The file name of Streamlit's Plotly component script (``PlotlyChart.<hash>.js``), or None."""
    found = sorted((Path(st.__file__).parent / "static" / "static" / "js").glob("PlotlyChart.*.js"))
    return found[0].name if len(found) == 1 else None


@functools.cache
def _can_run_script() -> bool:
    """Whether this Streamlit's ``st.html`` can run script (checked once, not on every rerun)."""
    return "unsafe_allow_javascript" in inspect.signature(st.html).parameters


def script(chunk: str) -> str:
    """The element's HTML: a style that hides its container and a script that imports ``chunk``
    from beside Streamlit's own entry script (so under any base URL path), once per page."""
    return (f"<style>.st-key-{KEY}{{display:none}}</style><script>(function(){{"
            "var s=document.querySelector('script[src*=\"/static/js/index.\"]');"
            "if(!s||window.__sdecorePlotly)return;"
            f"window.__sdecorePlotly=import(new URL({json.dumps(chunk)},s.src).href).catch(function(){{}});"
            "})();</script>")


def preload_plotly() -> bool:
    """Send the hidden element into the sidebar; False where nothing could be sent."""
    chunk = plotly_chunk()
    if chunk is None or not _can_run_script():
        return False
    with st.sidebar.container(key=KEY):
        st.html(script(chunk), unsafe_allow_javascript=True)
    return True
