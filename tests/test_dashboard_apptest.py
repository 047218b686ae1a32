"""The dashboard through streamlit.testing.v1.AppTest: every page runs without an exception,
shows its charts, and reacts to its widgets; plus the pure helpers behind the pages
(charts, HTML shading, upload conversion, the toy SDE) checked on known answers."""

from __future__ import annotations

from sdecore.process_setup import configure_threads

# The process-wide settings dashboard/app.py makes, made here too before this module's
# imports load torch (docs/design.md §6.3).
configure_threads()

import io  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "dashboard" / "app.py")
TIMEOUT = 120  # seconds per script run: the first run loads torch, the model and the embedder


@pytest.fixture
def model_env(tiny_ckpt, monkeypatch, tmp_path):
    monkeypatch.setenv("SDECORE_MODEL", str(tiny_ckpt))
    monkeypatch.setenv("SDECORE_RUNS", str(tmp_path / "runs"))
    return tiny_ckpt


def start(page: str | None = None, query: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    if page:
        at.switch_page(page).run()
    assert_clean(at)
    return at


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def n_charts(at: AppTest) -> int:
    return len(at.get("plotly_chart"))


def chart_specs(at: AppTest) -> list[str]:
    return [c.proto.spec for c in at.get("plotly_chart")]


def continuations(at: AppTest) -> list[str]:
    """The Generate page's numbered continuations (one markdown element holds them all, a line each)."""
    lines = [line for m in at.markdown for line in m.value.split("\n\n")]
    return [line for line in lines if line[:3] in {f"**{i}" for i in range(1, 10)}]


# ----------------------------------------------------------------------------- pages
def test_generate_page_renders_and_scale_bends_paths(model_env):
    at = start()
    assert n_charts(at) == 3  # fan chart, drift vs diffusion, map
    assert any("NVIDIA HelpSteer (CC-BY-4.0)" in c.value for c in at.sidebar.caption)
    texts, specs = continuations(at), chart_specs(at)
    assert len(texts) == 8
    at.slider(key="scale").set_value(4.0).run()
    assert_clean(at)
    assert continuations(at) != texts, "moving the diffusion slider must change the generated text"
    assert chart_specs(at)[0] != specs[0], "moving the diffusion slider must change the fan chart"
    at.slider(key="scale").set_value(1.0).run()
    assert continuations(at) == texts, "the same seed must give the same paths at the same scale"
    specs = chart_specs(at)
    at.radio(key="fan_quantity").set_value("map axis 1").run()  # the charts' fragment, on its own control
    assert_clean(at)
    assert continuations(at) == texts and n_charts(at) == 3
    assert chart_specs(at)[0] != specs[0] and chart_specs(at)[2] == specs[2]
    at.toggle(key="use_pca").set_value(True).run()
    assert_clean(at)
    assert json.loads(chart_specs(at)[2])["layout"]["title"]["text"] == "Paths on the PCA of the reference tokens"


def test_generate_reads_state_from_query_params(model_env):
    at = start(query={"prompt": "Why is the sky blue?", "seed": "3", "scale": "2.5", "solver": "euler",
                      "paths": "4", "tokens": "6"})
    assert at.text_area(key="prompt").value == "Why is the sky blue?"
    assert at.slider(key="scale").value == 2.5
    assert at.number_input(key="seed").value == 3
    assert at.selectbox(key="solver").value == "euler"
    assert len(continuations(at)) == 4


def _worker(folder):
    from dashboard import session

    return session.model(str(folder), session.folder_stamp(Path(folder)))[1]


def _kept_scales(worker, prompt: str) -> set[float]:
    with worker._cond:  # the worker's thread writes it
        return {r.diffusion_scale for r in worker._kept if r.prompt == prompt}


def test_generate_prefetches_the_slider_s_next_steps(model_env):
    """After a run the page has the slider's neighbouring values simulated while it is read; a step
    then finds its run ready, with the text a run at that value gives."""
    import sdecore

    prompt = "What makes tides rise and fall?"  # a view no other test has cached
    at = start(query={"prompt": prompt})
    worker = _worker(model_env)
    assert worker.wait_idle()
    assert _kept_scales(worker, prompt) >= {0.95, 1.05}
    hits = worker.prefetch_hits
    at.slider(key="scale").set_value(1.05).run()
    assert_clean(at)
    assert worker.prefetch_hits == hits + 1
    ck = sdecore.load_checkpoint(model_env)
    want = sdecore.path_texts(ck.embedder, sdecore.simulate_paths(
        ck.model, ck.embedder, at.text_area(key="prompt").value, paths=8, tokens=24, diffusion_scale=1.05))
    from dashboard import token_html

    got = continuations(at)
    assert len(got) == 8
    for w, line in zip(want, got):  # each line's spans hold exactly that run's tokens
        spans = [token_html.escape_text(t[2:] if t.startswith("##") else t) for t in w["tokens"]]
        assert re.findall(r">([^<]*)</span>", line)[:len(spans)] == spans
    assert worker.wait_idle()
    kept = _kept_scales(worker, prompt)
    assert 1.1 in kept and 1.0 not in kept  # the next one up; 1.0 is the page's own, cached


def test_generate_prefetch_follows_its_setting(model_env, monkeypatch):
    monkeypatch.setenv("SDECORE_PREFETCH", "0")
    prompt = "Why do cats purr?"
    at = start(query={"prompt": prompt})
    worker = _worker(model_env)
    assert worker.wait_idle()
    done = worker.prefetched
    at.slider(key="scale").set_value(2.0).run()
    assert_clean(at)
    assert worker.wait_idle() and worker.prefetched == done and not _kept_scales(worker, prompt) & {1.95, 2.05}
    monkeypatch.setenv("SDECORE_PREFETCH", "2")
    at.slider(key="scale").set_value(3.0).run()
    assert worker.wait_idle() and _kept_scales(worker, prompt) >= {2.9, 2.95, 3.05, 3.1}
    monkeypatch.setenv("SDECORE_PREFETCH", "many")
    at.slider(key="scale").set_value(2.5).run()
    assert_clean(at)
    assert any("SDECORE_PREFETCH='many' is not a number" in w.value for w in at.warning)


def test_generate_bad_prompt_gives_an_error_not_a_traceback(model_env):
    at = start()
    at.text_area(key="prompt").input("   ").run()
    assert_clean(at)
    assert at.error and "prompt is empty" in at.error[0].value
    at.text_area(key="prompt").input("\U0001f642\U0001f642").run()  # no token the tokenizer knows
    assert_clean(at)
    assert at.error and at.error[0].value.startswith("Cannot generate")


def test_stability_page(model_env):
    at = start("views/stability.py", query={"stab_paths": "6", "stab_tokens": "8"})
    assert n_charts(at) == 6  # V, envelope, LV, sweep, quadratic variation, autocorrelation
    betas = [m.value for m in at.metric]
    at.slider(key="scale").set_value(3.0).run()
    assert_clean(at)
    assert [m.value for m in at.metric] != betas, "the fitted envelope must change with the diffusion scale"
    sweep = chart_specs(at)[3]
    at.radio(key="sweep_grid").set_value("fine: 0 to 3").run()  # the sweep's fragment, on its own grid
    assert_clean(at)
    assert n_charts(at) == 6 and chart_specs(at)[3] != sweep
    assert json.loads(chart_specs(at)[3])["data"][0]["x"] != json.loads(sweep)["data"][0]["x"]


def test_losses_page_and_text_analysis(model_env):
    at = start("views/losses.py")
    assert n_charts(at) == 3  # history, per-token losses, trajectory map
    specs = chart_specs(at)
    at.text_area(key="traj_text").input("Water the plant when the soil feels dry.").run()
    assert_clean(at)
    assert chart_specs(at)[1] != specs[1]
    at.text_area(key="traj_text").input("hi").run()  # one token: no path
    assert_clean(at)
    assert at.error and "two tokens" in at.error[0].value


def _copy_model(src: Path, dst: Path, drop=("report.json", "frontier.json")) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*drop, "train_state.safetensors"))
    return dst


def test_evaluation_page_without_files_explains(model_env, tmp_path, monkeypatch):
    folder = _copy_model(model_env, tmp_path / "bare")
    monkeypatch.setenv("SDECORE_MODEL", str(folder))
    at = start("views/evaluation.py")
    assert n_charts(at) == 0
    assert any("Not computed yet" in i.value and "sdecore evaluate" in i.value for i in at.info)


FAKE_MODELS = {n: {"token_ppl": p, "increment_nll": None if n in ("unigram", "bigram") else 1.2,
                   "top1": 0.1, "top10": 0.3, "coverage90": None if n in ("unigram", "bigram") else 0.88}
               for n, p in (("sde", 300.0), ("unigram", 900.0), ("bigram", 500.0), ("brownian", 2000.0),
                            ("ar1", 800.0), ("drift_only", 400.0))}


def test_evaluation_page_renders_report_and_frontier(model_env, tmp_path, monkeypatch):
    folder = _copy_model(model_env, tmp_path / "evaluated")
    report = {"corpus": "x.jsonl", "split": "validation", "n_transitions": 1234, "models": FAKE_MODELS,
              "by_complexity": {"0": {"n_transitions": 600, "models": FAKE_MODELS},
                                "2": {"n_transitions": 634, "models": FAKE_MODELS}},
              "calibration": {"levels": [0.5, 0.8, 0.9], "observed": [0.48, 0.79, None]}}
    rows = [{"generator": g, "scale": s, "relevance": 0.5 - 0.05 * s, "relevance_random": 0.1,
             "distinct2": 0.2 + s / 10, "self_bleu": 0.3, "bleu": 0.05, "rouge_l": 0.2, "diverged_share": 0.0}
            for g in ("sde", "bigram") for s in (0.0, 1.0, 2.0)]
    (folder / "report.json").write_text(json.dumps(report))
    (folder / "frontier.json").write_text(json.dumps({"rows": rows}))
    monkeypatch.setenv("SDECORE_MODEL", str(folder))
    at = start("views/evaluation.py")
    assert n_charts(at) == 4  # metrics, by complexity, calibration, frontier
    (folder / "report.json").write_text('{"models": 3}')  # malformed: a readable error, no traceback
    at.run()
    assert_clean(at)
    assert any("unexpected structure" in e.value for e in at.error)


def test_primer_page_reacts_to_noise(model_env):
    at = start("views/primer.py")
    assert n_charts(at) == 3  # field, V over time, envelope
    before = [m.value for m in at.metric]
    at.slider(key="toy_noise").set_value(1.5).run()
    assert_clean(at)
    after = [m.value for m in at.metric]
    assert after != before
    assert after[3] == "2, 4.5"  # exact OU alpha = 2k, beta = 2 sigma^2


def test_train_page_and_switching_to_a_trained_model(model_env, tmp_path):
    at = start("views/train.py")
    assert at.info and "No corpus uploaded yet" in at.info[0].value
    # A model trained on the Train page becomes active through session state. (The sidebar is
    # checked on a first run: AppTest drops st.navigation apps' sidebar elements on reruns.)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["active_model"] = str(model_env)
    at.session_state["active_name"] = "tiny.jsonl"
    at.run()
    assert_clean(at)
    assert any("tiny.jsonl" in s.value for s in at.sidebar.success)
    assert at.sidebar.button(key="reset_model").label == "Back to the default model"


# ----------------------------------------------------------------------------- helpers
def test_upload_conversion_and_checks(tmp_path):
    from dashboard import uploads

    text = "\n\n".join(f"Paragraph {i} talks about plants and water." for i in range(45))
    df = uploads.read_upload("notes.txt", text.encode())
    assert list(df.columns) == ["prompt", "response"] and len(df) == 45
    assert df["prompt"].nunique() == 23  # groups of 45 // 20 = 2 paragraphs
    assert df["prompt"].iloc[0] == "paragraph group 1" and df["prompt"].iloc[2] == "paragraph group 2"
    csv = pd.DataFrame({"prompt": ["a", "b", "b"], "response": ["x y", "z", "w"]}).to_csv(index=False).encode()
    assert len(uploads.read_upload("c.csv", csv)) == 3
    bad = pd.DataFrame({"question": ["a"], "answer": ["b"]}).to_csv(index=False).encode()
    for name, data, msg in (("c.csv", bad, "lacks column"), ("one.txt", b"just one paragraph", "paragraph"),
                            ("x.docx", b"abc", "type"), ("big.txt", b"a" * (6 * 2**20), "limit"),
                            ("e.jsonl", b"  ", "empty"), ("bad.txt", b"\xff\xfe\x00a\n\nb\xff", "UTF-8")):
        with pytest.raises(ValueError, match=msg):
            uploads.read_upload(name, data)


def test_train_frame_writes_a_loadable_model(tmp_path, monkeypatch):
    import sdecore
    from dashboard import runs

    monkeypatch.setenv("SDECORE_RUNS", str(tmp_path))
    frame = pd.read_json(ROOT / "tests" / "data" / "tiny_corpus.jsonl", lines=True)
    seen = []
    out, history = runs.train_frame(frame, "tiny upload.jsonl", 1, 16, 64, seen.append)
    assert out.parent == tmp_path and out.name.startswith("tiny_upload-")
    assert len(seen) == 1 and seen[0]["epoch"] == 1 and len(history["epochs"]) == 1
    assert (out / "map.json").is_file() and runs.trained_models() == [out]
    assert sdecore.load_checkpoint(out).model.config.drift_hidden == 16


def test_train_frame_report_evaluates_the_rows_it_trained_on(tmp_path, monkeypatch):
    """With report=True the trained folder is evaluated (report.json) on the temporary corpus
    file, while it still exists; without it, not at all."""
    import sdecore
    from dashboard import runs

    frame = pd.DataFrame({"prompt": ["a", "b", "c"], "response": ["x y", "z", "w v"]})
    calls = []

    def fake_train(corpus, out, model_config, train_config, **kwargs):
        calls.append(("train", out, pd.read_json(corpus, lines=True)))
        return {"epochs": []}

    def fake_report(folder, corpus, *, max_rows=None, embedder=None):
        calls.append(("report", folder, pd.read_json(corpus, lines=True)))
        return {}

    monkeypatch.setattr(sdecore, "train_model", fake_train)
    monkeypatch.setattr(runs, "write_report", fake_report)
    out, _ = runs.train_frame(frame, "c.csv", 1, 16, 64, out=tmp_path / "m", report=True)
    assert [c[0] for c in calls] == ["train", "report"] and calls[1][1] == out
    pd.testing.assert_frame_equal(calls[1][2], frame)
    runs.train_frame(frame, "c.csv", 1, 16, 64, out=tmp_path / "m2")
    assert [c[0] for c in calls] == ["train", "report", "train"]


def test_page_limits_lie_within_the_engines():
    from dashboard import session
    from sdecore import limits

    assert session.SOLVERS == limits.SOLVERS
    assert set(session.PAGE_LIMITS) <= set(limits.LIMITS)
    for name, (lo, hi) in session.PAGE_LIMITS.items():
        assert limits.LIMITS[name][0] == lo <= hi <= limits.LIMITS[name][1]
        assert limits.check_limit(name, hi) == hi


def test_fan_chart_quantiles_and_magnitudes():
    from dashboard import charts, shaping

    values = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, np.nan]])
    fig = charts.fan_chart(np.array([0.0, 1.0]), values, np.array([9.0, 9.0]), "q", "u", "t")
    median = next(t for t in fig.data if t.name == "median of paths")
    assert np.allclose(median.y, [2.0, 2.0])  # the NaN of a stopped path is ignored
    assert fig.layout.title.text == "t" and fig.layout.xaxis.title.text and fig.layout.yaxis.title.text == "q (u)"
    res = {"dt": 0.5, "scale": 2.0, "drift_norm": np.full((1, 3), 2.0), "sigma2": np.full((1, 3), 8.0)}
    drift, diff = shaping.step_magnitudes(res)
    assert drift.shape == (1, 2) and np.allclose(drift, 1.0)  # |mu| dt = 2 * 0.5
    assert np.allclose(diff, 4.0)  # 2 * sqrt(8 * 0.5)


def test_generate_charts_are_the_figures_plotly_validates():
    """The Generate page's charts skip plotly's validation for speed (charts.figure): each must be
    exactly what a validated figure of the same dicts holds."""
    import plotly.graph_objects as go

    from dashboard import charts

    rng = np.random.default_rng(0)
    t, values = np.arange(5.0), rng.random((3, 5))
    paths_xy = [rng.random((5, 2)) for _ in range(3)]
    figs = [charts.fan_chart(t, values, values[0], "q", "u", "title"),
            charts.map_chart(rng.random((6, 2)), list("abcdef"), paths_xy, [list("vwxyz")] * 3, paths_xy[0],
                             list("vwxyz"), "map"),
            charts.magnitude_chart(t[:-1], values[:, :-1], values[:, :-1])]
    for fig in figs:
        fast = fig.to_dict()
        checked = go.Figure(fast).to_dict()  # raises on any invalid property
        assert json.dumps(fast, sort_keys=True, default=str) == json.dumps(checked, sort_keys=True, default=str)
        assert fast["layout"]["title"]["text"] and fast["layout"]["xaxis"]["title"]["text"]


def test_the_reference_cloud_counts_and_names_the_tokens_of_each_cell():
    """The maps draw their reference tokens as one heatmap: each cell holds how many tokens fall in
    it, its hover names them in the given (frequency) order, stopped points are left out."""
    from dashboard import charts

    xy = np.array([[0.0, 0.0], [0.01, 0.01], [0.02, 0.0], [0.0, 0.02], [0.03, 0.03], [1.0, 1.0], [np.nan, 0.5]])
    toks = ["the", "a", "of", "to", "in", "zebra", "gone"]
    cloud = charts.reference_cloud(xy, toks, grid=(4, 4))
    z = np.asarray(cloud["z"], dtype=float)
    assert np.nansum(z) == 6 and z[0, 0] == 5 and z[3, 3] == 1 and np.isnan(z[0, 3])
    assert cloud["text"][0][0] == "the, a, of, to and 1 more" and cloud["text"][3][3] == "zebra"
    assert cloud["x"][0] < 0.5 < cloud["x"][-1] and len(cloud["x"]) == 4 and len(cloud["y"]) == 4
    again = charts.reference_cloud(xy, toks, grid=(4, 4))  # cached: the same content, a copy of its own
    assert again == cloud and again is not cloud
    assert np.nansum(np.asarray(charts.reference_cloud(np.zeros((0, 2)), [])["z"], dtype=float)) == 0


def test_csv_text_reads_back_as_the_rows():
    from dashboard.shaping import csv_text

    rows = [{"path": 1, "text": 'a, "quoted" text', "p": 0.25, "missing": None, "gone": float("nan"), "ok": True},
            {"path": 2, "text": "ü", "p": 1e-9, "missing": 3, "gone": 1.5, "ok": False}]
    back = pd.read_csv(io.StringIO(csv_text(rows)))
    assert list(back.columns) == list(rows[0])
    assert back["text"].tolist() == ['a, "quoted" text', "ü"] and back["p"].tolist() == [0.25, 1e-9]
    assert back["missing"].isna().tolist() == [True, False] and back["gone"].isna().tolist() == [True, False]
    assert csv_text([]) == ""


def test_token_spans_escape_and_glue():
    from dashboard import token_html

    html = token_html.token_spans(["<b>", "walk", "##ing"], [0.5, np.nan, 1.0], 1.0)
    assert "&#60;b&#62;" in html and "<b>" not in html
    assert ">walk</span><span" in html  # the ##ing piece joins its word without a space
    assert "rgba(209,73,91,0.85)" in html  # full value, full shading


def test_eval_frames_handle_nulls():
    from dashboard import charts_eval as ce

    frame = ce.models_frame(FAKE_MODELS)
    assert frame["model"].iloc[0] == "sde" and np.isnan(frame.set_index("model").loc["bigram", "coverage90"])
    fig = ce.calibration_chart([0.5, 0.9], [0.5, None], 0.88)
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


def test_toy_ou_envelope_is_exact():
    """For dX = -k X dt + sigma dW in 2-D, LV = -2k V + 2 sigma^2 exactly: the fit recovers it."""
    from dashboard import toy
    from sdecore import stability

    t, x = toy.simulate(toy.KINDS[0], 1.5, 0.7, 30, t_end=2.0, seed=1)
    V, LV = toy.lyapunov(toy.KINDS[0], x, 1.5, 0.7)
    env = stability.fit_envelope(V, LV)
    assert env.alpha == pytest.approx(3.0, rel=1e-3) and env.beta == pytest.approx(0.98, rel=1e-3)
    exact = toy.ou_mean_V(t, (2.0, 1.5), 1.5, 0.7)
    assert np.allclose(stability.lyapunov_bound(float(V[0, 0]), env.alpha, env.beta, t), exact, rtol=1e-3)


def test_every_run_asks_the_browser_for_plotly_s_code_first(model_env):
    """The sidebar's first element imports Streamlit's Plotly chunk (dashboard/preload.py), under
    its real file name, while the server computes the page."""
    from dashboard import preload

    chunk = preload.plotly_chunk()
    if chunk is None:
        pytest.skip("this Streamlit build has no single PlotlyChart chunk")
    assert (Path(preload.st.__file__).parent / "static" / "static" / "js" / chunk).is_file()
    at = start()
    bodies = [h.proto.body for h in at.get("html")]
    assert bodies == [preload.script(chunk)], bodies
    assert "display:none" in bodies[0] and f'"{chunk}"' in bodies[0] and "<script>" in bodies[0]
    js = bodies[0].split("<script>")[1].split("</script>")[0]
    assert js.count("{") == js.count("}") and js.count("(") == js.count(")")  # it runs in Chromium's test
