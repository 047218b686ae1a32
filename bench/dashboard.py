"""The dashboard's Generate page on its default workload (docs/design.md §7).

- ``rerun_ms_median``: the page's rerun after the diffusion slider jumps to a value nothing has
  computed (four steps of the slider or more from any seen value, so no prefetch holds it), timed
  around ``AppTest.run`` in this process, median over the values: the page with its simulation;
- ``rerun_step_ms_median``: the rerun after the slider moves one step (0.05) up from the value
  shown, once the model's worker is idle (the step's run prefetched while the page was read,
  ``dashboard.serving``); ``prefetch_hits``: how many of those steps found their run ready;
- ``cold_start_s``: from starting ``streamlit run dashboard/app.py`` to the first Plotly chart
  drawn in headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright);
- ``slider_to_change_ms``: in that browser, from one key press on the diffusion slider to both
  the continuations' text and the fan chart's title showing the new value (``slider_ms``: each
  of a few presses, one step of 0.05 each, every value new to the session; a second after the page
  has settled, as a person looks at the change before the next press);
- ``peak_rss_mb``: the Streamlit server's peak resident memory (``VmHWM``) once that page is up.
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.scale import vm_hwm_mb

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "dashboard" / "app.py"
CHROMIUM = "/usr/bin/chromium"


def rerun_ms(jumps=(0.35, 0.55, 1.95, 2.15, 2.35), steps: int = 5) -> dict:
    """Median wall time of the Generate page's rerun at each slider value of ``jumps`` (none of
    them computed or prefetched), then at ``steps`` single steps up from the last, each once the
    model's worker is idle (AppTest)."""
    from streamlit.testing.v1 import AppTest

    from dashboard import session

    at = AppTest.from_file(str(APP), default_timeout=300)
    at.run()
    at.switch_page("views/generate.py").run()
    folder = session.default_model_folder()
    _, worker = session.model(str(folder), session.folder_stamp(folder))

    def rerun(v: float) -> float:
        at.slider(key="scale").set_value(v)
        t0 = time.perf_counter()
        at.run()
        elapsed = (time.perf_counter() - t0) * 1000
        if at.exception:
            raise RuntimeError(f"the Generate page failed at s = {v}: {at.exception[0].value}")
        return elapsed

    times = [rerun(v) for v in jumps]
    hits, step_times = worker.prefetch_hits, []
    for k in range(1, steps + 1):
        worker.wait_idle()
        step_times.append(rerun(round(jumps[-1] + 0.05 * k, 2)))
    return {"rerun_ms_median": round(statistics.median(times), 1), "rerun_ms": [round(t, 1) for t in times],
            "rerun_step_ms_median": round(statistics.median(step_times), 1),
            "rerun_step_ms": [round(t, 1) for t in step_times], "prefetch_hits": worker.prefetch_hits - hits}


# The continuations' text and the fan chart's title (it names s), as the page shows them now.
_VIEW_JS = """() => {
  const text = document.querySelector('.st-key-continuations');
  const title = document.querySelector('.st-key-fan .gtitle');
  return [text ? text.innerText : null, title ? title.textContent : null];
}"""


def wait_until_settled(page, timeout_s: float) -> None:
    """Until the Generate page's script has finished and the page shows its three charts."""
    from bench.classroom import SETTLED_JS

    page.wait_for_function(SETTLED_JS, timeout=timeout_s * 1000)


def slider_latencies(page, presses: int = 5, timeout_s: float = 60.0, pause_s: float = 1.0) -> list[float]:
    """Milliseconds from one ArrowRight on the diffusion slider to the page showing new text and
    a new fan-chart title, for each of ``presses`` presses (each a value the session has not seen),
    ``pause_s`` after the page has settled from the one before."""
    wait_until_settled(page, timeout_s)
    out = []
    for _ in range(presses):
        time.sleep(pause_s)
        before = page.evaluate(_VIEW_JS)
        page.locator('[data-testid="stSlider"] input[type=range]').first.focus()
        t0 = time.perf_counter()
        page.keyboard.press("ArrowRight")
        page.wait_for_function(f"b => {{ const now = ({_VIEW_JS})(); return now[0] !== b[0] && now[1] !== b[1]; }}",
                               arg=before, timeout=timeout_s * 1000, polling="raf")
        out.append((time.perf_counter() - t0) * 1000)
        wait_until_settled(page, timeout_s)
    return out


def cold_start(timeout_s: float = 180.0, presses: int = 5) -> dict:
    """Seconds from ``streamlit run`` to the first chart in Chromium, the slider's latency in that
    page, and the server's peak RSS."""
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
                               "--server.port", str(port), "--server.address", "127.0.0.1",
                               "--browser.gatherUsageStats", "false"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            while True:
                try:
                    page.goto(f"http://127.0.0.1:{port}/", timeout=5000)
                    break
                except Exception:  # the server is not listening yet
                    if time.perf_counter() - t0 > timeout_s:
                        raise
                    time.sleep(0.1)
            page.wait_for_selector(".js-plotly-plot", timeout=timeout_s * 1000)
            seconds = time.perf_counter() - t0
            slider = slider_latencies(page, presses, timeout_s)
            browser.close()
        return {"cold_start_s": round(seconds, 2), "slider_to_change_ms": round(statistics.median(slider), 1),
                "slider_ms": [round(v, 1) for v in slider], "peak_rss_mb": round(vm_hwm_mb(server.pid) or 0.0, 1)}
    finally:
        server.terminate()
        server.wait(15)


def bench_dashboard() -> dict:
    return {**rerun_ms(), **cold_start()}
