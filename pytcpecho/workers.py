"""Reusable threads, one connection at a time each (thread per client, minus the spawn)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

Job = tuple[Any, ...]


class Workers:
    """Run each job on an idle worker thread, or on a new one if none is idle.

    A worker serves one job at a time; after ``idle_seconds`` with nothing to
    do it exits, so a burst of clients leaves no crowd of threads behind.
    With ``max_threads``, never more threads than that: a job that finds
    none idle and the cap reached waits for the next worker to finish (the
    server admits a client only when one has, so that wait is short).
    """

    def __init__(self, target: Callable[..., object], *, idle_seconds: float = 30.0,
                 max_threads: int | None = None, name: str = "pytcpecho-conn") -> None:
        self._target = target
        self._idle_seconds = idle_seconds
        self._max_threads = max_threads
        self._name = name
        # queue.Queue, not SimpleQueue: in CPython 3.11 a SimpleQueue.get(timeout) that loses
        # its item to another getter near the deadline can wait forever (negative timeout).
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._idle = 0  # workers waiting for a job, minus jobs promised to them
        self._owed = 0  # jobs queued for workers still busy (the thread cap was reached)
        self._threads: set[threading.Thread] = set()
        self._closed = False

    def submit(self, *job: Any) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("workers are closed")
            if self._idle > 0:
                self._idle -= 1
                self._jobs.put(job)
                return
            if self._max_threads is not None and len(self._threads) >= self._max_threads:
                self._owed += 1
                self._jobs.put(job)
                return
            thread = threading.Thread(target=self._work, args=(job,), name=self._name,
                                      daemon=True)
            self._threads.add(thread)
        try:
            thread.start()
        except BaseException:  # out of threads or memory: forget it, let the caller decide
            with self._lock:
                self._threads.discard(thread)
            raise

    @property
    def count(self) -> int:
        """Worker threads alive now."""
        with self._lock:
            return len(self._threads)

    def _work(self, job: Job | None) -> None:
        try:
            while job is not None:
                self._target(*job)
                with self._lock:
                    if self._owed > 0:  # queued for the first worker to finish (even closing)
                        self._owed -= 1
                        job = self._jobs.get()
                        continue
                    if self._closed:
                        return
                    self._idle += 1
                try:
                    job = self._jobs.get(timeout=self._idle_seconds)
                except queue.Empty:
                    with self._lock:
                        if self._idle > 0:
                            self._idle -= 1
                            # Leave the count now, so submit() never owes a job to us.
                            self._threads.discard(threading.current_thread())
                            return
                    # Our idle slot was promised to a job just now: it is queued.
                    job = self._jobs.get()
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def close(self, timeout: float | None = None) -> None:
        """Release idle workers and join every thread (busy ones must be woken first),
        waiting ``timeout`` seconds in all (None: as long as it takes)."""
        with self._lock:
            self._closed = True
            for _ in range(self._idle):
                self._jobs.put(None)
            self._idle = 0
            threads = list(self._threads)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
