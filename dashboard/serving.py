"""One worker per model that every session's engine work goes through (docs/design.md §7).

Sessions run in their own threads; the model's work runs on one worker thread that takes, each
time it is free, every simulation request waiting and runs them as one lockstep batch
(:func:`sdecore.simulate.simulate_requests`: each result exactly what the request gives alone),
so a class moving its sliders at once costs one batched run instead of thirty runs one after the
other. Interactive requests (the Generate page) go first; other work (the Stability page's
analysis and sweep, nearest tokens, text analysis) queues behind them as background jobs, one at a
time. The first request after an idle spell starts at once: batching never adds waiting.

When it has nothing else to do, the worker runs **prefetches**: runs a page expects to be asked
for next (the Generate page's neighbouring slider values), kept until a session asks for them, so
that a slider's step is answered without simulating. A prefetch is the lowest priority and runs on
one thread, a few sessions' runs at a time; it gives way between two tokens as soon as other work
waits (its runs go back in the queue, and those a session waits for run with that work), and goes
on with every thread once a session waits for its result; a session's newer prefetch replaces its
older one not yet run.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch

import sdecore
from sdecore.simulate import Cancelled, Paths, SampleRequest, simulate_requests

INTERACTIVE, BACKGROUND, PREFETCH = 0, 1, 2
MAX_BATCH_ROWS = 512  # paths in one batch: the decode's logits stay at two 31 MB blocks
# Paths in one prefetch batch: what a press waits for when it arrives mid-batch is one token of it
# (the prefetch gives way only between tokens), and the nets' pass over its recorded states after it
PREFETCH_ROWS = 64
KEPT_MB = 128  # prefetched results waiting to be asked for, at most (oldest dropped first)
REMEMBERED = 256  # requests answered lately, which the pages' own caches hold: not prefetched again
# The intra-op threads the workers run with: the count at start-up. A prefetch lowers its own
# thread's count for seconds, and torch gives a thread started meanwhile the lowered count, so a
# worker made then must not take its count from torch.
THREADS = torch.get_num_threads()


@dataclass(order=True)
class _Job:
    priority: int
    seq: int
    requests: list[SampleRequest] | None = field(compare=False, default=None)
    fn: Callable | None = field(compare=False, default=None)
    future: Future = field(compare=False, default_factory=Future)
    owner: Hashable | None = field(compare=False, default=None)  # a queued prefetch's session
    # a prefetch's, per request: its derive function, and its (session, that session's prefetch count)
    derive: list | None = field(compare=False, default=None)
    origin: list | None = field(compare=False, default=None)
    waited: list = field(compare=False, default_factory=list)  # requests sessions wait for (a running prefetch)
    replacement: _Job | None = field(compare=False, default=None)  # who runs them when it gives way

    @property
    def rows(self) -> int:
        return sum(r.paths for r in self.requests) if self.requests else 0


class ModelWorker:
    """The thread that runs every engine call on one checkpoint, batching simulations. The thread
    starts with the first job and ends after ``idle_s`` without one, so a model the cache has let
    go of is not kept alive by its worker; the next job starts a new thread."""

    def __init__(self, ckpt: sdecore.Checkpoint, max_rows: int = MAX_BATCH_ROWS, idle_s: float = 60.0,
                 kept_mb: float = KEPT_MB, prefetch_rows: int = PREFETCH_ROWS):
        self.ckpt, self.max_rows, self.idle_s, self.prefetch_rows = ckpt, max_rows, idle_s, prefetch_rows
        self.threads = THREADS  # the intra-op threads its thread runs with
        self._cond = threading.Condition()  # its lock is reentrant: a method holding it may submit
        self._pending: list[_Job] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._running: _Job | None = None  # the prefetch the worker is running, if it is one
        # prefetched results not yet asked for: request -> {"paths": Paths, "derived": value}
        self._kept: OrderedDict[SampleRequest, dict] = OrderedDict()
        self._kept_bytes, self.kept_limit = 0, int(kept_mb * 2**20)
        self._served: OrderedDict[SampleRequest, None] = OrderedDict()  # answered lately
        self._generation: dict[Hashable, int] = {}  # each session's prefetch calls so far
        self.batches = 0  # how many simulation batches ran, and how many requests they held
        self.batched_requests = 0
        # runs prefetched, asked for and given up; batches the prefetched runs went in
        self.prefetched = self.prefetch_hits = self.prefetch_cancelled = self.prefetch_batches = 0
        self._closing = False
        self._busy = False  # a job is running on the worker's thread
        _WORKERS.add(self)

    def simulate(self, requests: list[SampleRequest], priority: int = INTERACTIVE) -> list:
        """``Paths`` for each request, as :func:`sdecore.simulate_paths` gives it alone: a prefetched
        result at once, one a running prefetch is making when it ends, the others simulated."""
        requests = list(requests)
        if self._on_worker():
            return simulate_requests(self.ckpt.model, self.ckpt.embedder, requests)
        out: list = [None] * len(requests)
        todo, waits = [], []
        with self._cond:
            for i, r in enumerate(requests):
                kept = self._take_kept(r, "paths")
                if kept is not None:
                    out[i] = kept
                    self.prefetch_hits += 1
                elif self._running is not None and r in self._running.requests:
                    self._running.waited.append(r)  # from now on it uses every thread
                    waits.append((i, self._running))
                else:
                    self._unqueue_prefetch(r)  # a prefetch not run yet: this request runs it now
                    todo.append(i)
        if todo:
            got = self._submit(_Job(priority, next(self._seq), requests=[requests[i] for i in todo])).result()
            for i, paths in zip(todo, got):
                out[i] = paths
        for i, job in waits:
            out[i] = self._wait_for(job, requests[i], priority)
        with self._cond:
            for r in requests:
                self._remember(r)
        return out

    def _wait_for(self, job: _Job, request: SampleRequest, priority: int) -> Paths:
        """``request``'s result from the running prefetch ``job``, or from the interactive run that
        took it over when the prefetch gave way."""
        try:
            paths = job.future.result()[job.requests.index(request)]
        except Cancelled:
            if job.replacement is None:  # the process is ending: run it as any request
                return self.simulate([request], priority)[0]
            return job.replacement.future.result()[job.replacement.requests.index(request)]
        except Exception:  # noqa: BLE001 - the batch failed (another run's error): its own run says why
            return self.simulate([request], priority)[0]
        with self._cond:
            self._take_kept(request, "paths")
            self.prefetch_hits += 1
        return paths

    def prefetch(self, requests: list[SampleRequest], owner: Hashable | None = None,
                 derive: Callable[[sdecore.Checkpoint, SampleRequest, Paths], object] | None = None) -> int:
        """Simulate ``requests`` when the worker has nothing else to do and keep each result until
        :meth:`simulate` asks for it; with ``derive``, also ``derive(checkpoint, request, paths)``
        right after, kept for :meth:`take_derived`. ``requests`` come most wanted first: each batch
        takes the first run left of every session's prefetch. Requests already kept, on their way
        or answered lately are left out, and ``owner``'s earlier prefetch not yet run is dropped
        (its slider has moved on). Returns how many runs were queued; nothing waits for them."""
        with self._cond:
            if self._closing:
                return 0
            generation = None
            if owner is not None:
                generation = self._generation[owner] = self._generation.get(owner, 0) + 1
                self._pending = [j for j in self._pending if not (j.priority == PREFETCH and j.owner == owner)]
            busy = set(self._kept) | set(self._served)
            for job in self._pending + ([self._running] if self._running else []):
                busy.update(job.requests or ())
            wanted = [r for r in dict.fromkeys(requests) if r not in busy and _batchable([r])]
            if wanted:  # queued under the lock: two sessions cannot both queue the same run
                self._submit(_Job(PREFETCH, next(self._seq), requests=wanted, owner=owner,
                                  derive=[derive] * len(wanted), origin=[(owner, generation)] * len(wanted)))
        return len(wanted)

    def take_derived(self, request: SampleRequest):
        """The value a prefetch's ``derive`` made for ``request``, once (None if there is none)."""
        with self._cond:
            return self._take_kept(request, "derived")

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until no work is running or waiting (prefetches included); False after ``timeout``
        seconds. For measurements and tests: a page's rerun timed from an idle worker."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Drop the prefetches and wait up to ``timeout`` s for the work under way to end: at the
        process's exit, so that no run is left inside torch while the interpreter shuts down."""
        with self._cond:
            self._closing = True
            self._pending = [j for j in self._pending if j.priority != PREFETCH]
            thread = self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def call(self, fn: Callable[[sdecore.Checkpoint], object], priority: int = BACKGROUND):
        """``fn(checkpoint)`` on the worker, alone, after the interactive requests waiting (at once
        when called from the worker itself, which would otherwise wait for itself)."""
        if self._on_worker():
            return fn(self.ckpt)
        return self._submit(_Job(priority, next(self._seq), fn=fn)).result()

    # ------------------------------------------------------------------ kept results (the lock held)
    def _take_kept(self, request: SampleRequest, part: str):
        """Pop one part of a kept result."""
        entry = self._kept.get(request)
        if entry is None or part not in entry:
            return None
        value = entry.pop(part)
        self._kept_bytes -= _nbytes(value)
        if not entry:
            del self._kept[request]
        return value

    def _keep(self, request: SampleRequest, entry: dict) -> None:
        """Keep a prefetched result (in place of one kept for the same request), dropping the
        oldest beyond the limit."""
        old = self._kept.pop(request, None)
        if old is not None:
            self._kept_bytes -= sum(_nbytes(v) for v in old.values())
        self._kept[request] = entry
        self._kept_bytes += sum(_nbytes(v) for v in entry.values())
        while self._kept_bytes > self.kept_limit and self._kept:
            _, old = self._kept.popitem(last=False)
            self._kept_bytes -= sum(_nbytes(v) for v in old.values())

    def _remember(self, request: SampleRequest) -> None:
        """A request just answered: the page's own cache holds it, so it is not prefetched."""
        self._served[request] = None
        self._served.move_to_end(request)
        while len(self._served) > REMEMBERED:
            self._served.popitem(last=False)

    def _unqueue_prefetch(self, request: SampleRequest) -> None:
        """Take ``request`` out of the prefetch queued for it, if any."""
        for job in self._pending:
            if job.priority == PREFETCH and request in job.requests:
                k = job.requests.index(request)
                del job.requests[k], job.derive[k], job.origin[k]
                if not job.requests:
                    self._pending.remove(job)
                return

    # ------------------------------------------------------------------ the worker's thread
    def _on_worker(self) -> bool:
        return threading.current_thread() is self._thread

    def _submit(self, job: _Job) -> Future:
        with self._cond:
            self._pending.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="sdecore-model-worker", daemon=True)
                self._thread.start()
            self._cond.notify()
        return job.future

    def _take(self) -> list[_Job] | None:
        """The next piece of work: the most urgent job and, when it is a simulation, every other
        simulation waiting that fits in the batch (interactive first, then in arrival order).
        None after ``idle_s`` without work, or once closing with none left: the thread then ends
        (under the lock, so a job submitted meanwhile starts a new one)."""
        with self._cond:
            if not self._pending and not self._closing:
                self._cond.wait(self.idle_s)
            if not self._pending:
                self._thread = None
                return None
            self._pending.sort()
            first = self._pending.pop(0)
            self._busy = True
            if first.priority == PREFETCH:
                self._running = self._prefetch_batch(first)
                return [self._running]
            if first.requests is None or not _batchable(first.requests):
                return [first]
            taken, rows = [first], first.rows
            for job in list(self._pending):
                if (job.requests is not None and job.priority != PREFETCH and _batchable(job.requests)
                        and rows + job.rows <= self.max_rows):
                    taken.append(job)
                    rows += job.rows
                    self._pending.remove(job)
            return taken

    def _prefetch_batch(self, first: _Job) -> _Job:
        """The prefetch to run now (the lock held, ``first`` taken off the queue): the first run
        each queued prefetch asks for, nearest the shown value first (a class's sessions together,
        up to ``prefetch_rows`` paths), as one job; the rest stay queued for the next batch."""
        requests, derive, origin, rows = [], [], [], 0
        for job in [first] + [j for j in self._pending if j.priority == PREFETCH]:
            if requests and rows + job.requests[0].paths > self.prefetch_rows:
                continue
            rows += job.requests[0].paths
            requests.append(job.requests.pop(0))
            derive.append(job.derive.pop(0))
            origin.append(job.origin.pop(0))
            if job is first and job.requests:
                self._pending.append(job)
            elif job is not first and not job.requests:
                self._pending.remove(job)
        return _Job(PREFETCH, first.seq, requests=requests, derive=derive, origin=origin)

    def _other_work(self) -> bool:
        """Whether a prefetch must give way: other work waits, or the process is ending."""
        with self._cond:
            return self._closing or any(j.priority < PREFETCH for j in self._pending)

    def _between_tokens(self, job: _Job) -> bool:
        """Asked by the running prefetch before each token. True when other work waits or the
        process is ending: the prefetch gives way. Its runs go back in the queue (those whose
        session has not moved on since), and the runs sessions wait for join the waiting work
        as one interactive job, which the waiting sessions then read. Once a session waits for
        its result, a prefetch goes on with every thread."""
        with self._cond:  # reentrant: the check and what follows from it under one hold
            if self._other_work():
                self._running = None  # from now on no session can start waiting for it
                if not self._closing:
                    self._requeue(job)
                return True
            wanted = bool(job.waited)
        if wanted and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        return False

    def _requeue(self, job: _Job) -> None:
        """A prefetch that gives way (the lock held): its waited runs become an interactive job,
        the others go back to the front of their session's queued prefetch."""
        if job.waited:
            job.replacement = _Job(INTERACTIVE, next(self._seq), requests=list(dict.fromkeys(job.waited)))
            self._pending.append(job.replacement)
        for r, derive, (owner, generation) in zip(job.requests, job.derive, job.origin):
            if r in job.waited or owner is None or self._generation.get(owner) != generation:
                continue
            queued = next((j for j in self._pending if j.priority == PREFETCH and j.owner == owner), None)
            if queued is None:
                queued = _Job(PREFETCH, next(self._seq), requests=[], owner=owner, derive=[], origin=[])
                self._pending.append(queued)
            queued.requests.insert(0, r)
            queued.derive.insert(0, derive)
            queued.origin.insert(0, (owner, generation))

    def _loop(self) -> None:
        # torch gives a new thread the process-wide count, which the sampler lowers to one for a
        # moment at a few rows (sdecore.onednn.serial_if_few): set this thread's own
        torch.set_num_threads(self.threads)
        try:
            while (jobs := self._take()) is not None:
                try:
                    self._do(jobs)
                finally:
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()
        finally:
            with self._cond:  # however the loop ended, the next job starts a thread
                if self._thread is threading.current_thread():
                    self._thread = None
                    if self._pending:
                        self._thread = threading.Thread(target=self._loop, name="sdecore-model-worker", daemon=True)
                        self._thread.start()

    def _do(self, jobs: list[_Job]) -> None:
        first = jobs[0]
        if first.priority == PREFETCH:
            self._prefetch(first)
            return
        if first.fn is not None:
            _run(first, functools.partial(first.fn, self.ckpt))
            return
        if len(jobs) > 1:
            try:
                results = simulate_requests(self.ckpt.model, self.ckpt.embedder,
                                            [r for job in jobs for r in job.requests])
            except BaseException:  # a bad request among them: each runs alone and gets its own error
                results = None
            if results is not None:
                self.batches += 1
                self.batched_requests += sum(len(job.requests) for job in jobs)
                for job in jobs:
                    job.future.set_result(results[:len(job.requests)])
                    results = results[len(job.requests):]
                return
        for job in jobs:
            _run(job, lambda job=job: simulate_requests(self.ckpt.model, self.ckpt.embedder, job.requests))

    def _prefetch(self, job: _Job) -> None:
        """Run a prefetch batch in lockstep (each run exactly as alone) on one intra-op thread:
        speculative work leaves the other cores to the sessions' own page runs (and a browser on
        the same machine). The values are the same as with every thread (the products split their
        output, not their sums; tested). Its derived values come after, run by run, until other
        work waits; a run whose ``derive`` fails is kept without it."""
        try:
            torch.set_num_threads(1)
            try:
                results = simulate_requests(self.ckpt.model, self.ckpt.embedder, job.requests,
                                            cancel=lambda: self._between_tokens(job))
                derived = []
                for derive, r, paths in zip(job.derive, job.requests, results):
                    if derive is None or self._other_work():
                        derived.append(None)
                        continue
                    try:
                        derived.append(derive(self.ckpt, r, paths))
                    except Exception:  # noqa: BLE001 - an extra, computed again when asked for
                        derived.append(None)
            finally:
                torch.set_num_threads(self.threads)
        except BaseException as exc:  # given way, or failed: nothing is kept, a waiting session is told
            with self._cond:
                if self._running is job:
                    self._running = None
                self.prefetch_cancelled += isinstance(exc, Cancelled)
            job.future.set_exception(exc)
            return
        with self._cond:
            for r, paths, extra in zip(job.requests, results, derived):
                self._keep(r, {"paths": paths} if extra is None else {"paths": paths, "derived": extra})
            self.prefetched += len(results)
            self.prefetch_batches += 1
            self._running = None
        job.future.set_result(results)


_WORKERS: weakref.WeakSet[ModelWorker] = weakref.WeakSet()


@atexit.register
def _close_workers() -> None:
    for worker in list(_WORKERS):
        worker.close()


def _nbytes(value) -> int:
    """Bytes held by a kept value: a Paths' tensors, an array, or nothing countable."""
    if isinstance(value, Paths):
        return sum(v.numel() * v.element_size() for v in vars(value).values() if isinstance(v, torch.Tensor))
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return int(value.nbytes)
    return 0


def _batchable(requests: list[SampleRequest]) -> bool:
    return all(r.solver == "em" for r in requests)


def _run(job: _Job, work: Callable) -> None:
    try:
        job.future.set_result(work())
    except BaseException as exc:  # the session that asked sees the error; the worker goes on
        job.future.set_exception(exc)
