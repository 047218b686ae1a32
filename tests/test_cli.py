"""The command line: outputs, and every bad-input path exits 2 with one line on stderr."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, TINY_CORPUS

from sdecore.cli import main


def run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_sample_json(tiny_ckpt, capsys):
    code, out, err = run(["sample", "--model", str(tiny_ckpt), "--prompt", "How do I sleep well?", "--paths", "3",
                          "--tokens", "5", "--seed", "2", "--format", "json"], capsys)
    assert code == 0, err
    obj = json.loads(out)
    assert set(obj) == {"prompt", "diffusion_scale", "seed", "paths"}
    assert obj["prompt"] == "How do I sleep well?" and obj["seed"] == 2 and obj["diffusion_scale"] == 1.0
    assert len(obj["paths"]) == 3
    for p in obj["paths"]:
        assert set(p) == {"text", "tokens", "diverged"} and len(p["tokens"]) == 5 and p["text"]


def test_sample_text_and_info(tiny_ckpt, capsys):
    code, out, _ = run(["sample", "--model", str(tiny_ckpt), "--prompt", "hello", "--paths", "2", "--tokens", "3"],
                       capsys)
    assert code == 0 and out.startswith("prompt: hello") and "[1]" in out
    code, out, _ = run(["info", "--model", str(tiny_ckpt)], capsys)
    assert code == 0
    for needle in ("parameters:", "NVIDIA HelpSteer (CC-BY-4.0)", "zero-drift reference", "constant-sigma reference",
                   "memory_timescales", "device:"):
        assert needle in out


BAD_SAMPLE = [
    (["--prompt", ""], "prompt is empty"),
    (["--prompt", "   "], "prompt is empty"),
    (["--prompt", "x", "--paths", "0"], "--paths"),
    (["--prompt", "x", "--paths", "4097"], "--paths"),
    (["--prompt", "x", "--paths", "two"], "--paths"),
    (["--prompt", "x", "--tokens", "0"], "--tokens"),
    (["--prompt", "x", "--tokens", "513"], "--tokens"),
    (["--prompt", "x", "--diffusion-scale", "-0.1"], "--diffusion-scale"),
    (["--prompt", "x", "--diffusion-scale", "10.01"], "--diffusion-scale"),
    (["--prompt", "x", "--diffusion-scale", "nan"], "--diffusion-scale"),
    (["--prompt", "x", "--diffusion-scale", "inf"], "--diffusion-scale"),
    (["--prompt", "x", "--substeps", "0"], "--substeps"),
    (["--prompt", "x", "--substeps", "65"], "--substeps"),
    (["--prompt", "x", "--seed", "-1"], "--seed"),
    (["--prompt", "x", "--seed", "1.5"], "--seed"),
    (["--prompt", "x", "--solver", "rk4"], "--solver"),
    (["--prompt", "x", "--temperature", "-1"], "--temperature"),
    (["--prompt", "x", "--format", "xml"], "--format"),
    (["--prompt", "x", "--model", "/no/such/folder"], "does not exist"),
    (["--prompt", "x", "--model", str(TINY_CORPUS)], "is a file"),
]


@pytest.mark.parametrize("args,needle", BAD_SAMPLE)
def test_bad_sample_input_exits_2_with_one_line(tiny_ckpt, capsys, args, needle):
    if "--model" not in args:
        args = args + ["--model", str(tiny_ckpt)]
    code, out, err = run(["sample", *args], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err, err


def test_bad_train_input_exits_2(tmp_path, capsys, tiny_ckpt):
    bad_cols = tmp_path / "bad.csv"
    bad_cols.write_text("question,answer\nq,a\n")
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"prompt": "a", "response": "b c"}\n{not json\n')
    cases = [
        (["--corpus", "missing.jsonl", "--out", str(tmp_path / "o")], "does not exist"),
        (["--corpus", str(bad_cols), "--out", str(tmp_path / "o")], "lacks column"),
        (["--corpus", str(TINY_CORPUS), "--out", str(tmp_path / "o"), "--epochs", "0"], "--epochs"),
        (["--corpus", str(TINY_CORPUS), "--out", str(tmp_path / "o"), "--seed", "-3"], "--seed"),
        (["--corpus", str(TINY_CORPUS), "--out", str(tmp_path / "o"), "--max-rows", "0"], "--max-rows"),
        (["--corpus", str(TINY_CORPUS), "--out", str(tmp_path / "o"), "--map", "tsne"], "--map"),
        (["--corpus", str(TINY_CORPUS), "--out", str(tmp_path / "o"), "--device", "tpu"], "--device"),
        (["--corpus", str(TINY_CORPUS), "--out", str(tmp_path / "o"), "--resume"], "cannot resume"),
        (["--corpus", str(TINY_CORPUS), "--out", str(tiny_ckpt)], "already holds a checkpoint"),
        (["--corpus", str(TINY_CORPUS), "--out", str(TINY_CORPUS)], "is a file"),
        (["--corpus", str(bad_json), "--out", str(tmp_path / "o")], "cannot read corpus"),
    ]
    for args, needle in cases:
        code, out, err = run(["train", *args, "--no-progress"], capsys)
        assert code == 2, (args, err)
        assert len(err.strip().splitlines()) == 1 and needle in err, (args, err)


def test_corrupt_checkpoint_exits_2(tiny_ckpt, tmp_path, capsys):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, ck)
    (ck / "weights.safetensors").write_bytes(b"garbage")
    for cmd in (["info", "--model", str(ck)], ["sample", "--model", str(ck), "--prompt", "hi"]):
        code, _, err = run(cmd, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "corrupt" in err


def test_no_command_and_unknown_command(capsys):
    assert run([], capsys)[0] == 2
    code, _, err = run(["fly"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_real_process_exit_status(tmp_path):
    """Through `python -m sdecore`, as a user runs it: status 2, one line, no traceback."""
    r = subprocess.run([sys.executable, "-m", "sdecore", "sample", "--prompt", " ", "--model", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_frontier_command_saves_for_the_dashboard(tiny_ckpt, tmp_path, capsys):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, ck)
    argv = ["frontier", "--corpus", str(TINY_CORPUS), "--model", str(ck), "--scales", "0", "1", "--max-prompts", "2",
            "--paths", "2", "--tokens", "6", "--lengths", "8", "--format", "json", "--save"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    rows = json.loads(out)["rows"]
    assert {r["generator"] for r in rows} == {"sde", "bigram"}
    assert json.loads((ck / "frontier.json").read_text())["rows"] == rows


def test_frontier_bad_scale_exits_2(tiny_ckpt, capsys):
    code, _, err = run(["frontier", "--corpus", str(TINY_CORPUS), "--model", str(tiny_ckpt), "--scales", "-1"], capsys)
    assert code == 2 and "--scales" in err and len(err.strip().splitlines()) == 1


def test_device_flag_takes_cuda_n_and_rejects_the_rest(capsys):
    from sdecore.cli import build_parser

    assert build_parser().parse_args(["info", "--device", "cuda:1"]).device == "cuda:1"
    for bad in ("cuda:x", "gpu", "cuda:"):
        code, out, err = run(["info", "--device", bad], capsys)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "--device" in err, err


def test_verbose_and_no_report_flags_parse():
    from sdecore.cli import build_parser

    a = build_parser().parse_args(["train", "--corpus", "c.jsonl", "--out", "o", "--no-report", "--verbose"])
    assert a.no_report and a.verbose and a.device == "auto"


def _stderr_on_a_terminal(argv: list[str], env: dict | None = None) -> str:
    """What a command writes to stderr when stderr is a terminal (a pseudo-terminal 120
    columns wide)."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "sdecore", *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=follower, env=env)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the command closed its end
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=300)
    os.close(leader)
    assert proc.returncode == 0, out[-500:]
    return out.decode(errors="replace")


@pytest.mark.skipif(sys.platform != "linux", reason="the pseudo-terminal check is written for Linux")
def test_a_long_sample_shows_progress_on_a_terminal_unless_told_not_to():
    """The bar shows after TQDM_DELAY seconds (2 by default): at 0 every run would show it, so a
    short run tells the three cases apart on a machine of any speed."""
    argv = ["sample", "--prompt", "hi", "--paths", "4", "--tokens", "8"]
    env = {**os.environ, "TQDM_DELAY": "0"}
    assert "tokens: " in _stderr_on_a_terminal(argv, env)  # the bar (cleared at the end: leave=False)
    assert "tokens" not in _stderr_on_a_terminal([*argv, "--no-progress"], env)
    quick = subprocess.run([sys.executable, "-m", "sdecore", *argv], cwd=ROOT, capture_output=True, text=True, env=env)
    assert quick.returncode == 0 and "tokens" not in quick.stderr  # stderr not a terminal: no bar
    for value in ("-1", "soon"):
        bad = subprocess.run([sys.executable, "-m", "sdecore", *argv], cwd=ROOT, capture_output=True, text=True,
                             env={**env, "TQDM_DELAY": value})
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "TQDM_DELAY" in bad.stderr, bad.stderr
