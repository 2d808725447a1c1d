"""Micro-batching: coalesce items from concurrent requests into one model call.

One worker takes up to ``max_batch`` queued items, waiting at most ``max_wait_ms`` after the
first, runs the model on them in a worker thread and hands each caller its own results; beyond
``max_queue`` waiting items ``submit`` refuses at once (``QueueFull``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class QueueFull(Exception):
    """More items are waiting than the batcher accepts; the caller should retry later."""


@dataclass(frozen=True)
class ItemResult(Generic[R]):
    value: R
    queue_ms: float  # from submission until its batch started
    model_ms: float  # the whole batch's model call
    batch_size: int


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest_batch: int = 0
    skipped: int = 0  # items whose caller went away (client disconnect, deadline) before their batch


@dataclass
class _Pending(Generic[T]):
    item: T
    future: asyncio.Future
    submitted: float


class MicroBatcher(Generic[T, R]):
    """Runs ``run_batch(items) -> results`` (same length, same order) on coalesced items."""

    def __init__(self, run_batch: Callable[[list[T]], list[R]], *, max_batch: int, max_wait_ms: float,
                 executor: Executor, max_queue: int = 1024) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be at least 1, got {max_batch} and {max_queue}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be non-negative, got {max_wait_ms}")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._run_batch = run_batch
        self._executor = executor
        self._pending: deque[_Pending[T]] = deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        """Start the worker on the running event loop (call from the server's startup)."""
        self._arrived = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="micro-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        while self._pending:
            pending = self._pending.popleft()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("the server is shutting down"))

    async def submit(self, items: Sequence[T]) -> list[ItemResult[R]]:
        """Queue ``items`` together and wait for all their results (in order)."""
        if self._worker is None or self._arrived is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if len(self._pending) + len(items) > self.max_queue:
            raise QueueFull(f"{len(self._pending)} items are already waiting (the limit is {self.max_queue})")
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        pending = [_Pending(item, loop.create_future(), now) for item in items]
        self._pending.extend(pending)
        self._arrived.set()
        try:
            return list(await asyncio.gather(*(p.future for p in pending)))
        finally:
            # A caller that went away (client disconnect) frees its queued items.
            for p in pending:
                p.future.cancel()

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            collected = await self._collect()
            batch = [p for p in collected if not p.future.done()]
            self.stats.skipped += len(collected) - len(batch)
            if not batch:
                continue
            started = time.perf_counter()
            try:
                values = await loop.run_in_executor(self._executor, self._run_batch, [p.item for p in batch])
                if len(values) != len(batch):
                    raise RuntimeError(f"model returned {len(values)} results for {len(batch)} items")
            except Exception as error:  # the callers get the error; the worker keeps serving
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(error)
                continue
            model_ms = (time.perf_counter() - started) * 1000
            self.stats.batches += 1
            self.stats.items += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            for p, value in zip(batch, values, strict=True):
                if not p.future.done():
                    p.future.set_result(ItemResult(value, (started - p.submitted) * 1000, model_ms, len(batch)))

    async def _collect(self) -> list[_Pending[T]]:
        """Wait for a first item, then up to ``max_wait_s`` more for the batch to fill."""
        assert self._arrived is not None
        while not self._pending:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = time.perf_counter() + self.max_wait_s
        while len(self._pending) < self.max_batch:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
