"""The dashboard's model worker prefetching the Generate page's next slider steps: each kept run
exactly what its request gives alone, the prefetch giving way to other work and handing over what
sessions wait for, one session's newer prefetch replacing its older, memory kept within bounds."""

from __future__ import annotations

import threading

import pytest
import torch

from dashboard.serving import INTERACTIVE, ModelWorker, _nbytes
from sdecore import simulate_paths
from sdecore.simulate import SampleRequest
from tests.test_serving import _hold, _in_threads, _join, _until


def _lone(tiny_model, r: SampleRequest):
    return simulate_paths(tiny_model.model, tiny_model.embedder, r.prompt, paths=r.paths, tokens=r.tokens,
                          diffusion_scale=r.diffusion_scale, seed=r.seed, record_states=r.record_states)


def _same(a, b) -> bool:
    return (torch.equal(a.token_ids, b.token_ids) and torch.equal(a.probs, b.probs)
            and torch.equal(a.states.nan_to_num(), b.states.nan_to_num())
            and torch.equal(a.drift.nan_to_num(), b.drift.nan_to_num()))


PREFETCHED = [SampleRequest("How can I sleep better?", paths=4, tokens=6, diffusion_scale=s, seed=3, record_states=True)
              for s in (0.95, 1.05)]


def test_a_prefetched_run_is_what_the_request_gives_alone_and_needs_no_simulation(tiny_model):
    """Prefetches run on one thread, and are kept: asking for one later gives exactly what a run
    alone gives (with every thread), with nothing simulated for it, and its derived value once."""
    worker = ModelWorker(tiny_model)
    assert worker.prefetch(PREFETCHED, owner="a", derive=lambda c, r, p: r.diffusion_scale) == 2
    _until(lambda: worker.prefetched == 2)
    assert worker.prefetch(PREFETCHED) == 0, "runs already kept are not prefetched again"
    got = worker.simulate(PREFETCHED[::-1])
    assert worker.batches == 0 and worker.prefetch_hits == 2
    for r, paths in zip(PREFETCHED[::-1], got):
        assert _same(paths, _lone(tiny_model, r))
    assert worker.take_derived(PREFETCHED[1]) == 1.05 and worker.take_derived(PREFETCHED[1]) is None
    assert worker.simulate(PREFETCHED[:1])[0] is not got[1], "a kept run is handed out once"
    assert worker.prefetch_hits == 2


def test_a_request_waiting_in_a_prefetch_not_started_runs_at_once(tiny_model):
    worker = ModelWorker(tiny_model)
    release = _hold(worker)
    worker.prefetch(PREFETCHED, owner="a")
    threads, out = _in_threads([lambda: worker.simulate(PREFETCHED[:1])[0]])
    _until(lambda: len(worker._pending) == 2)  # the prefetch and the session's own request
    release.set()
    _join(threads)
    assert _same(out[0], _lone(tiny_model, PREFETCHED[0]))
    _until(lambda: worker.prefetched == 1)  # the prefetch went on with the other run only
    assert list(worker._kept) == PREFETCHED[1:]


def test_a_session_waits_for_the_prefetch_running_its_request(tiny_model):
    worker = ModelWorker(tiny_model)
    deriving, release = threading.Event(), threading.Event()

    def derive(c, r, p):  # the prefetch is running (its runs simulated) while this waits
        deriving.set()
        release.wait(30)

    worker.prefetch(PREFETCHED, derive=derive)  # the first batch runs the first of them
    assert deriving.wait(60)
    threads, out = _in_threads([lambda: worker.simulate(PREFETCHED[:1])[0]])
    _until(lambda: worker._running is not None and len(worker._running.waited) == 1)
    release.set()
    _join(threads)
    assert worker.batches == 0 and worker.prefetch_cancelled == 0
    assert _same(out[0], _lone(tiny_model, PREFETCHED[0]))


def test_a_prefetch_a_session_waits_for_goes_on_with_every_thread(tiny_model):
    n = torch.get_num_threads()
    if n < 2:
        pytest.skip("one intra-op thread here")
    worker = ModelWorker(tiny_model)
    job = worker._prefetch_batch(_prefetch_job(PREFETCHED))
    torch.set_num_threads(1)  # as a prefetch runs
    try:
        assert worker._between_tokens(job) is False and torch.get_num_threads() == 1
        job.waited.append(job.requests[0])
        assert worker._between_tokens(job) is False and torch.get_num_threads() == n
    finally:
        torch.set_num_threads(n)


def _prefetch_job(requests, owner=None):
    from dashboard.serving import PREFETCH, _Job

    return _Job(PREFETCH, 0, requests=list(requests), owner=owner, derive=[None] * len(requests),
                origin=[(owner, None)] * len(requests))


def test_each_prefetch_batch_takes_the_nearest_run_of_every_session(tiny_model):
    up = [SampleRequest("How can I sleep better?", paths=4, tokens=6, diffusion_scale=s, seed=i, record_states=True)
          for i, s in ((1, 1.05), (2, 2.05))]
    down = [SampleRequest("How can I sleep better?", paths=4, tokens=6, diffusion_scale=s, seed=i, record_states=True)
            for i, s in ((1, 0.95), (2, 1.95))]
    worker = ModelWorker(tiny_model)
    release = _hold(worker)
    worker.prefetch([up[0], down[0]], owner="a")
    worker.prefetch([up[1], down[1]], owner="b")
    release.set()
    _until(lambda: worker.prefetched == 4)
    assert worker.prefetch_batches == 2 and list(worker._kept) == [up[0], up[1], down[0], down[1]]


def test_a_running_prefetch_gives_way_to_other_work(tiny_model):
    """Between two tokens a prefetch is dropped as soon as other work waits for the worker."""
    worker = ModelWorker(tiny_model)
    started, answered = threading.Event(), []
    long = [SampleRequest("How can I sleep better?", paths=4, tokens=400, diffusion_scale=1.0)]
    real_check = worker._between_tokens

    def check(job):  # the first token of the prefetch has been asked for: send the other work now
        started.set()
        return real_check(job)

    worker._between_tokens = check
    worker.prefetch(long)
    assert started.wait(60)
    answered.append(worker.call(lambda c: "answered", INTERACTIVE))
    _until(lambda: worker.prefetch_cancelled == 1)
    assert answered == ["answered"] and worker.prefetched == 0 and not worker._kept


def test_a_newer_prefetch_of_a_session_replaces_its_older_one(tiny_model):
    third = SampleRequest("How can I sleep better?", paths=4, tokens=6, diffusion_scale=1.1, seed=3, record_states=True)
    worker = ModelWorker(tiny_model)
    release = _hold(worker)
    worker.prefetch(PREFETCHED[:1], owner="a")
    worker.prefetch([third], owner="b")  # another session's is left alone...
    worker.prefetch(PREFETCHED[1:], owner="a")  # ...this session's older one is dropped
    assert sorted(j.requests[0].diffusion_scale for j in worker._pending if j.priority == 2) == [1.05, 1.1]
    assert worker.prefetch(PREFETCHED[1:], owner="c") == 0, "a run already on its way is not queued twice"
    release.set()
    _until(lambda: worker.prefetched == 2)
    assert set(worker._kept) == {PREFETCHED[1], third}
    assert worker.prefetch_batches == 1, "the sessions' prefetches waiting together run as one batch"


def test_kept_runs_stay_within_their_memory(tiny_model):
    one = _lone(tiny_model, PREFETCHED[0])
    size = sum(v.numel() * v.element_size() for v in vars(one).values() if isinstance(v, torch.Tensor))
    worker = ModelWorker(tiny_model, kept_mb=1.5 * size / 2**20)  # room for one run, not two
    worker.prefetch(PREFETCHED)
    _until(lambda: worker.prefetched == 2)
    assert list(worker._kept) == PREFETCHED[1:] and worker._kept_bytes == size


def test_closing_drops_the_prefetches(tiny_model):
    worker = ModelWorker(tiny_model)
    release = _hold(worker)
    worker.prefetch(PREFETCHED)
    release.set()
    worker.close()
    assert worker.prefetch(PREFETCHED) == 0 and not any(j.priority == 2 for j in worker._pending)
    assert worker.prefetched == 0 or worker.prefetched == 2  # a run under way may end; none starts


def test_the_generate_page_s_neighbour_scales():
    from dashboard.compute import neighbour_scales

    assert neighbour_scales(1.0, 0.05) == [1.05, 0.95]
    assert neighbour_scales(1.0, 0.05, reach=2, seen={0.95}) == [1.05, 1.1, 0.9]
    assert neighbour_scales(0.0, 0.05, reach=2) == [0.05, 0.1]  # never below the slider's range
    assert neighbour_scales(10.0, 0.05) == [9.95]
    assert neighbour_scales(0.35000000000000003, 0.05) == [0.4, 0.3]  # on the slider's grid
    assert neighbour_scales(1.0, 0.05, reach=0) == []


BIG = [SampleRequest("How can I sleep better?", paths=40, tokens=5, diffusion_scale=s, seed=5, record_states=True)
       for s in (0.5, 2.0)]


def test_a_prefetch_of_many_rows_on_one_thread_is_what_each_run_gives_alone(tiny_model):
    """From 32 rows a run uses every thread; a prefetch runs on one: the same values to the bit,
    the recorded memory and sigma^2 included."""
    worker = ModelWorker(tiny_model, prefetch_rows=80)
    release = _hold(worker)
    worker.prefetch(BIG[:1], owner="a")
    worker.prefetch(BIG[1:], owner="b")
    release.set()
    _until(lambda: worker.prefetched == 2)
    assert worker.prefetch_batches == 1  # 80 rows in one batch
    for r, got in zip(BIG, worker.simulate(BIG)):
        want = _lone(tiny_model, r)
        assert _same(got, want) and torch.equal(got.memory, want.memory) and torch.equal(got.sigma2, want.sigma2)


def test_a_prefetch_that_gives_way_hands_its_waited_run_to_the_waiting_work(tiny_model):
    """A session waits for a prefetch's run; other work arrives: the prefetch gives way between
    tokens, the waited run joins that work as an interactive job, the others go back in the queue."""
    worker = ModelWorker(tiny_model, prefetch_rows=8)
    gate, go_on = threading.Event(), threading.Event()
    real_check = worker._between_tokens

    def check(job):
        if job.waited and not go_on.is_set():  # hold the prefetch at a token until the test has set up
            gate.set()
            go_on.wait(30)
        return real_check(job)

    worker._between_tokens = check
    worker.prefetch(PREFETCHED, owner="a")  # two runs of 4 paths: one batch each (8 rows at most)
    _until(lambda: worker._running is not None)
    running = worker._running
    threads, out = _in_threads([lambda: worker.simulate([running.requests[0]])[0]])
    assert gate.wait(60)
    other = SampleRequest("Why is the sky blue?", paths=2, tokens=3, seed=1)
    threads2, out2 = _in_threads([lambda: worker.simulate([other])[0]])
    _until(lambda: any(j.priority == INTERACTIVE for j in worker._pending))
    go_on.set()
    _join(threads + threads2)
    assert worker.prefetch_cancelled == 1 and running.replacement is not None
    assert _same(out[0], _lone(tiny_model, running.requests[0]))
    assert out2[0].token_ids.shape == (2, 3)
    _until(lambda: worker.prefetched == 1)  # the other prefetched run went back in the queue and ran
    assert list(worker._kept) == [r for r in PREFETCHED if r != running.requests[0]]


def test_a_prefetch_that_gives_way_goes_back_in_its_session_s_queue(tiny_model):
    worker = ModelWorker(tiny_model)
    long = [SampleRequest("How can I sleep better?", paths=4, tokens=60, diffusion_scale=s, seed=2) for s in (1.0, 2.0)]
    started = threading.Event()
    real_check = worker._between_tokens

    def check(job):
        started.set()
        return real_check(job)

    worker._between_tokens = check
    worker.prefetch(long, owner="a")
    assert started.wait(60)
    release = _hold(worker)  # other work arrives: the prefetch gives way
    _until(lambda: worker.prefetch_cancelled == 1)
    assert [j.requests for j in worker._pending if j.priority == 2] == [long]  # both, in their order
    worker.prefetch(long[1:], owner="a")  # the session moved on: its new prefetch replaces the old
    release.set()
    _until(lambda: worker.prefetched == 1)
    assert list(worker._kept) == long[1:]


def test_two_sessions_prefetching_the_same_run_queue_it_once(tiny_model):
    worker = ModelWorker(tiny_model)
    release = _hold(worker)
    gate = threading.Barrier(8)

    def ask(i):
        gate.wait()
        return worker.prefetch(PREFETCHED, owner=i)

    threads, out = _in_threads([lambda i=i: ask(i) for i in range(8)])
    _join(threads)
    assert sum(out) == 2
    release.set()
    _until(lambda: worker.prefetched == 2)
    kept = sum(sum(_nbytes(v) for v in e.values()) for e in worker._kept.values())
    assert worker._kept_bytes == kept
    worker.simulate(PREFETCHED)
    assert worker._kept_bytes == 0 and not worker._kept


def test_a_failing_derive_keeps_the_run_without_it(tiny_model):
    worker = ModelWorker(tiny_model)
    worker.prefetch(PREFETCHED[:1], derive=lambda c, r, p: 1 / 0)
    _until(lambda: worker.prefetched == 1)
    assert worker.take_derived(PREFETCHED[0]) is None
    assert _same(worker.simulate(PREFETCHED[:1])[0], _lone(tiny_model, PREFETCHED[0]))
    assert worker.prefetch_hits == 1


def test_runs_answered_lately_are_not_prefetched(tiny_model):
    """A page's own cache holds what it was answered: the worker does not prefetch it again."""
    worker = ModelWorker(tiny_model)
    worker.simulate(PREFETCHED[:1])
    assert worker.prefetch(PREFETCHED) == 1 and worker.wait_idle()
    assert list(worker._kept) == PREFETCHED[1:]
