"""The engine on a CUDA GPU: sampling, memory, training, resuming, bfloat16, the CLI and torchrun
with NCCL. Every test here skips on a machine without one (CI has none); on a GPU machine run
them with ``python -m pytest tests/test_cuda.py``.

What holds on a GPU (docs/design.md §3, §6): a seed gives the same paths on every run; em equals
torchsde's euler on the same Brownian path; the drift-only path (s = 0) gives the CPU's tokens
(the noise differs: a GPU draws its own random stream for a seed); a 4,096-path request stays
within a bounded amount of GPU memory; a run stopped and resumed ends where an uninterrupted one
ends; a checkpoint trained on the GPU loads on the CPU."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, SHIPPED_MODEL, TINY_CORPUS, needs_shipped_model, stopped_and_resumed

from sdecore import ModelConfig, TrainConfig, load_checkpoint, simulate_paths, train_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")

SMALL = ModelConfig(drift_hidden=64, diffusion_hidden=32, readout_hidden=64)
PROMPT = "How can I improve my sleep?"


@pytest.fixture(scope="module")
def shipped_gpu():
    return load_checkpoint(SHIPPED_MODEL, device="cuda")


@pytest.fixture(scope="module")
def shipped_cpu():
    return load_checkpoint(SHIPPED_MODEL, device="cpu")


def _sim(ck, **kw):
    args = {"paths": 8, "tokens": 16, "diffusion_scale": 1.0, "seed": 3}
    args.update(kw)
    return simulate_paths(ck.model, ck.embedder, PROMPT, **args)


@needs_shipped_model
def test_a_seed_gives_the_same_paths_on_the_gpu(shipped_gpu):
    a, b = _sim(shipped_gpu), _sim(shipped_gpu)
    assert shipped_gpu.model.emb_mean.device.type == "cuda"  # the run is on the GPU; Paths come back on the CPU
    assert torch.equal(a.token_ids, b.token_ids) and (a.token_ids >= 0).all()
    assert not torch.equal(a.token_ids[0], a.token_ids[1])  # the noise reaches the paths


@needs_shipped_model
@pytest.mark.parametrize("substeps", [1, 2])
def test_em_equals_torchsde_euler_on_the_gpu(shipped_gpu, substeps):
    a = _sim(shipped_gpu, solver="em", substeps=substeps, record_states=True)
    b = _sim(shipped_gpu, solver="euler", substeps=substeps, record_states=True)
    torch.testing.assert_close(a.states, b.states, rtol=1e-4, atol=1e-4, equal_nan=True)
    assert torch.equal(a.token_ids, b.token_ids)


@needs_shipped_model
def test_the_drift_only_path_gives_the_cpus_tokens(shipped_gpu, shipped_cpu):
    """At s = 0 no noise is drawn: the GPU's path is the CPU's to float32 rounding, and so are its
    tokens (TF32 is off for float32 products, PyTorch's default). A token whose two best logits
    tie to rounding could flip on some GPU; on the H200 all 48 agree."""
    gpu = _sim(shipped_gpu, diffusion_scale=0.0, paths=2, tokens=24, record_states=True)
    cpu = _sim(shipped_cpu, diffusion_scale=0.0, paths=2, tokens=24, record_states=True)
    assert torch.equal(gpu.token_ids.cpu(), cpu.token_ids)
    torch.testing.assert_close(gpu.states.cpu(), cpu.states, rtol=1e-3, atol=1e-3, equal_nan=True)


@needs_shipped_model
def test_temperature_sampling_on_the_gpu(shipped_gpu):
    a = _sim(shipped_gpu, temperature=0.8, paths=4, tokens=10)
    b = _sim(shipped_gpu, temperature=0.8, paths=4, tokens=10)
    assert torch.equal(a.token_ids, b.token_ids)
    assert shipped_gpu.embedder.support_mask[a.token_ids.cpu()].all()


@needs_shipped_model
def test_a_big_request_holds_bounded_gpu_memory(shipped_gpu):
    """4,096 paths x 16 tokens: the decode works in row blocks, so the GPU never holds the full
    (paths x vocabulary) logits (4,096 x 30,522 float32 is 500 MB; with the tensors around it
    an unblocked decode needs several times that)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    r = _sim(shipped_gpu, paths=4096, tokens=16)
    torch.cuda.synchronize()
    peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    assert r.token_ids.shape == (4096, 16) and (r.token_ids >= 0).float().mean() > 0.99
    assert peak_mb < 1500, f"{peak_mb:.0f} MB of GPU memory for 4,096 x 16"


def test_resume_on_the_gpu_continues_exactly_and_the_checkpoint_loads_on_the_cpu(tmp_path):
    ha, hb = stopped_and_resumed(tmp_path, SMALL, "cuda")
    assert len(hb["epochs"]) == 3
    for ea, eb in zip(ha["epochs"], hb["epochs"]):  # cuBLAS and atomics: equal to float32 rounding
        assert ea["validation"]["total"] == pytest.approx(eb["validation"]["total"], rel=1e-4)
    assert ha["epochs"][-1]["validation"]["total"] < ha["epochs"][0]["validation"]["total"]

    ck = load_checkpoint(tmp_path / "b", device="cpu")
    assert next(ck.model.parameters()).device.type == "cpu"
    r = simulate_paths(ck.model, ck.embedder, PROMPT, paths=2, tokens=4, seed=0)
    assert (r.token_ids >= 0).all()


def test_batches_gathered_on_the_gpu_equal_the_cpus(embedder):
    """The ids of a batch gathered on the GPU (:meth:`TokenSequences.on`) are the CPU's to the
    bit, and its states the CPU's to float32 rounding."""
    from sdecore.data import load_corpus
    from sdecore.model import TextSDE
    from sdecore.tokendata import batches, encode_corpus, window_batch

    data = encode_corpus(embedder, load_corpus(TINY_CORPUS), training=True)
    torch.manual_seed(0)
    model = TextSDE(SMALL, embedder).eval()
    windows = next(batches(data.windows(8), 64, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        cpu = window_batch(model, data, windows)
        gpu = window_batch(model.to("cuda"), data, windows)
    assert gpu.x.device.type == "cuda" and list(data._copies) == [model.emb_mean.device]  # one copy, on the GPU
    assert data.on(torch.device("cuda")) is data._copies[model.emb_mean.device]  # "cuda" names the same one
    for k in ("v", "v_next", "seq", "t"):
        assert torch.equal(getattr(gpu, k).cpu(), getattr(cpu, k)), k
    for k in ("x", "x_next", "h"):
        torch.testing.assert_close(getattr(gpu, k).cpu(), getattr(cpu, k), rtol=1e-5, atol=1e-5)


def test_bf16_training_on_the_gpu_matches_float32(tmp_path):
    """--precision bf16 on a GPU's bfloat16 units: a short run's validation losses within 0.5% of
    the float32 run's, as on the CPU (tests/test_train.py)."""
    finals = {}
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(epochs=2, batch_size=64, precision=precision, seed=0)
        h = train_model(TINY_CORPUS, tmp_path / precision, SMALL, cfg, device="cuda", progress=False)
        finals[precision] = h["epochs"][-1]["validation"]
    for k in ("drift", "diffusion", "ce", "total"):
        assert finals["bf16"][k] == pytest.approx(finals["fp32"][k], rel=5e-3), (k, finals)


def _cli(args, **kw):
    return subprocess.run([sys.executable, "-m", "sdecore", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, **kw)


@needs_shipped_model
def test_the_cli_samples_on_the_gpu_and_refuses_a_gpu_that_is_not_there():
    r = _cli(["sample", "--prompt", PROMPT, "--paths", "4", "--tokens", "8", "--format", "json", "--device", "cuda",
              "--no-progress"])
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert len(out["paths"]) == 4
    missing = torch.cuda.device_count()
    r = _cli(["sample", "--prompt", PROMPT, "--device", f"cuda:{missing}"])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--device" in r.stderr, r.stderr


def test_cli_training_on_the_gpu_writes_a_report(tmp_path):
    out = tmp_path / "m"
    r = _cli(["train", "--corpus", str(TINY_CORPUS), "--out", str(out), "--epochs", "2", "--batch-size", "64",
              "--device", "cuda", "--no-progress"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / "report.json").read_text())["split"] == "validation"


def test_torchrun_with_nccl_on_one_gpu(tmp_path):
    """The DDP path on a GPU: torchrun's process joins an NCCL group, trains and writes once."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
           "-m", "sdecore", "train", "--corpus", str(TINY_CORPUS), "--out", str(out), "--epochs", "2",
           "--batch-size", "64", "--device", "cuda", "--no-progress", "--no-report"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(json.loads((out / "history.json").read_text())["epochs"]) == 2
