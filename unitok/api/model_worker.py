"""The server's one model thread, with a fast lane for short work.

All model work runs on one thread (the weights are shared and a CPU has few cores). Plain work
(drawings, edits) runs in turn. Urgent work (captions, answers: a few greedy tokens) also runs in
turn when the thread is free, but when a long batch is running, it runs inside that batch at its
next decoding step (``run_urgent_work``, called from the batch's ``generation.step_hook``), so a
caption waits for one decoding step rather than a whole drawing batch. ``ThreadPoolExecutor``
has no priorities and cannot preempt, which is why this class exists.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class ModelWorker:
    def __init__(self, thread_name_prefix: str = "unitok-model") -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name_prefix)
        self._urgent: deque[tuple[Callable[[], Any], Future]] = deque()
        self._lock = threading.Lock()

    def submit(self, work: Callable[[], Any], *, urgent: bool = False) -> Future:
        """Run ``work()`` on the model thread; urgent work may also run inside a running batch."""
        if not urgent:
            return self._executor.submit(work)
        future: Future = Future()
        with self._lock:
            self._urgent.append((work, future))
        self._executor.submit(self.run_urgent_work)  # in case no running batch takes it first
        return future

    def run_urgent_work(self) -> None:
        """Run the urgent work waiting now, in this (the model) thread; each result or error goes
        to that work's own future."""
        while True:
            with self._lock:
                if not self._urgent:
                    return
                work, future = self._urgent.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(work())
            except Exception as error:
                future.set_exception(error)

    def shutdown(self) -> None:
        """Wait for the submitted work (each urgent submission queued a drain, so none is left)."""
        self._executor.shutdown(wait=True)
