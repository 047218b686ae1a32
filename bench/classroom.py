"""A class on one dashboard: N browser sessions at once against one ``streamlit run``.

    python -m bench.classroom 16 [--presses 1] [--out FILE]

Each session is a real page in headless Chromium (Debian's ``/usr/bin/chromium``, driven by
Playwright), opened at the same moment on the Generate page with its own seed in the URL
(``?seed=i``), as a class following one link with their own numbers would. The benchmark reports:

- ``first_text_s``: per session, seconds from opening the page to its continuations on screen
  (the server warmed by one page first); ``p95_first_text_s``, ``median_first_text_s``;
- ``slider_s``: once every page is up, every session presses the diffusion slider's arrow key at
  the same moment; seconds until that page shows new continuations and a new fan-chart title;
  ``p95_slider_s``;
- ``identical``: whether each session showed exactly the text a lone session shows for the same
  URL, before and after the slider moved. The lone sessions run one at a time against a fresh
  server, so nothing they show comes from the crowd's cache;
- ``exceptions``: error boxes seen on any page (there should be none).

It prints one JSON object (and writes it with ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "dashboard" / "app.py"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync", "--disable-renderer-backgrounding",
        "--disable-background-timer-throttling", "--disable-backgrounding-occluded-windows"]
TEXT_JS = "() => { const e = document.querySelector('.st-key-continuations'); return e ? e.innerText : null; }"
TEXT_READY_JS = ("() => { const e = document.querySelector('.st-key-continuations'); "
                 "return !!e && e.innerText.length > 0; }")
TITLE_JS = "() => { const e = document.querySelector('.st-key-fan .gtitle'); return e ? e.textContent : null; }"
SETTLED_JS = ("() => document.querySelectorAll('.js-plotly-plot').length >= 3 && "
              "!document.querySelector('[data-testid=\"stSpinner\"]') && "
              "!!document.querySelector('.st-key-continuations')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def dashboard_server(env: dict | None = None, nice: int = 0):
    """A fresh ``streamlit run dashboard/app.py`` on a free port; yields its base URL."""
    import os

    port = _free_port()
    prefix = ["nice", "-n", str(nice)] if nice else []
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--browser.gatherUsageStats", "false"], cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("the dashboard server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _open(page, url: str, timeout_s: float) -> float:
    """Open ``url`` and wait for its continuations and charts; seconds from the request."""
    t0 = time.perf_counter()
    await page.goto(url, timeout=timeout_s * 1000)
    await page.wait_for_function(TEXT_READY_JS, timeout=timeout_s * 1000)
    first = time.perf_counter() - t0
    await page.wait_for_function(SETTLED_JS, timeout=timeout_s * 1000)
    return first


async def _press(page, timeout_s: float) -> float:
    """One ArrowRight on the diffusion slider: seconds until new text and a new fan-chart title."""
    before = [await page.evaluate(TEXT_JS), await page.evaluate(TITLE_JS)]
    await page.locator('[data-testid="stSlider"] input[type=range]').first.focus()
    t0 = time.perf_counter()
    await page.keyboard.press("ArrowRight")
    await page.wait_for_function(f"b => ({TEXT_JS})() !== b[0] && ({TITLE_JS})() !== b[1]", arg=before,
                                 timeout=timeout_s * 1000, polling="raf")
    seconds = time.perf_counter() - t0
    await page.wait_for_function(SETTLED_JS, timeout=timeout_s * 1000)
    return seconds


async def _exceptions(page) -> int:
    return await page.locator('[data-testid="stException"]').count()


async def crowd(url: str, seeds: list[int], presses: int, timeout_s: float) -> dict:
    """Every seed's page opened at once, then every slider pressed at once, ``presses`` times. The
    server is warmed first by one page at seed 0, as the lecturer opening the dashboard before
    the class joins (the model loaded, the code imported)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            warm = await browser.new_page(viewport={"width": 1400, "height": 2000})
            await _open(warm, f"{url}?seed=0", timeout_s)
            await warm.close()
            pages = [await browser.new_page(viewport={"width": 1400, "height": 2000}) for _ in seeds]
            first = await asyncio.gather(*(_open(pg, f"{url}?seed={s}", timeout_s) for pg, s in zip(pages, seeds)))
            texts = [[await pg.evaluate(TEXT_JS)] for pg in pages]
            slider = []
            for _ in range(presses):
                slider.append(await asyncio.gather(*(_press(pg, timeout_s) for pg in pages)))
                for t, pg in zip(texts, pages):
                    t.append(await pg.evaluate(TEXT_JS))
            errors = sum([await _exceptions(pg) for pg in pages])
        finally:
            await browser.close()
    return {"first": list(first), "slider": [s for round_ in slider for s in round_], "texts": texts,
            "exceptions": errors}


async def alone(url: str, seeds: list[int], presses: int, timeout_s: float) -> list[list[str]]:
    """The same views one session at a time: the reference texts."""
    from playwright.async_api import async_playwright

    out = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            for s in seeds:
                page = await browser.new_page(viewport={"width": 1400, "height": 2000})
                await _open(page, f"{url}?seed={s}", timeout_s)
                texts = [await page.evaluate(TEXT_JS)]
                for _ in range(presses):
                    await _press(page, timeout_s)
                    texts.append(await page.evaluate(TEXT_JS))
                out.append(texts)
                await page.close()
        finally:
            await browser.close()
    return out


def p95(values: list[float]) -> float:
    """The 95th percentile (linear interpolation between order statistics)."""
    v = sorted(values)
    if len(v) == 1:
        return v[0]
    k = 0.95 * (len(v) - 1)
    lo = int(k)
    return v[lo] + (v[min(lo + 1, len(v) - 1)] - v[lo]) * (k - lo)


def run(n: int, presses: int = 1, timeout_s: float = 300.0, env: dict | None = None) -> dict:
    seeds = list(range(1, n + 1))
    with dashboard_server(env) as url:
        got = asyncio.run(crowd(url, seeds, presses, timeout_s))
    with dashboard_server(env) as url:
        want = asyncio.run(alone(url, seeds, presses, timeout_s))
    mismatched = [s for s, a, b in zip(seeds, got["texts"], want) if a != b]
    differences = [{"seed": s, "crowd": a, "alone": b} for s, a, b in zip(seeds, got["texts"], want) if a != b]
    return {"sessions": n, "presses": presses,
            "first_text_s": [round(v, 2) for v in got["first"]],
            "median_first_text_s": round(statistics.median(got["first"]), 2),
            "p95_first_text_s": round(p95(got["first"]), 2),
            "slider_s": [round(v, 2) for v in got["slider"]],
            "median_slider_s": round(statistics.median(got["slider"]), 2) if got["slider"] else None,
            "p95_slider_s": round(p95(got["slider"]), 2) if got["slider"] else None,
            "identical": not mismatched, "mismatched_seeds": mismatched, "differences": differences,
            "exceptions": got["exceptions"]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sessions", type=int, nargs="?", default=16)
    ap.add_argument("--presses", type=int, default=1, help="slider presses, all sessions at once each time")
    ap.add_argument("--out", default=None, help="also write the JSON to this file")
    a = ap.parse_args(argv)
    if not 1 <= a.sessions <= 64:
        raise SystemExit("bench.classroom: sessions must be 1-64")
    if not Path(CHROMIUM).is_file():
        raise SystemExit(f"bench.classroom: needs Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    result = run(a.sessions, a.presses)
    text = json.dumps(result, indent=2)
    if a.out:
        Path(a.out).write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
