"""Training on the tiny corpus: losses fall, the best epoch is kept, --resume continues
exactly, and the checkpoint folder follows its contract."""

import json
import math

import pytest
import torch
from conftest import TINY_CORPUS, stopped_and_resumed

from sdecore import ModelConfig, TrainConfig, load_checkpoint, train_model
from sdecore.baselines import unigram_log_prior
from sdecore.checkpoint import read_tensors
from sdecore.data import load_corpus, split_by_prompt
from sdecore.model import TextSDE
from sdecore.tokendata import TokenSequences
from sdecore.train import evaluate_losses
from sdecore.transitions import build_transitions, encode_rows, training_tokens

SMALL = ModelConfig(drift_hidden=64, diffusion_hidden=32, readout_hidden=64)


def _val_data(embedder):
    split = split_by_prompt(load_corpus(TINY_CORPUS), TrainConfig.val_fraction)
    train, firsts = encode_rows(embedder, split.train, training=True, include_prompts=True)
    return training_tokens(train, firsts), encode_rows(embedder, split.validation, training=False)


def test_training_lowers_validation_loss(tiny_ckpt, embedder):
    train_seqs, val_seqs = _val_data(embedder)
    torch.manual_seed(0)  # the same initialisation train_model starts from
    fresh = TextSDE(ModelConfig(drift_hidden=64, diffusion_hidden=32, readout_hidden=64), embedder,
                    unigram_log_prior(train_seqs, embedder.support_mask, 0.1))
    val = TokenSequences.from_lists(*val_seqs)
    before = evaluate_losses(fresh, val, TrainConfig())
    trained = load_checkpoint(tiny_ckpt, embedder=embedder).model
    after = evaluate_losses(trained, val, TrainConfig())
    assert after["total"] < before["total"] - 0.5
    assert after["ce"] < before["ce"] - 0.5


def test_history_and_references(tiny_ckpt):
    h = json.loads((tiny_ckpt / "history.json").read_text())
    assert len(h["epochs"]) == 4
    for e in h["epochs"]:
        for split in ("train", "validation"):
            assert {"drift", "diffusion", "ce", "total"} <= set(e[split])
    best = min(h["epochs"], key=lambda e: e["validation"]["total"])
    assert h["best_epoch"] == best["epoch"]
    # the learned drift beats a zero drift on the same validation split (the diffusion's
    # comparison needs more data than this corpus: it is checked on the shipped model)
    assert h["best_validation"]["drift"] < h["references"]["drift_zero_drift"]
    assert set(h["references"]) == {"drift_zero_drift", "diffusion_constant_sigma"}


def test_checkpoint_contents(tiny_ckpt, embedder):
    cfg = json.loads((tiny_ckpt / "config.json").read_text())
    assert cfg["format_version"] == 1 and cfg["data_credit"] == "NVIDIA HelpSteer (CC-BY-4.0)"
    assert cfg["embedder"]["fingerprint"] == embedder.fingerprint
    for f in ("weights.safetensors", "train_state.safetensors", "history.json", "map.safetensors"):
        assert (tiny_ckpt / f).is_file(), f
    weights = read_tensors(tiny_ckpt / "weights.safetensors")
    assert not any("table" in k for k in weights)  # the embedding table is not copied in
    assert not list(tiny_ckpt.glob("*.tmp"))


def test_resume_continues_exactly(tmp_path):
    """A run stopped after epoch 2 and resumed ends where an uninterrupted run ends."""
    ha, hb = stopped_and_resumed(tmp_path, SMALL, "cpu")
    assert len(hb["epochs"]) == 3
    for ea, eb in zip(ha["epochs"], hb["epochs"]):
        assert ea["validation"]["total"] == pytest.approx(eb["validation"]["total"], rel=1e-5)


def test_existing_checkpoint_is_not_overwritten(tiny_ckpt):
    before = (tiny_ckpt / "weights.safetensors").read_bytes()
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        train_model(TINY_CORPUS, tiny_ckpt, SMALL, TrainConfig(epochs=1), device="cpu", progress=False)
    assert (tiny_ckpt / "weights.safetensors").read_bytes() == before


def test_resume_needs_a_train_state(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        train_model(TINY_CORPUS, tmp_path, SMALL, TrainConfig(epochs=1), device="cpu", progress=False, resume=True)


def test_corpus_with_one_prompt_is_refused(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text('{"prompt": "p", "response": "a b c d"}\n{"prompt": "p", "response": "e f g"}\n')
    with pytest.raises(ValueError, match="two distinct prompts"):
        train_model(path, tmp_path / "out", SMALL, TrainConfig(epochs=1), device="cpu", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["config", "weights", "fingerprint", "version"])
def test_damaged_checkpoints_are_refused(tiny_ckpt, tmp_path, embedder, damage):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, ck)
    cfg = json.loads((ck / "config.json").read_text())
    if damage == "config":
        (ck / "config.json").write_text("{not json")
    elif damage == "weights":
        (ck / "weights.safetensors").write_bytes((ck / "weights.safetensors").read_bytes()[:100])
    elif damage == "fingerprint":
        cfg["embedder"]["fingerprint"] = "30522x384:0000000000000000"
        (ck / "config.json").write_text(json.dumps(cfg))
    else:
        cfg["format_version"] = 99
        (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError):
        load_checkpoint(ck, embedder=embedder)


def test_overwrite_leaves_nothing_from_the_old_model(tiny_ckpt, tmp_path):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, ck)
    (ck / "frontier.json").write_text("{}")
    train_model(TINY_CORPUS, ck, SMALL, TrainConfig(epochs=1, batch_size=64, map="none"),
                device="cpu", progress=False, overwrite=True)
    for stale in ("map.json", "map.safetensors", "frontier.json", "report.json"):
        assert not (ck / stale).exists(), stale
    assert len(json.loads((ck / "history.json").read_text())["epochs"]) == 1


def test_a_missing_umap_extra_stops_training_before_it_starts(tmp_path, monkeypatch):
    import sys

    from sdecore.extras import MissingExtra

    monkeypatch.setitem(sys.modules, "umap", None)  # `import umap` now raises ImportError
    with pytest.raises(MissingExtra, match="'umap' extra"):
        train_model(TINY_CORPUS, tmp_path / "m", SMALL, TrainConfig(epochs=1, map="umap"), device="cpu",
                    progress=False)
    assert not (tmp_path / "m").exists()  # nothing was trained or written


def test_window_batches_train_like_transition_batches(tmp_path):
    """Batches of 8-token windows against batches of single transitions (window 1, the default:
    random transitions from the whole corpus): the same seed ends at validation losses within
    the spread that the seed alone makes (about 0.2 here)."""
    finals = {}
    for window in (1, 8):
        cfg = TrainConfig(epochs=4, batch_size=64, window=window)
        h = train_model(TINY_CORPUS, tmp_path / f"w{window}", SMALL, cfg, device="cpu", progress=False)
        totals = [e["validation"]["total"] for e in h["epochs"]]
        assert totals[-1] < totals[0] - 2.0  # both learn
        finals[window] = totals[-1]
    assert abs(finals[8] - finals[1]) < 0.5, finals


def test_on_the_fly_batches_train_as_the_precomputed_table_did(embedder, tmp_path):
    """One epoch of train_model (token ids, batches built on the fly) against the same epoch run
    the way training ran before, on a table of precomputed transitions with their memory: the
    same seed draws the same batches, so the validation losses agree to float32 rounding."""
    from sdecore.train import _optimizer, _perturb, _set_lr, weighted_loss

    cfg = TrainConfig(epochs=1, batch_size=64, seed=3)
    hist = train_model(TINY_CORPUS, tmp_path / "new", SMALL, cfg, device="cpu", progress=False)

    split = split_by_prompt(load_corpus(TINY_CORPUS), cfg.val_fraction)
    torch.manual_seed(cfg.seed)
    seqs, firsts = encode_rows(embedder, split.train, training=True, include_prompts=cfg.include_prompts)
    val_seqs, val_firsts = encode_rows(embedder, split.validation, training=False)
    prior = unigram_log_prior(training_tokens(seqs, firsts), embedder.support_mask, SMALL.prior_smoothing)
    model = TextSDE(ModelConfig(drift_hidden=64, diffusion_hidden=32, readout_hidden=64), embedder, prior)
    table = build_transitions(model, seqs, firsts)
    opt = _optimizer(model, cfg)
    model.train()
    gen = torch.Generator().manual_seed(cfg.seed * 100_003)
    torch.manual_seed(cfg.seed * 100_003)
    steps = torch.randperm(len(table), generator=gen).split(cfg.batch_size)
    for i, idx in enumerate(steps):
        _set_lr(opt, cfg, i / len(steps))
        ce_mask = torch.rand(len(idx), generator=gen) < cfg.ce_fraction
        ce_mask[0] = True
        batch = table.take(idx)
        loss = weighted_loss(model(*batch, ce_mask, _perturb(batch[0], cfg, gen)), cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
    old = evaluate_losses(model, TokenSequences.from_lists(val_seqs, val_firsts), cfg)
    new = hist["epochs"][0]["validation"]
    for k in ("drift", "diffusion", "ce", "total"):
        assert new[k] == pytest.approx(old[k], rel=1e-4), (k, new[k], old[k])


def test_bf16_autocast_losses_match_float32(embedder, tmp_path):
    """--precision bf16 runs the nets under bfloat16 autocast (the emission and the losses stay
    float32): one batch's losses agree with float32 within 0.1% (relative; measured about 1e-4),
    and a short run's validation losses within 0.5% of the float32 run's (measured 3e-4)."""
    from sdecore.tokendata import encode_corpus, in_order

    split = split_by_prompt(load_corpus(TINY_CORPUS), TrainConfig.val_fraction)
    torch.manual_seed(0)
    model = TextSDE(SMALL, embedder).eval()
    batch = next(in_order(model, encode_corpus(embedder, split.train, training=True), per_batch=256))
    with torch.no_grad():
        full = model(*batch.as_tuple())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(*batch.as_tuple())
    for k in ("drift", "diffusion", "ce"):
        assert half[k].dtype == torch.float32
        assert float(half[k]) == pytest.approx(float(full[k]), rel=1e-3), k

    finals = {}
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(epochs=2, batch_size=64, precision=precision)
        h = train_model(TINY_CORPUS, tmp_path / precision, SMALL, cfg, device="cpu", progress=False)
        finals[precision] = h["epochs"][-1]["validation"]
    for k in ("drift", "diffusion", "ce", "total"):
        assert finals["bf16"][k] == pytest.approx(finals["fp32"][k], rel=5e-3), (k, finals)


def test_precision_is_checked():
    with pytest.raises(ValueError, match="--precision"):
        TrainConfig(precision="fp16").validate()


def test_overwrite_killed_at_any_moment_leaves_a_loadable_model(tiny_ckpt, tmp_path):
    """`train --overwrite` trains into a hidden sibling folder and swaps it in when complete:
    a process killed (SIGKILL) at any moment leaves the old model or the new one in --out,
    loadable, and a leftover of the killed run does not block the next."""
    import shutil
    import subprocess
    import sys
    import time

    from conftest import ROOT

    from sdecore.checkpoint import staging_folder

    out = tmp_path / "model"
    shutil.copytree(tiny_ckpt, out)
    (out / "notes.txt").write_text("mine")  # not part of a checkpoint: kept across the swap
    old_history = json.loads((out / "history.json").read_text())
    cmd = [sys.executable, "-m", "sdecore", "train", "--corpus", str(TINY_CORPUS), "--out", str(out), "--overwrite",
           "--epochs", "5", "--batch-size", "64", "--map", "none", "--no-report", "--no-progress", "--seed", "4"]

    def still_whole(expect_epochs: set[int]) -> int:
        ck = load_checkpoint(out)  # raises if the folder is not a complete checkpoint
        epochs = len(ck.history["epochs"])
        assert epochs in expect_epochs and (out / "notes.txt").read_text() == "mine"
        return epochs

    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=600)
    full = time.perf_counter() - t0
    assert still_whole({5}) == 5 and not staging_folder(out).exists()
    shutil.rmtree(out)
    shutil.copytree(tiny_ckpt, out)
    (out / "notes.txt").write_text("mine")
    seen = set()
    for fraction in (0.2, 0.5, 0.8, 0.95):
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(fraction * full)
        proc.kill()
        proc.wait()
        seen.add(still_whole({len(old_history["epochs"]), 5}))
    assert len(old_history["epochs"]) in seen  # at least one kill came before the swap
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=600)  # a leftover does not block it
    assert still_whole({5}) == 5 and not staging_folder(out).exists()


def test_resume_refuses_other_data_or_another_model(tmp_path):
    """--resume continues only the run it started: the same corpus (by content), --max-rows,
    training objective and model configuration; a mismatch is refused in one line naming it, the folder untouched."""
    cfg = TrainConfig(epochs=1, batch_size=64, seed=2)
    out = tmp_path / "run"
    train_model(TINY_CORPUS, out, SMALL, cfg, device="cpu", progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    more = TrainConfig(epochs=2, batch_size=64, seed=2)
    edited = tmp_path / "edited.jsonl"
    lines = TINY_CORPUS.read_text().splitlines()
    row = json.loads(lines[0])
    row["response"] += " One more sentence."
    edited.write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")
    cases = [
        ((edited, out, SMALL, more), "corpus differs"),
        ((TINY_CORPUS, out, SMALL, TrainConfig(epochs=2, batch_size=64, seed=2, max_rows=10)), "--max-rows"),
        ((TINY_CORPUS, out, SMALL, TrainConfig(epochs=2, batch_size=64, seed=2, ce_trains_drift=True)),
         "ce_trains_drift False"),
        ((TINY_CORPUS, out, ModelConfig(drift_hidden=32, diffusion_hidden=32, readout_hidden=32), more),
         "drift_hidden"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            train_model(*args, device="cpu", progress=False, resume=True)
        assert "\n" not in str(err.value)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    h = train_model(TINY_CORPUS, out, None, more, device="cpu", progress=False, resume=True)  # the same run goes on
    assert len(h["epochs"]) == 2 and h["corpus_fingerprint"] == json.loads((out / "history.json").read_text())[
        "corpus_fingerprint"]


def test_a_run_that_failed_before_its_first_epoch_does_not_block_a_rerun(tmp_path, monkeypatch):
    """A run that fails inside its first epoch (as a torchrun rank does on a corpus too small to
    share out) leaves only config.json; the same command then runs, without --overwrite."""
    import sdecore.train as train_module

    out = tmp_path / "run"
    real_epoch = train_module._train_epoch

    def failing_epoch(*args, **kwargs):
        raise RuntimeError("a rank failed")

    monkeypatch.setattr(train_module, "_train_epoch", failing_epoch)
    with pytest.raises(RuntimeError, match="a rank failed"):
        train_model(TINY_CORPUS, out, SMALL, TrainConfig(epochs=1, batch_size=64), device="cpu", progress=False)
    assert [p.name for p in out.iterdir()] == ["config.json"]
    monkeypatch.setattr(train_module, "_train_epoch", real_epoch)
    h = train_model(TINY_CORPUS, out, SMALL, TrainConfig(epochs=1, batch_size=64), device="cpu", progress=False)
    assert len(h["epochs"]) == 1 and load_checkpoint(out).history["epochs"]


def test_steps_with_a_non_finite_loss_are_skipped_and_counted_then_training_stops(tmp_path, monkeypatch):
    import sdecore.train as train_module

    real = train_module.weighted_loss
    calls = {"n": 0}

    def every_third_nan(parts, cfg):
        calls["n"] += 1
        loss = real(parts, cfg)
        return loss * float("nan") if calls["n"] % 3 == 0 else loss

    monkeypatch.setattr(train_module, "weighted_loss", every_third_nan)
    h = train_model(TINY_CORPUS, tmp_path / "a", SMALL, TrainConfig(epochs=2, batch_size=64), device="cpu",
                    progress=False)
    for e in h["epochs"]:
        assert e["skipped_steps"] > 0 and all(math.isfinite(v) for v in e["train"].values())
        assert all(math.isfinite(v) for v in e["validation"].values())  # the weights never took a NaN step
    monkeypatch.setattr(train_module, "weighted_loss", lambda parts, cfg: real(parts, cfg) * float("nan"))
    with pytest.raises(ValueError, match="steps in a row had a non-finite loss"):
        train_model(TINY_CORPUS, tmp_path / "b", SMALL, TrainConfig(epochs=1, batch_size=8), device="cpu",
                    progress=False)


def test_an_epoch_of_only_non_finite_steps_stops_training(tmp_path, monkeypatch):
    import sdecore.train as train_module

    real = train_module.weighted_loss
    monkeypatch.setattr(train_module, "weighted_loss", lambda parts, cfg: real(parts, cfg) * float("inf"))
    with pytest.raises(ValueError, match="every step had a non-finite loss"):  # one step an epoch: never 20 in a row
        train_model(TINY_CORPUS, tmp_path / "c", SMALL, TrainConfig(epochs=2, batch_size=4096), device="cpu",
                    progress=False)


def test_a_users_files_left_in_a_killed_swap_come_back(tiny_ckpt, tmp_path):
    import shutil

    from sdecore.checkpoint import staging_folder

    out = tmp_path / "model"
    shutil.copytree(tiny_ckpt, out)
    stranded = staging_folder(out)
    shutil.copytree(tiny_ckpt, stranded)  # as a kill after the exchange, before the files moved, leaves it
    (stranded / "notes.txt").write_text("mine")
    train_model(TINY_CORPUS, out, SMALL, TrainConfig(epochs=1, batch_size=64), device="cpu", progress=False,
                overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and not stranded.exists()
    assert len(load_checkpoint(out).history["epochs"]) == 1
