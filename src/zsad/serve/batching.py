"""Dynamic batching: concurrent requests for one model are gathered into one forward, on one worker thread.

Every piece of model work of the service (builds, set-level sets, calibrations, batches) runs on the worker
thread of its device, so a model is never used from two threads at once and the event loop stays free:
``/healthz`` answers while a batch runs. Image jobs for the same model that wait together are concatenated up
to ``max_batch`` images; the first one waits at most ``max_wait_ms`` for company, counted from when it was
queued, so under load (the queue already full of work) nothing waits on purpose.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from zsad.methods.base import Method
from zsad.runs import ScoredBatch, score_images


class QueueFull(Exception):
    """The bounded queue holds ``max_queue`` jobs: the caller answers 503 with ``Retry-After``."""


@dataclass
class _Job:
    future: Future[Any]
    queued: float
    method: Method | None = None  # image job: score ``images`` with ``method``
    images: torch.Tensor | None = None
    call: Callable[[], Any] | None = None  # any other model work, run alone


@dataclass
class BatchStats:
    """What the worker has done: forwards, images and jobs, to report the batch sizes actually formed."""

    batches: int = 0
    images: int = 0
    jobs: int = 0
    calls: int = 0
    largest: int = 0
    sizes: dict[int, int] = field(default_factory=dict)

    def record(self, jobs: int, images: int) -> None:
        """Count one forward of ``images`` images gathered from ``jobs`` jobs."""
        self.batches += 1
        self.images += images
        self.jobs += jobs
        self.largest = max(self.largest, images)
        self.sizes[images] = self.sizes.get(images, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        """JSON for ``/v1/stats``."""
        return {
            "batches": self.batches,
            "images": self.images,
            "jobs": self.jobs,
            "calls": self.calls,
            "mean_batch_size": self.images / self.batches if self.batches else 0.0,
            "largest_batch": self.largest,
            "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())},
        }


class Batcher:
    """One worker thread and its bounded job queue (one per device)."""

    def __init__(self, max_batch: int = 8, max_wait_ms: float = 10.0, max_queue: int = 64) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1, max_wait_ms >= 0")
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_ms / 1000.0, max_queue
        self.stats = BatchStats()
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = False
        self._thread = threading.Thread(target=self._loop, name="zsad-batcher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------ submit
    def score(self, method: Method, images: torch.Tensor) -> Future[ScoredBatch]:
        """Queue images for ``method`` (not set-level); they may share a forward with other requests' images."""
        return self._put(_Job(Future(), time.monotonic(), method=method, images=images))

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Queue any other work on the model (build, set-level scoring, calibration), run alone and in order."""
        return self._put(_Job(Future(), time.monotonic(), call=fn))

    def _put(self, job: _Job) -> Future[Any]:
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} requests waiting); retry shortly")
            self._queue.append(job)
            self._cond.notify_all()
        return job.future

    @property
    def depth(self) -> int:
        """Jobs waiting (not counting the one running)."""
        return len(self._queue)

    @property
    def busy(self) -> bool:
        """Whether the worker is running a job now."""
        return self._busy

    def stop(self, timeout: float = 60.0) -> None:
        """Refuse new jobs, finish the queued ones (their clients are waiting), then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # ------------------------------------------------------------------------------------------ worker
    def _loop(self) -> None:
        while True:
            group = self._next_group()
            if group is None:
                return
            self._busy = True
            try:
                self._run(group)
            finally:
                self._busy = False

    def _next_group(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            first = self._queue.popleft()
            if first.call is not None:
                return [first]
            group, n = [first], _count(first)
            deadline = first.queued + self.max_wait
            while True:
                for job in list(self._queue):
                    if n >= self.max_batch:
                        break
                    if job.method is first.method and n + _count(job) <= self.max_batch:
                        self._queue.remove(job)
                        group.append(job)
                        n += _count(job)
                left = deadline - time.monotonic()
                if n >= self.max_batch or left <= 0 or self._stopping:
                    return group
                self._cond.wait(left)

    def _run(self, group: list[_Job]) -> None:
        live = [j for j in group if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        if live[0].call is not None:
            self.stats.calls += 1
            try:
                live[0].future.set_result(live[0].call())
            except BaseException as e:  # handed to the waiting request, which answers for it
                live[0].future.set_exception(e)
            return
        method = live[0].method
        assert method is not None
        try:
            images = torch.cat([j.images for j in live if j.images is not None])
            scored = score_images(method, images, self.max_batch)
        except BaseException as e:
            for j in live:
                j.future.set_exception(e)
            return
        self.stats.record(len(live), len(images))
        start = 0
        for j in live:
            n = _count(j)
            j.future.set_result(_slice(scored, start, start + n))
            start += n


def _count(job: _Job) -> int:
    return len(job.images) if job.images is not None else 0


def _slice(scored: ScoredBatch, a: int, b: int) -> ScoredBatch:
    parts = {k: np.asarray(v[a:b]) for k, v in scored.parts.items()}
    return ScoredBatch(paths=[], scores=scored.scores[a:b], maps=scored.maps[a:b], batch={}, parts=parts)
