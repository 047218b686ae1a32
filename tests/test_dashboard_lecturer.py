"""The lecturer's views through AppTest: the replay and the highlighted path, the Same noise page,
What the nets learned, the Lessons' links and the charts' downloads; and the pure helpers behind
them (a chart's data as rows, the replay's frames, the aligned texts)."""

from __future__ import annotations

from sdecore.process_setup import configure_threads

configure_threads()  # before torch loads (docs/design.md §6.3)

import base64  # noqa: E402
import html  # noqa: E402
import json  # noqa: E402
from urllib.parse import parse_qs  # noqa: E402

import numpy as np  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
import pytest  # noqa: E402

from tests.test_dashboard_apptest import assert_clean, chart_specs, continuations, n_charts, start  # noqa: E402


@pytest.fixture
def model_env(tiny_ckpt, monkeypatch, tmp_path):
    monkeypatch.setenv("SDECORE_MODEL", str(tiny_ckpt))
    monkeypatch.setenv("SDECORE_RUNS", str(tmp_path / "runs"))
    return tiny_ckpt


def _spec(at, i: int) -> dict:
    return json.loads(chart_specs(at)[i])


def _array(v) -> np.ndarray:
    """A chart's array as sent: a list, or plotly's typed array ({"dtype", "bdata"})."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
    return np.asarray(v)


# ----------------------------------------------------------------------------- Generate: replay and highlight
def test_replay_adds_frames_and_a_play_button_without_changing_the_paths(model_env):
    at = start()
    texts = continuations(at)
    assert "frames" not in _spec(at, 0) or not _spec(at, 0)["frames"]
    at.toggle(key="replay").set_value(True).run()
    assert_clean(at)
    assert continuations(at) == texts, "the replay draws the same paths"
    tokens = at.number_input(key="tokens").value
    for i in (0, 2):  # the fan chart and the map
        spec = _spec(at, i)
        assert len(spec["frames"]) == tokens + 1
        assert spec["layout"]["updatemenus"][0]["buttons"][0]["label"] == "▶ Play"
        assert len(spec["layout"]["sliders"][0]["steps"]) == tokens + 1
        # frame k draws k + 1 points of each path
        assert [_array(d["x"]).size for d in spec["frames"][3]["data"]] == [4] * len(spec["frames"][3]["data"])
        # the text grows in step: frame k's caption holds path 1's first k tokens
        assert "token 0:" in spec["frames"][0]["layout"]["annotations"][0]["text"]
        captions = [f["layout"]["annotations"][0]["text"] for f in spec["frames"]]
        assert captions[-1] != captions[1]
    assert n_charts(at) == 3


def test_highlight_draws_one_path_bold_and_dims_the_rest(model_env):
    at = start()
    at.selectbox(key="highlight").set_value("2").run()
    assert_clean(at)
    paths = [t for t in _spec(at, 2)["data"] if t["name"].startswith("path ")]
    widths = {t["name"]: t["line"]["width"] for t in paths}
    assert widths["path 2"] == max(widths.values()) and sum(w == widths["path 2"] for w in widths.values()) == 1
    assert paths[-1]["name"] == "path 2", "the highlighted path is drawn last, on top"
    assert all("rgba" in t["line"]["color"] for t in paths if t["name"] != "path 2")
    at.toggle(key="replay").set_value(True).run()
    assert "path 2, token" in _spec(at, 2)["frames"][1]["layout"]["annotations"][0]["text"]


def test_generate_replay_from_the_url(model_env):
    at = start(query={"replay": "true", "highlight": "3", "paths": "4"})
    assert at.toggle(key="replay").value is True and at.selectbox(key="highlight").value == "3"
    assert _spec(at, 2)["frames"]


# ----------------------------------------------------------------------------- downloads
def test_every_chart_has_its_image_settings_and_a_csv_download(model_env):
    at = start()
    configs = [json.loads(c.proto.config) for c in at.get("plotly_chart")]
    assert [c["toImageButtonOptions"]["format"] for c in configs] == ["png"] * 3
    assert all(c["toImageButtonOptions"]["scale"] == 3 for c in configs)
    assert [c["toImageButtonOptions"]["filename"] for c in configs] == ["fan_chart", "drift_vs_diffusion", "paths_map"]
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels.count("Chart data (CSV)") == 3
    at.sidebar.radio(key="image_format").set_value("SVG (vector)").run()
    assert_clean(at)
    assert {json.loads(c.proto.config)["toImageButtonOptions"]["format"] for c in at.get("plotly_chart")} == {"svg"}


def test_figure_rows_are_the_charts_data():
    from dashboard import charts, shaping

    fig = go.Figure([go.Scatter(x=[0, 1, 2], y=[3.0, 4.0, 5.0], name="a", text=["p", "q", "r"]),
                     go.Bar(x=["u", "v"], y=[1, 2], name="b")])
    fig.update_layout(xaxis_title="time", yaxis_title="size")
    rows = charts.figure_rows(fig)
    assert rows[0] == {"trace": "a", "x: time": 0, "y: size": 3.0, "text": "p"}
    assert rows[-1] == {"trace": "b", "x: time": "v", "y: size": 2, "text": None}
    assert shaping.csv_text(rows).splitlines()[0] == "trace,x: time,y: size,text"
    heat = go.Figure(go.Heatmap(z=[[1, 2], [3, 4]], x=["a", "b"], y=["c", "d"], name="h"))
    assert charts.figure_rows(heat)[1] == {"trace": "h", "x: x": "b", "y: y": "c", "z": 2}


def test_replay_frames_hold_the_prefixes_and_fixed_axes():
    from dashboard import charts

    rng = np.random.default_rng(1)
    paths = [rng.random((5, 2)) for _ in range(2)]
    fig = charts.map_chart(rng.random((4, 2)), list("abcd"), paths, [list("vwxyz")] * 2, paths[0], list("vwxyz"),
                           "map", highlight=1, captions=[f"after {k}" for k in range(5)])
    d = fig.to_dict()
    go.Figure(d)  # plotly validates the frames, the buttons and the slider
    assert [f["name"] for f in d["frames"]] == ["0", "1", "2", "3", "4"]
    np.testing.assert_array_equal(_array(d["frames"][2]["data"][0]["x"]), paths[0][:3, 0])
    assert d["frames"][2]["traces"] == [1, 2, 3] and d["frames"][4]["layout"]["annotations"][0]["text"] == "after 4"
    assert d["layout"]["xaxis"]["autorange"] is False


def test_aligned_table_marks_the_first_departure():
    from dashboard import token_html

    out = token_html.aligned_table(["a", "b", "c"], [("s = 1", ["a", "x", "<c>"], 1), ("s = 0.1", ["a", "b", "c"], -1)])
    assert out.count("<tr>") == 4 and "&lt;c&gt;" in out and "<c>" not in out
    first_row = out.split("<tr>")[3]
    assert first_row.count("outline:2px") == 1 and first_row.count("background:rgba(209,73,91") == 2
    assert "outline" not in out.split("<tr>")[4] and "background:rgba(209" not in out.split("<tr>")[4]


# ----------------------------------------------------------------------------- Same noise
def test_same_noise_page_compares_scales_on_one_seed(model_env):
    at = start("views/compare.py")
    assert n_charts(at) == 1 and len(at.metric) == 4
    table = [m.value for m in at.markdown if "<table" in m.value]
    assert len(table) == 1 and table[0].count("<tr>") == 6  # header, drift only, four scales
    share = _spec(at, 0)["data"]
    assert [t["name"] for t in share] == ["s = 0.05", "s = 0.1", "s = 0.25", "s = 1"]
    assert all(np.all(np.diff(_array(t["y"])) >= 0) for t in share)
    at.multiselect(key="scales").set_value(["0.5", "3"]).run()
    assert_clean(at)
    assert [t["name"] for t in _spec(at, 0)["data"]] == ["s = 0.5", "s = 3"]
    at.number_input(key="align_path").set_value(2).run()
    assert_clean(at)
    at.multiselect(key="scales").set_value(["1"]).run()
    assert_clean(at)
    assert any("at least two" in i.value for i in at.info) and n_charts(at) == 0


def test_same_noise_page_empty_prompt_is_a_message(model_env):
    at = start("views/compare.py")
    at.text_area(key="prompt").set_value("   ").run()
    assert_clean(at)
    assert any("prompt is empty" in e.value for e in at.error)


# ----------------------------------------------------------------------------- What the nets learned
def test_learned_page_ranks_tokens_reads_a_text_and_finds_the_drifts_loop(model_env):
    at = start("views/learned.py")
    assert n_charts(at) >= 5  # two rankings, the histogram, along the text, the next tokens (+ the escape scan)
    least, most = _spec(at, 0)["data"][0], _spec(at, 1)["data"][0]
    assert _array(least["x"]).max() <= _array(most["x"]).min()
    assert len(at.metric) >= 1 and at.metric[0].label == "Attractor"
    before = _spec(at, 3)["data"][0]["x"]  # the token labels
    at.text_area(key="text").set_value("the dog ran to the park").run()
    assert_clean(at)
    assert _spec(at, 3)["data"][0]["x"] != before
    at.select_slider(key="among").set_value(1000).run()
    assert_clean(at)
    assert "1,000 most frequent" in _spec(at, 2)["layout"]["title"]["text"]
    at.text_area(key="text").set_value("").run()
    assert any("text is empty" in e.value for e in at.error)
    at.text_input(key="attractor_prompt").set_value("").run()
    assert_clean(at)
    assert any("prompt is empty" in e.value for e in at.error)


# ----------------------------------------------------------------------------- Lessons
def test_lessons_link_to_pages_with_their_settings(model_env):
    at = start("views/lessons.py")
    links = at.get("page_link")
    assert 4 <= len(links) <= 6
    queries = [parse_qs(link.proto.query_string) for link in links]
    pages = [link.proto.page_script_hash for link in links]  # lessons 1, 2 and 4 open Generate, 3 Same noise
    assert pages[0] == pages[1] == pages[3] != pages[2] and pages[4] == pages[5] not in (pages[0], pages[2])
    assert queries[0]["scale"] == ["0.0"] and queries[2]["scales"] == ["0.02", "0.1", "0.5", "2"]
    # each link's settings are ones its page accepts: opened with them, the page runs clean and shows them
    at = start("views/compare.py", query={k: v if len(v) > 1 else v[0] for k, v in queries[2].items()})
    assert at.multiselect(key="scales").value == ["0.02", "0.1", "0.5", "2"]
    assert at.number_input(key="paths").value == 16
    gen = start(query={k: v[0] for k, v in queries[1].items()})
    assert gen.toggle(key="replay").value is True and gen.selectbox(key="highlight").value == "1"


@pytest.mark.parametrize("page", ["views/compare.py", "views/learned.py"])
def test_new_pages_without_a_model_explain(page, monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    from tests.test_dashboard_apptest import APP, TIMEOUT

    monkeypatch.setenv("SDECORE_MODEL", str(tmp_path / "missing"))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.switch_page(page).run()
    assert_clean(at)
    assert any("Cannot load the model" in e.value for e in at.error)


def test_rgba_reads_both_of_plotlys_colour_forms():
    from dashboard import charts

    assert charts.rgba("#1f77b4", 0.5) == "rgba(31,119,180,0.5)"
    assert charts.rgba("rgb(102, 194, 165)", 0.3) == "rgba(102,194,165,0.3)"
    assert all(charts.path_style(i, None, 1.0, 0.4)[0].startswith("rgba(") for i in range(len(charts.PALETTE) + 2))


def test_replay_of_many_paths_keeps_names_colours_and_bands(model_env):
    """With more paths than the replay draws, the highlighted path keeps its own name and colour,
    and the fan's bands still come from every path."""
    at = start(query={"paths": "20", "tokens": "4", "highlight": "19"})
    bands = [t["y"] for t in _spec(at, 0)["data"][:4]]
    colour = [t for t in _spec(at, 2)["data"] if t["name"] == "path 19"][0]["line"]["color"]
    at.toggle(key="replay").set_value(True).run()
    assert_clean(at)
    fan, paths_map = _spec(at, 0), _spec(at, 2)
    assert [t["y"] for t in fan["data"][:4]] == bands
    names = [t["name"] for t in paths_map["data"] if t["name"].startswith("path ")]
    assert len(names) == 16 and names[-1] == "path 19" and "path 16" not in names
    assert [t for t in paths_map["data"] if t["name"] == "path 19"][0]["line"]["color"] == colour
    assert fan["data"][-1]["name"] == "path 19", "the highlighted path is drawn on top of the fan"
    assert "path 19, token" in paths_map["frames"][1]["layout"]["annotations"][0]["text"]


def test_token_text_is_not_read_as_markdown():
    from dashboard import token_html

    out = token_html.token_spans(["costs", "$", "5", "*", "or", "`", "_x_"], [0.5] * 7)
    assert "$" not in out and "*" not in out and "`" not in out and "_" not in out.replace("&#95;", "")
    assert "&#36;" in out and "&#42;" in out
    # one pass: an apostrophe (the commonest such token) is one entity, not an escaped entity
    text = "i ' m <b> \"5\" & $x$ #1 [a](b)"
    assert html.unescape(token_html.escape_text(text)) == text
    assert token_html.escape_text("'") == "&#39;"
