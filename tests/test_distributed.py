"""Training on two processes through torchrun (PyTorch DDP, gloo on the CPU)."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, TINY_CORPUS


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "sdecore", "train", "--corpus", str(TINY_CORPUS), "--out", str(out), "--epochs", "2",
           "--batch-size", "64", "--no-progress"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    hist = json.loads((out / "history.json").read_text())
    assert len(hist["epochs"]) == 2 and "references" in hist
    assert json.loads((out / "report.json").read_text())["split"] == "validation"  # the step after training
    # each process took half of the batches: the history is written once, by rank 0
    assert r.stdout.count("wrote ") == 1

    from sdecore import load_checkpoint

    ck = load_checkpoint(out)
    assert ck.history["best_epoch"] in (1, 2)


@pytest.mark.slow
def test_a_failed_torchrun_job_prints_one_error_line_and_can_be_rerun(tmp_path):
    """Two processes on a corpus too small for both: rank 0's message is the job's one error line
    from sdecore (torchrun adds its own summary), and the folder left does not block a rerun."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "sdecore", "train", "--corpus", str(TINY_CORPUS), "--out", str(out), "--epochs", "1", "--no-progress"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode != 0
    ours = [line for line in r.stderr.splitlines() if line.startswith("sdecore train:")]
    assert ours == ["sdecore train: error: too few train transitions for 2 processes; use fewer or a larger corpus"]
    one = subprocess.run([sys.executable, "-m", "sdecore", "train", "--corpus", str(TINY_CORPUS), "--out", str(out),
                          "--epochs", "1", "--batch-size", "64", "--no-progress", "--map", "none", "--no-report"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert one.returncode == 0, one.stderr[-1000:]
