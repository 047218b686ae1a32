"""The dashboard's Generate page on its default workload (docs/design.md §7).

- ``rerun_ms_median``: the page's rerun after the diffusion slider moves to a new value (so
  nothing is cached for it), timed around ``AppTest.run`` in this process, median over the
  values;
- ``cold_start_s``: from starting ``streamlit run dashboard/app.py`` to the first Plotly chart
  drawn in headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright);
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


def rerun_ms(values=(0.35, 0.55, 0.75, 0.95, 1.15, 1.35, 1.55)) -> dict:
    """Median wall time of the Generate page's rerun at each new slider value (AppTest)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=300)
    at.run()
    at.switch_page("views/generate.py").run()
    times = []
    for v in values:
        at.slider(key="scale").set_value(v)
        t0 = time.perf_counter()
        at.run()
        times.append((time.perf_counter() - t0) * 1000)
        if at.exception:
            raise RuntimeError(f"the Generate page failed at s = {v}: {at.exception[0].value}")
    return {"rerun_ms_median": round(statistics.median(times), 1), "rerun_ms": [round(t, 1) for t in times]}


def cold_start(timeout_s: float = 180.0) -> dict:
    """Seconds from ``streamlit run`` to the first chart in Chromium, and the server's peak RSS."""
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
            browser.close()
        return {"cold_start_s": round(seconds, 2), "peak_rss_mb": round(vm_hwm_mb(server.pid) or 0.0, 1)}
    finally:
        server.terminate()
        server.wait(15)


def bench_dashboard() -> dict:
    return {**rerun_ms(), **cold_start()}
