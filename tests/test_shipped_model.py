"""What the shipped model (assets/model) must show, by the commands a user runs."""

import json
import subprocess
import sys
from collections import Counter

import pytest
from conftest import ROOT, SHIPPED_MODEL, needs_shipped_model

from sdecore.cli import main

pytestmark = needs_shipped_model
PROMPT = "How can I improve my sleep?"


def _sample(capsys, scale=None):
    argv = ["sample", "--prompt", PROMPT, "--paths", "6", "--tokens", "16", "--seed", "7", "--format", "json"]
    if scale is not None:
        argv += ["--diffusion-scale", str(scale)]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_sample_command_prints_six_nonempty_paths_and_repeats_exactly():
    cmd = [sys.executable, "-m", "sdecore", "sample", "--prompt", PROMPT, "--paths", "6", "--tokens", "16",
           "--seed", "7", "--format", "json"]
    runs = [subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    assert runs[0].stdout == runs[1].stdout
    paths = json.loads(runs[0].stdout)["paths"]
    assert len(paths) == 6 and all(p["text"].strip() for p in paths)


def test_scale_zero_gives_one_text(capsys):
    texts = {p["text"] for p in _sample(capsys, 0)["paths"]}
    assert len(texts) == 1


def test_scale_two_gives_different_texts(capsys):
    texts = [p["text"] for p in _sample(capsys, 2)["paths"]]
    assert len(set(texts)) >= 4


def test_text_at_half_scale_is_not_degenerate(capsys):
    paths = _sample(capsys, 0.5)["paths"]
    distinct = []
    for p in paths:
        toks = p["tokens"]
        assert Counter(toks).most_common(1)[0][1] <= 0.3 * len(toks), toks
        distinct.append(len(set(toks)) / len(toks))
    assert sum(distinct) / len(distinct) >= 0.4


def test_info_shows_losses_that_beat_their_references(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "NVIDIA HelpSteer (CC-BY-4.0)" in out and "parameters:" in out
    hist = json.loads((SHIPPED_MODEL / "history.json").read_text())
    best, ref = hist["best_validation"], hist["references"]
    assert best["drift"] < ref["drift_zero_drift"]
    assert best["diffusion"] < ref["diffusion_constant_sigma"]


def test_shipped_report_beats_the_baselines():
    rep = json.loads((SHIPPED_MODEL / "report.json").read_text())["models"]
    sde = rep["sde"]
    assert sde["token_ppl"] <= 540 and sde["token_ppl"] < min(rep["unigram"]["token_ppl"], rep["bigram"]["token_ppl"])
    # the learned drift and diffusion beat every continuous baseline on the increments, linear ar1 too
    assert sde["increment_nll"] < min(rep[m]["increment_nll"] for m in ("ar1", "drift_only", "brownian"))
    assert 0.88 <= sde["coverage90"] <= 0.92


def test_shipped_model_is_small_and_complete():
    size = sum(f.stat().st_size for f in SHIPPED_MODEL.iterdir())
    assert size < 12e6
    assert not (SHIPPED_MODEL / "train_state.safetensors").exists()
    for f in ("config.json", "weights.safetensors", "history.json", "report.json", "map.json"):
        assert (SHIPPED_MODEL / f).is_file(), f


@pytest.mark.slow
def test_shipped_model_loads_in_a_fresh_process():
    code = "import time; t=time.time(); import sdecore; sdecore.load_checkpoint(); print(time.time()-t)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
