"""The queue between the HTTP handlers and the model: requests wait here, are put together into batches, and one
worker thread runs every batch, so the model is used by one call at a time.

A `Job` is one request's work: how many rows it adds to a batch, a `key` (jobs with equal keys can share a
batch: the same settings, the same kind of rows) and the function that runs a batch of such jobs. The worker
takes the oldest job, waits at most `max_wait_s` for more while the batch has room, adds every waiting job with
the same key in arrival order up to `max_batch_size` rows (a job larger than that runs alone), and runs them. A job
that finds the worker idle and the queue empty runs at once: nothing suggests company is coming (one client at a
time), whereas a job that arrives while a batch runs waits for the others that arrive meanwhile.
Past `max_queue` waiting rows a new job is refused (`Overloaded`: the server answers 503 with Retry-After).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Hashable, Optional


class Overloaded(Exception):
    """The queue holds `max_queue` rows already."""


class Job:
    """One request's work; `future` resolves to what the batch function gives it (or its exception)."""

    def __init__(self, key: Hashable, rows: int, run_batch: Callable[[list["Job"]], None], payload: Any = None):
        self.key, self.rows, self.run_batch = key, rows, run_batch
        self.payload = payload               # what the batch function reads: the request's rows, prompts ...
        self.future: Future = Future()
        self.cancelled = threading.Event()   # the client went away: the batch function may stop its work
        self.enqueued = time.monotonic()
        self.alone = False                   # it found the worker idle and the queue empty: it does not wait

    def finish(self, value: Any) -> None:
        if not self.future.done():
            self.future.set_result(value)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class Batcher:
    """One worker thread running batches of queued jobs (see the module docstring)."""

    def __init__(self, *, max_batch_size: int, max_wait_s: float, max_queue: int,
                 on_batch: Optional[Callable[[int], None]] = None,
                 on_queue: Optional[Callable[[int], None]] = None):
        self.max_batch_size, self.max_wait_s, self.max_queue = max_batch_size, max_wait_s, max_queue
        self._on_batch = on_batch or (lambda rows: None)      # metrics: the rows of each batch
        self._on_queue = on_queue or (lambda rows: None)      # metrics: the rows waiting
        self._jobs: list[Job] = []
        self._waiting_rows = 0
        self._condition = threading.Condition()
        self._stopping = False
        self._running = False                # the worker is running a batch
        self._thread = threading.Thread(target=self._work, name="ftune-serve-batches", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Run what is queued, then end the worker."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        self._thread.join()

    def submit(self, job: Job) -> Job:
        with self._condition:
            if self._stopping:
                raise Overloaded("the server is stopping")
            if self._jobs and self._waiting_rows + job.rows > self.max_queue:
                raise Overloaded(f"{self._waiting_rows} rows are waiting already (--max-queue {self.max_queue})")
            job.alone = not self._jobs and not self._running
            self._jobs.append(job)
            self._waiting_rows += job.rows
            self._on_queue(self._waiting_rows)
            self._condition.notify_all()
        return job

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if not batch:
                continue
            self._on_batch(sum(job.rows for job in batch))
            try:
                batch[0].run_batch(batch)
            except BaseException as exc:  # noqa: BLE001 — the requests get the error, the worker goes on
                for job in batch:
                    job.fail(exc)
            finally:
                with self._condition:
                    self._running = False

    def _next_batch(self) -> Optional[list[Job]]:
        with self._condition:
            while not self._jobs:
                if self._stopping:
                    return None
                self._condition.wait()
            for job in [job for job in self._jobs if job.cancelled.is_set()]:  # its client went away: no work
                self._jobs.remove(job)
                self._waiting_rows -= job.rows
                job.finish(None)
            if not self._jobs:
                return []
            first = self._jobs[0]
            deadline = first.enqueued + (0 if first.alone else self.max_wait_s)
            while (not self._stopping and self._rows_like(first) < self.max_batch_size
                   and (left := deadline - time.monotonic()) > 0):
                self._condition.wait(left)
            batch, rows = [], 0
            for job in list(self._jobs):
                if job.key == first.key and (not batch or rows + job.rows <= self.max_batch_size):
                    batch.append(job)
                    rows += job.rows
                    self._jobs.remove(job)
            self._waiting_rows -= rows
            self._on_queue(self._waiting_rows)
            self._running = True
            return batch

    def _rows_like(self, first: Job) -> int:
        return sum(job.rows for job in self._jobs if job.key == first.key)
