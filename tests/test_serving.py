"""The dashboard's model worker: the sessions' simulations batched, each result what it is alone,
interactive work first, and one session's bad request or failure kept to that session."""

from __future__ import annotations

import threading

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
    while len(worker._pending) < len(reqs):  # every request queued behind the held job
        threading.Event().wait(0.01)
    release.set()
    for t in threads:
        t.join(60)
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
    while len(worker._pending) < 2:
        threading.Event().wait(0.01)
    release.set()
    for t in threads:
        t.join(60)
    assert out[0][0].token_ids.shape == (3, 4)
    assert isinstance(out[1], ValueError) and "prompt is empty" in str(out[1])


def test_interactive_work_goes_before_background_jobs(tiny_model):
    worker = ModelWorker(tiny_model)
    order: list[str] = []
    release = _hold(worker)
    threads, _ = _in_threads([lambda: worker.call(lambda c: order.append("background"), BACKGROUND),
                              lambda: worker.call(lambda c: order.append("interactive"), INTERACTIVE)])
    while len(worker._pending) < 2:
        threading.Event().wait(0.01)
    release.set()
    for t in threads:
        t.join(60)
    assert order == ["interactive", "background"]


def test_a_failing_job_leaves_the_worker_running(tiny_model):
    worker = ModelWorker(tiny_model)
    with pytest.raises(RuntimeError, match="boom"):
        worker.call(lambda c: (_ for _ in ()).throw(RuntimeError("boom")))
    assert worker.call(lambda c: c.model.dim) == tiny_model.model.dim
