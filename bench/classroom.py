"""A class on one dashboard: N browser sessions at once against one ``streamlit run``.

    python -m bench.classroom 16 [--presses 1] [--out FILE] [--server-only]

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
- ``exceptions``: error boxes seen on any page (there should be none);
- ``browser_cpu_s``, ``server_cpu_s``: CPU seconds the browsers and the server used while the
  pages opened: on one machine the simulated students' browsers compete with the server for the
  cores, which a class's own laptops would not.

``--server-only`` drives the same N sessions through ``streamlit.testing`` (AppTest) in threads of
one process instead: the server's own work per session, without browsers.

It prints one JSON object (and writes it with ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from bench import emit

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
# the script has finished its run (Streamlit marks the app's root) and the page shows its charts
SETTLED_JS = ("() => { const app = document.querySelector('[data-testid=\"stApp\"]'); "
              "const state = app && app.getAttribute('data-test-script-state'); "
              "return state !== 'running' && state !== 'rerunRequested' && "
              "document.querySelectorAll('.js-plotly-plot').length >= 3 && "
              "!document.querySelector('[data-testid=\"stSpinner\"]') && "
              "!!document.querySelector('.st-key-continuations'); }")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def dashboard_server(env: dict | None = None):
    """A fresh ``streamlit run dashboard/app.py`` on a free port; yields its base URL and pid."""
    import os

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
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
        yield f"http://127.0.0.1:{port}/", proc.pid
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


async def _browser(p):
    """One headless Chromium and one context for every simulated student: the pages share the
    context's HTTP and compiled-script caches (a student's browser that has opened the dashboard
    before), and ask for reduced motion; each page is still its own Streamlit session."""
    browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    context = await browser.new_context(viewport={"width": 1400, "height": 2000}, reduced_motion="reduce")
    return browser, context


async def crowd(url: str, seeds: list[int], presses: int, timeout_s: float, server_pid: int | None = None) -> dict:
    """Every seed's page opened at once, then every slider pressed at once, ``presses`` times. The
    server is warmed first by one page at seed 0, as the lecturer opening the dashboard before
    the class joins (the model loaded, the code imported)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser, context = await _browser(p)
        try:
            warm = await context.new_page()
            await _open(warm, f"{url}?seed=0", timeout_s)
            await warm.close()
            pages = [await context.new_page() for _ in seeds]
            cpu0 = (_cpu_seconds("chromium"), _cpu_seconds(pid=server_pid))
            first = await asyncio.gather(*(_open(pg, f"{url}?seed={s}", timeout_s) for pg, s in zip(pages, seeds)))
            cpu = {"browser_cpu_s": round(_cpu_seconds("chromium") - cpu0[0], 1),
                   "server_cpu_s": round(_cpu_seconds(pid=server_pid) - cpu0[1], 1) if server_pid else None}
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
            "exceptions": errors, "cpu": cpu}


async def alone(url: str, seeds: list[int], presses: int, timeout_s: float) -> list[list[str]]:
    """The same views one session at a time: the reference texts."""
    from playwright.async_api import async_playwright

    out = []
    async with async_playwright() as p:
        browser, context = await _browser(p)
        try:
            for s in seeds:
                page = await context.new_page()
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


def _cpu_seconds(name: str | None = None, pid: int | None = None) -> float:
    """CPU seconds used so far by the process ``pid``, or by every process named ``name`` (their
    reaped children included, so closed pages still count)."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in ([str(pid)] if pid else [e for e in os.listdir("/proc") if e.isdigit()]):
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        comm, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if pid or comm.startswith(name):
            total += sum(int(f) for f in fields[11:15]) / tick  # utime stime cutime cstime
    return total


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
    with dashboard_server(env) as (url, pid):
        got = asyncio.run(crowd(url, seeds, presses, timeout_s, pid))
    with dashboard_server(env) as (url, _):
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
            "exceptions": got["exceptions"], **got["cpu"]}


def server_only(n: int, presses: int = 1) -> dict:
    """The server's side alone: ``n`` AppTest sessions of the Generate page run at once in threads
    of this process (one shared model, worker and cache, as in ``streamlit run``), then their
    sliders moved at once; each session's text against the same views run one at a time after
    the caches are cleared."""
    import threading

    from sdecore.process_setup import configure_threads

    configure_threads()
    import streamlit as st
    from streamlit.runtime.scriptrunner import script_cache
    from streamlit.testing.v1 import AppTest

    # Each AppTest has its own script cache, where ``streamlit run`` shares one that compiles under
    # a lock: sixteen threads compiling the same page at once trip CPython 3.11's "AST constructor
    # recursion depth mismatch" (a race in its compiler), so compiling is serialised here as there.
    compile_lock, get_bytecode = threading.Lock(), script_cache.ScriptCache.get_bytecode

    def locked(self, path):
        with compile_lock:
            return get_bytecode(self, path)
    script_cache.ScriptCache.get_bytecode = locked

    # Two more costs of the test tool that a server does not have: every AppTest scans the
    # installed packages for components on its first run (about 0.13 s, here shared once, as the
    # server scans at start-up), and waits for its script by polling every millisecond (here every
    # 5 ms: sixteen threads polling at 1 kHz take the interpreter lock from the work measured).
    from streamlit.components.v2.component_manager import BidiComponentManager
    from streamlit.testing.v1 import local_script_runner

    components = BidiComponentManager()
    components.discover_and_register_components(start_file_watching=False)

    def wait(runner, timeout: float = 3) -> None:
        t0 = time.time()
        while time.time() - t0 < timeout:
            time.sleep(0.005)
            if runner.script_stopped():
                return
        runner.request_stop()
        runner.join()
        raise RuntimeError(f"AppTest script run timed out after {timeout}(s)")
    local_script_runner.require_widgets_deltas = wait

    def session(seed: int) -> AppTest:
        at = AppTest.from_file(str(APP), default_timeout=600)
        at._bidi_component_manager = components
        at.query_params["seed"] = str(seed)
        return at

    def text(at: AppTest) -> list[str]:
        return [m.value for m in at.markdown if m.value.startswith("**")]

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    session(0).run()  # the lecturer's first page: model loaded, code imported
    seeds = list(range(1, n + 1))
    sessions = [session(s) for s in seeds]
    first, slider, texts = [0.0] * n, [], [[] for _ in seeds]

    def together(fn) -> list[float]:
        out, gate = [0.0] * n, threading.Barrier(n)

        def one(i):
            gate.wait()
            out[i] = timed(lambda: fn(i))
        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out

    first = together(lambda i: sessions[i].run())
    for i, at in enumerate(sessions):
        texts[i].append(text(at))
    for k in range(presses):
        value = round(1.0 + 0.05 * (k + 1), 2)
        slider += together(lambda i, v=value: sessions[i].slider(key="scale").set_value(v).run())
        for i, at in enumerate(sessions):
            texts[i].append(text(at))
    errors = sum(len(at.exception) for at in sessions)
    st.cache_data.clear()
    mismatched, differences = [], []
    for s, got in zip(seeds, texts):
        at = session(s)
        at.run()
        want = [text(at)]
        for k in range(presses):
            at.slider(key="scale").set_value(round(1.0 + 0.05 * (k + 1), 2)).run()
            want.append(text(at))
        if want != got:
            mismatched.append(s)
            differences.append({"seed": s, "crowd": got, "alone": want})
    return {"sessions": n, "presses": presses, "mode": "server only (AppTest)",
            "first_run_s": [round(v, 2) for v in first], "p95_first_run_s": round(p95(first), 2),
            "slider_rerun_s": [round(v, 2) for v in slider], "p95_slider_rerun_s": round(p95(slider), 2),
            "identical": not mismatched, "mismatched_seeds": mismatched, "differences": differences,
            "exceptions": errors}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sessions", type=int, nargs="?", default=16)
    ap.add_argument("--presses", type=int, default=1, help="slider presses, all sessions at once each time")
    ap.add_argument("--out", default=None, help="also write the JSON to this file")
    ap.add_argument("--server-only", action="store_true", help="sessions through AppTest, without browsers")
    a = ap.parse_args(argv)
    if not 1 <= a.sessions <= 64:
        raise SystemExit("bench.classroom: sessions must be 1-64")
    if a.server_only:
        result = server_only(a.sessions, a.presses)
    elif not Path(CHROMIUM).is_file():
        raise SystemExit(f"bench.classroom: needs Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    else:
        result = run(a.sessions, a.presses)
    emit(result, a.out)


if __name__ == "__main__":
    main()
