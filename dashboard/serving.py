"""One worker per model that every session's engine work goes through (docs/design.md §7).

Sessions run in their own threads; the model's work runs on one worker thread that takes, each
time it is free, every simulation request waiting and runs them as one lockstep batch
(:func:`sdecore.simulate.simulate_requests`: each result exactly what the request gives alone),
so a class moving its sliders at once costs one batched run instead of thirty runs one after the
other. Interactive requests (the Generate page) go first; other work (the Stability page's
analysis and sweep, nearest tokens, text analysis) queues behind them as background jobs, one at a
time. The first request after an idle spell starts at once: batching never adds waiting.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

import sdecore
from sdecore.simulate import SampleRequest, simulate_requests

INTERACTIVE, BACKGROUND = 0, 1
MAX_BATCH_ROWS = 512  # paths in one batch: the decode's logits stay at two 31 MB blocks


@dataclass(order=True)
class _Job:
    priority: int
    seq: int
    requests: list[SampleRequest] | None = field(compare=False, default=None)
    fn: Callable | None = field(compare=False, default=None)
    future: Future = field(compare=False, default_factory=Future)

    @property
    def rows(self) -> int:
        return sum(r.paths for r in self.requests) if self.requests else 0


class ModelWorker:
    """The thread that runs every engine call on one checkpoint, batching simulations. The thread
    starts with the first job and ends after ``idle_s`` without one, so a model the cache has let
    go of is not kept alive by its worker; the next job starts a new thread."""

    def __init__(self, ckpt: sdecore.Checkpoint, max_rows: int = MAX_BATCH_ROWS, idle_s: float = 60.0):
        self.ckpt, self.max_rows, self.idle_s = ckpt, max_rows, idle_s
        self.threads = torch.get_num_threads()  # the intra-op threads its thread runs with
        self._cond = threading.Condition()
        self._pending: list[_Job] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self.batches = 0  # how many simulation batches ran, and how many requests they held
        self.batched_requests = 0

    def simulate(self, requests: list[SampleRequest], priority: int = INTERACTIVE) -> list:
        """``Paths`` for each request, as :func:`sdecore.simulate_paths` gives it alone."""
        if self._on_worker():
            return simulate_requests(self.ckpt.model, self.ckpt.embedder, list(requests))
        return self._submit(_Job(priority, next(self._seq), requests=list(requests))).result()

    def call(self, fn: Callable[[sdecore.Checkpoint], object], priority: int = BACKGROUND):
        """``fn(checkpoint)`` on the worker, alone, after the interactive requests waiting (at once
        when called from the worker itself, which would otherwise wait for itself)."""
        if self._on_worker():
            return fn(self.ckpt)
        return self._submit(_Job(priority, next(self._seq), fn=fn)).result()

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
        None after ``idle_s`` without work: the thread then ends (under the lock, so a job
        submitted meanwhile starts a new one)."""
        with self._cond:
            if not self._pending:
                self._cond.wait(self.idle_s)
            if not self._pending:
                self._thread = None
                return None
            self._pending.sort()
            first = self._pending.pop(0)
            if first.requests is None or not _batchable(first.requests):
                return [first]
            taken, rows = [first], first.rows
            for job in list(self._pending):
                if job.requests is not None and _batchable(job.requests) and rows + job.rows <= self.max_rows:
                    taken.append(job)
                    rows += job.rows
                    self._pending.remove(job)
            return taken

    def _loop(self) -> None:
        # torch gives a new thread the process-wide count, which the sampler lowers to one for a
        # moment at a few rows (sdecore.onednn.serial_if_few): set this thread's own
        torch.set_num_threads(self.threads)
        try:
            while (jobs := self._take()) is not None:
                self._do(jobs)
        finally:
            with self._cond:  # however the loop ended, the next job starts a thread
                if self._thread is threading.current_thread():
                    self._thread = None
                    if self._pending:
                        self._thread = threading.Thread(target=self._loop, name="sdecore-model-worker", daemon=True)
                        self._thread.start()

    def _do(self, jobs: list[_Job]) -> None:
        first = jobs[0]
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


def _batchable(requests: list[SampleRequest]) -> bool:
    return all(r.solver == "em" for r in requests)


def _run(job: _Job, work: Callable) -> None:
    try:
        job.future.set_result(work())
    except BaseException as exc:  # the session that asked sees the error; the worker goes on
        job.future.set_exception(exc)
