"""The package as others build on it (docs/design.md §6): no import cycle among sdecore's
modules, a light ``import sdecore``, optional extras that name themselves when missing, the
install files in step with each other, and no reference to a design file outside the repository."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PACKAGE = ROOT / "sdecore"
HEAVY = ("streamlit", "plotly", "umap", "numba", "datasets", "sentence_transformers", "sacrebleu", "rouge_score",
         "sklearn", "tqdm")


def _module_imports(path: Path) -> set[str]:
    """The sdecore modules that ``path`` imports, at any depth (inside functions too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y  /  from . import x
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(a.name for a in node.names)
            elif node.level == 0 and node.module and node.module.startswith("sdecore."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("sdecore."))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    return {m: _module_imports(PACKAGE / f"{m}.py") & modules - {m} for m in modules}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_known_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_among_sdecore_modules():
    graph = import_graph()
    assert {"train", "evaluate", "cli", "simulate"} <= set(graph)  # the graph was really read
    assert "evaluate" in graph["cli"] and "train" not in graph["evaluate"]
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_pure_mathematics_imports_no_model_code():
    graph = import_graph()
    for pure in ("stability", "processes", "metrics", "limits"):
        assert graph[pure] <= {"metrics"}, (pure, graph[pure])


def _fresh_modules(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sorted(sys.modules)))"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=True).stdout
    return {m.split(".")[0] for m in out.split()}


def test_import_sdecore_is_light():
    loaded = _fresh_modules("import sdecore")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    assert "torch" not in loaded  # the public names load on first use


def test_sampling_path_stays_light():
    """Loading the model and sampling (what `pip install .` alone must do) imports no extra
    (tqdm aside: `import torch` itself imports it)."""
    loaded = _fresh_modules(
        "import sdecore\n"
        "ck = sdecore.load_checkpoint()\n"
        "sdecore.simulate_paths(ck.model, ck.embedder, 'Hi there', paths=2, tokens=3)")
    heavy = set(HEAVY) - {"tqdm"}
    assert "torch" in loaded and not loaded & heavy, sorted(loaded & heavy)


def test_public_names_resolve_lazily():
    import sdecore

    assert sorted(sdecore.__all__) == sorted(sdecore._EXPORTS)
    assert sdecore.simulate_paths.__module__ == "sdecore.simulate"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sdecore.nope  # noqa: B018


def test_a_missing_extra_names_itself(monkeypatch):
    from sdecore import extras

    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # `import sacrebleu` now raises ImportError
    with pytest.raises(extras.MissingExtra, match=r"'eval' extra .*pip install 'sdecore\[eval\]'"):
        extras.require("sacrebleu", "measuring text")
    assert extras.require("json", "anything").__name__ == "json"


def test_cli_reports_a_missing_extra_in_one_line(tmp_path):
    """The frontier needs the `eval` extra: without it, one line naming the extra, status 2."""
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text("import sys\nsys.modules['sacrebleu'] = None\n")
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "sdecore", "frontier", "--corpus", "tests/data/tiny_corpus.jsonl"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "'eval' extra" in lines[0] and "Traceback" not in r.stderr, r.stderr


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ;]", r.strip(), maxsplit=1)[0].lower() for r in requirements if r.strip()}


def test_requirements_txt_installs_the_package_and_every_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert {"dashboard", "umap", "hub", "eval", "dev"} <= set(extras)
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    req = _names([ln for ln in lines if ln])
    wanted = _names(project["dependencies"]) | set().union(*(_names(v) for k, v in extras.items() if k != "dev"))
    assert wanted <= req, sorted(wanted - req)
    assert "torch==2.13.0" in lines and "torch==2.13.0" in project["dependencies"]


def test_the_extras_table_matches_pyproject():
    from sdecore.extras import OPTIONAL

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for module, (extra, dist) in OPTIONAL.items():
        assert dist in _names(extras[extra]), (module, extra, dist)


def test_design_references_point_into_the_repository():
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", design, flags=re.M))
    assert {"2.4", "4.1", "5.2", "6.3"} <= sections, sorted(sections)
    files = [p for d in ("sdecore", "dashboard", "bench", "tests") for p in (ROOT / d).rglob("*.py")]
    cited = 0
    for path in files + [ROOT / "README.md"]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(?<![\w/])DESIGN\.md", text), f"{path} cites a design file outside the repository"
        for ref in re.findall(r"docs/design\.md §(\d+(?:\.\d+)?)", text):
            assert ref in sections, f"{path} cites docs/design.md §{ref}, which does not exist"
            cited += 1
    assert cited >= 10
