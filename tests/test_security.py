"""What a served dashboard must not do: unpickle anything, let a URL name a file or folder, or
listen beyond this machine unless told to."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

CODE = [p for d in ("sdecore", "dashboard", "bench") for p in (ROOT / d).rglob("*.py")]
# the query parameters the pages bind widgets to: settings of a view, never a path
URL_KEYS = {"prompt", "scale", "paths", "tokens", "solver", "substeps", "seed", "snap", "stab_paths", "stab_tokens",
            "stab_substeps", "sweep_grid", "traj_text",
            # Generate's replay and highlighted path; Same noise; What the nets learned
            "replay", "highlight", "scales", "align_path", "among", "text", "attractor_prompt"}


def unpickling_calls(source: str) -> list[str]:
    """Calls in ``source`` that can run pickled code: ``torch.load`` without ``weights_only=True``,
    ``pickle``/``cloudpickle``/``dill``/``joblib`` loads, ``pandas.read_pickle``, ``numpy.load`` with
    ``allow_pickle=True``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"import {m}" for m in mods if m.split(".")[0] in ("pickle", "cloudpickle", "dill", "shelve")]
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if name.endswith("torch.load") and kw.get("weights_only") != "True":
            found.append(name)
        elif name.split(".")[-1] in ("read_pickle", "Unpickler") or name in ("joblib.load", "dill.load", "dill.loads"):
            found.append(name)
        elif name in ("np.load", "numpy.load") and kw.get("allow_pickle") == "True":
            found.append(name)
    return found


def test_the_scanner_finds_what_it_looks_for():
    bad = ("import pickle\nimport torch\ntorch.load('x')\ntorch.load('x', weights_only=False)\n"
           "import pandas as pd\npd.read_pickle('x')\nimport numpy as np\nnp.load('x', allow_pickle=True)\n")
    assert len(unpickling_calls(bad)) == 5
    assert unpickling_calls("import torch\ntorch.load('x', weights_only=True)\nnp.load('x')\n") == []


def test_nothing_is_unpickled_anywhere():
    found = {str(p.relative_to(ROOT)): hits for p in CODE if (hits := unpickling_calls(p.read_text(encoding="utf-8")))}
    assert found == {}


def test_no_url_parameter_names_a_file_or_folder():
    """Every widget bound to the URL is one of the view's settings; the model folder comes from
    the environment or the Train page, never from a query parameter, and no page reads
    ``st.query_params`` itself."""
    bound = set()
    for p in (ROOT / "dashboard").rglob("*.py"):
        tree = ast.parse(p.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "query_params":
                pytest.fail(f"{p.relative_to(ROOT)} reads st.query_params")
            if isinstance(node, ast.Call):
                kw = {k.arg: k.value for k in node.keywords}
                binds = any(k.arg is None and ast.unparse(k.value) == "bind" for k in node.keywords) or (
                    "bind" in kw and ast.unparse(kw["bind"]) == "'query-params'")
                if binds and "key" in kw:
                    bound.add(ast.literal_eval(kw["key"]))
    assert bound and bound <= URL_KEYS, bound - URL_KEYS


def test_a_url_cannot_pick_the_model_folder(tiny_ckpt, monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SDECORE_MODEL", str(tiny_ckpt))
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=120)
    for key in ("active_model", "model", "folder", "SDECORE_MODEL"):
        at.query_params[key] = str(tmp_path)
    at.query_params.update({"paths": "2", "tokens": "3"})
    at.run()
    assert not at.exception
    assert any(Path(tiny_ckpt).name in m.value for m in at.sidebar.markdown)
    assert not any(str(tmp_path) in m.value for m in at.sidebar.markdown)


def test_the_server_listens_on_this_machine_only_by_default():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1" and config["browser"]["gatherUsageStats"] is False
    assert config["server"]["maxUploadSize"] <= 5
