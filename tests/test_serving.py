"""The dashboard's model worker: the sessions' simulations batched, each result what it is alone,
interactive work first, and one session's bad request or failure kept to that session."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from dashboard.serving import BACKGROUND, INTERACTIVE, ModelWorker
from sdecore import simulate_paths
from sdecore.simulate import SampleRequest


def _hold(worker: ModelWorker) -> threading.Event:
    """Keep the worker busy until the returned event is set, so that what is submitted meanwhile
    waits together."""
    release, started = threading.Event(), threading.Event()

    def wait(_):
        started.set()
        release.wait(30)

    threading.Thread(target=worker.call, args=(wait, INTERACTIVE), daemon=True).start()
    assert started.wait(30)
    return release


def _until(condition, timeout: float = 60.0) -> None:
    """Wait for ``condition()``; fail rather than hang when it does not come."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def _join(threads, timeout: float = 60.0) -> None:
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a caller never got its answer"


def _in_threads(calls) -> list:
    out: list = [None] * len(calls)

    def run(i, fn):
        try:
            out[i] = fn()
        except Exception as exc:  # noqa: BLE001 - the test looks at what each caller got
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    return threads, out


def test_concurrent_requests_run_as_one_batch_with_their_lone_results(tiny_model):
    worker = ModelWorker(tiny_model)
    reqs = [SampleRequest("How can I sleep better?", paths=4, tokens=6, diffusion_scale=s, seed=i, record_states=True)
            for i, s in enumerate((0.5, 1.0, 2.0))]
    reqs.append(SampleRequest("Why is the sky blue?", paths=2, tokens=9, diffusion_scale=1.0, seed=7))
    release = _hold(worker)
    threads, out = _in_threads([lambda r=r: worker.simulate([r])[0] for r in reqs])
    _until(lambda: len(worker._pending) >= len(reqs))  # every request queued behind the held job
    release.set()
    _join(threads)
    assert worker.batches == 1 and worker.batched_requests == len(reqs)
    for r, got in zip(reqs, out):
        want = simulate_paths(tiny_model.model, tiny_model.embedder, r.prompt, paths=r.paths, tokens=r.tokens,
                              diffusion_scale=r.diffusion_scale, seed=r.seed, record_states=r.record_states)
        assert torch.equal(got.token_ids, want.token_ids)
        if r.record_states:
            assert torch.equal(got.states, want.states)


def test_a_bad_request_fails_alone(tiny_model):
    worker = ModelWorker(tiny_model)
    release = _hold(worker)
    threads, out = _in_threads([lambda: worker.simulate([SampleRequest("How can I sleep better?", paths=3, tokens=4)]),
                                lambda: worker.simulate([SampleRequest("   ", paths=3, tokens=4)])])
    _until(lambda: len(worker._pending) >= 2)
    release.set()
    _join(threads)
    assert out[0][0].token_ids.shape == (3, 4)
    assert isinstance(out[1], ValueError) and "prompt is empty" in str(out[1])


def test_interactive_work_goes_before_background_jobs(tiny_model):
    worker = ModelWorker(tiny_model)
    order: list[str] = []
    release = _hold(worker)
    threads, _ = _in_threads([lambda: worker.call(lambda c: order.append("background"), BACKGROUND),
                              lambda: worker.call(lambda c: order.append("interactive"), INTERACTIVE)])
    _until(lambda: len(worker._pending) >= 2)
    release.set()
    _join(threads)
    assert order == ["interactive", "background"]


def test_an_idle_worker_ends_its_thread_and_the_next_job_starts_one(tiny_model):
    worker = ModelWorker(tiny_model, idle_s=0.05)
    assert worker.call(lambda c: c.model.dim) == tiny_model.model.dim
    _until(lambda: worker._thread is None)
    assert worker.call(lambda c: "again") == "again"


def test_a_job_that_asks_the_worker_again_does_not_wait_for_itself(tiny_model):
    worker = ModelWorker(tiny_model)
    paths = worker.call(lambda c: worker.simulate([SampleRequest("How can I sleep better?", paths=2, tokens=2)]))
    assert paths[0].token_ids.shape == (2, 2)


def test_a_failing_job_leaves_the_worker_running(tiny_model):
    worker = ModelWorker(tiny_model)
    with pytest.raises(RuntimeError, match="boom"):
        worker.call(lambda c: (_ for _ in ()).throw(RuntimeError("boom")))
    assert worker.call(lambda c: c.model.dim) == tiny_model.model.dim


# ----------------------------------------------------------------------------- the Train page's runs
def test_trainings_wait_their_turn_and_see_their_place():
    from dashboard.runs import TrainingQueue

    queue = TrainingQueue(slots=1)
    order, places = [], {}
    release = threading.Event()

    def first():
        with queue.slot():
            order.append("first")
            release.wait(30)

    def later(name):
        seen = []
        with queue.slot(on_wait=seen.append, poll_s=0.01):
            order.append(name)
        places[name] = seen

    t1 = threading.Thread(target=first)
    t1.start()
    _until(lambda: bool(order))
    t2 = threading.Thread(target=later, args=("second",))
    t2.start()
    _until(lambda: bool(queue._waiting))
    t3 = threading.Thread(target=later, args=("third",))
    t3.start()
    _until(lambda: len(queue._waiting) >= 2)
    release.set()
    _join([t1, t2, t3])
    assert order == ["first", "second", "third"]
    assert places["second"][0] == 1 and places["third"][0] == 2  # next, then one ahead


def test_a_run_that_stops_waiting_leaves_the_queue():
    from dashboard.runs import TrainingQueue

    queue = TrainingQueue(slots=1)
    with queue.slot():
        with pytest.raises(RuntimeError):
            with queue.slot(on_wait=lambda place: (_ for _ in ()).throw(RuntimeError("page rerun")), poll_s=0.01):
                pass
        assert queue._waiting == []
    with queue.slot():  # the slot is free again
        pass


def test_run_folders_are_unique_and_kept_within_the_quota(tmp_path, monkeypatch):
    import os

    from dashboard import runs

    monkeypatch.setenv("SDECORE_RUNS", str(tmp_path))
    folders = [runs.new_run_folder("my corpus.csv") for _ in range(5)]
    assert len(set(folders)) == 5 and all(f.name.startswith("my_corpus-") for f in folders)
    for i, f in enumerate(folders):
        (f / "weights.safetensors").write_bytes(b"x" * 2**20)  # 1 MB each, the oldest first
        os.utime(f, (1000 + i, 1000 + i))
    for f in folders:  # a run's own use ends with it
        runs.release(f)
    state = {}
    runs.activate(state, folders[1], "shown")  # a session shows this one
    removed = runs.enforce_quota(keep={folders[0]}, quota_mb=3.5)
    assert removed == [folders[2], folders[3]]  # oldest first, skipping the kept and the one in use
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f.name for f in (folders[0], folders[1], folders[4]))
    runs.activate(state, None)  # the session goes back to the default model: no longer protected
    assert runs.enforce_quota(keep={folders[0]}, quota_mb=1.5) == [folders[1], folders[4]]
    assert runs.new_run_folder("x.csv").resolve() in runs._IN_USE  # a run being written is in use from the start
    monkeypatch.setenv("SDECORE_RUNS_QUOTA_MB", "zero")
    with pytest.raises(ValueError, match="SDECORE_RUNS_QUOTA_MB"):
        runs.runs_quota_mb()


def test_a_failed_training_leaves_no_folder(tmp_path, monkeypatch):
    import pandas as pd

    import sdecore
    from dashboard import runs

    monkeypatch.setenv("SDECORE_RUNS", str(tmp_path))

    def fail(*args, **kwargs):
        raise ValueError("the corpus is too small")

    monkeypatch.setattr(sdecore, "train_model", fail)
    with pytest.raises(ValueError, match="too small"):
        runs.train_frame(pd.DataFrame({"prompt": ["a", "b"], "response": ["x", "y"]}), "c.csv", 1, 16, 64)
    assert list(tmp_path.iterdir()) == []


def test_a_new_worker_thread_runs_with_the_worker_s_thread_count(tiny_model):
    """torch starts a new thread with the process-wide count, which the sampler lowers to one
    while a few rows run on another thread (sdecore.onednn.serial_if_few): the worker's thread
    sets the count it was made with."""
    n = torch.get_num_threads()
    if n < 2:
        pytest.skip("one intra-op thread here: nothing to lower")
    worker = ModelWorker(tiny_model)
    torch.set_num_threads(1)  # as when the worker's thread starts inside another thread's one-thread block
    try:
        seen = worker.call(lambda ck: torch.get_num_threads())
    finally:
        torch.set_num_threads(n)
    assert seen == n
