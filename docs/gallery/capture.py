"""Regenerate the README's gallery from the shipped model, as a person sees it in Chromium.

    python docs/gallery/capture.py [--out docs/gallery]

Starts the dashboard on a free port, opens three views at the dashboard's defaults (the Generate
page's replay, What the nets learned's attractor scan, the Same noise page at four scales) in
headless Chromium (Debian's /usr/bin/chromium, through Playwright) and saves each chart or table
as a PNG at twice its size on screen. It prints what it saved. The escape scan is saved only when
the drift-only text ends in a loop (the chart is not drawn otherwise).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dashboard.charts import REPLAY_FRAME_MS  # noqa: E402  (the repository's own package)

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "How can I improve my sleep?"
REPLAY_TOKEN = 16  # the replay is paused from here (see below)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _open(page, base: str, path: str, params: dict, charts: int) -> None:
    page.goto(f"{base}/{path}?{urlencode(params, doseq=True)}", timeout=120_000)
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot').length >= {charts}", timeout=180_000)
    page.wait_for_timeout(2500)  # the charts' own drawing


def _chart(page, index: int):
    return page.locator('[data-testid="stPlotlyChart"]').nth(index)


def capture(out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard" / "app.py"),
                               "--server.headless", "true", "--server.port", str(port),
                               "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    base, saved = f"http://127.0.0.1:{port}", []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 2400}, device_scale_factor=2)
            for _ in range(240):
                try:
                    page.goto(base, timeout=5000)
                    break
                except Exception:
                    time.sleep(0.5)
            # Generate: the replay on the map, paused at REPLAY_TOKEN, path 3 highlighted
            _open(page, base, "", {"prompt": PROMPT, "replay": "true", "highlight": "3"}, 3)
            chart = _chart(page, 2)
            chart.locator(".updatemenu-button", has_text="Play").first.click()
            # pause once the caption (the replay's annotation) reaches the token; the frame drawn when
            # the pause lands can be a few later, and is printed
            page.wait_for_function(
                "k => [...document.querySelectorAll('.js-plotly-plot')][2].querySelector('.annotation-text')"
                "?.textContent.includes('token ' + k + ':')", arg=REPLAY_TOKEN, polling="raf",
                timeout=REPLAY_FRAME_MS * 60)
            chart.locator(".updatemenu-button", has_text="Pause").first.click()
            page.wait_for_timeout(1500)
            caption = chart.locator(".annotation-text").first.text_content() or ""
            print("replay paused at", caption.split(":")[0])
            saved.append(out / "replay_map.png")
            _chart(page, 2).screenshot(path=saved[-1])
            # What the nets learned: the escape scan of the drift's loop, when there is one
            _open(page, base, "learned", {"attractor_prompt": PROMPT}, 5)
            page.locator('[data-testid="stMetric"]').first.wait_for(timeout=120_000)  # the attractor's result
            page.wait_for_timeout(2500)
            if page.locator('[data-testid="stPlotlyChart"]').count() >= 6:  # the scan: the page's sixth chart
                saved.append(out / "escape_scan.png")
                _chart(page, 5).screenshot(path=saved[-1])
            else:
                print("the drift-only text ends in no loop: no escape scan to save")
            # Same noise at four scales: the aligned texts and the share that has left
            _open(page, base, "compare", {"prompt": PROMPT, "scales": ["0.05", "0.1", "0.25", "1"]}, 1)
            saved.append(out / "same_noise_aligned.png")
            page.locator(".st-key-aligned").screenshot(path=saved[-1])
            saved.append(out / "same_noise_share.png")
            _chart(page, 0).screenshot(path=saved[-1])
            browser.close()
    finally:
        server.terminate()
        server.wait(10)
    return saved


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "gallery"))
    a = ap.parse_args(argv)
    for path in capture(Path(a.out)):
        print(f"saved {path} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
