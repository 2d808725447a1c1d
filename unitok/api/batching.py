"""Micro-batching: coalesce items from concurrent requests into one model call.

One worker takes up to ``max_batch`` queued items, waiting at most ``max_wait_ms`` after the
first, runs the model on them in a worker thread and hands each caller its own results; beyond
``max_queue`` waiting items, or ``max_queue_per_owner`` queued or running items of one owner (a
client address), ``submit`` refuses at once (``QueueFull``, ``OwnerShareFull``).

Fairness: a batch takes its items from the waiting owners in turn (one each, round after round),
so one client's many queued items delay another's by at most one batch, not by the length of its
backlog. Aborts: a caller that goes away frees its queued items, and a running batch whose callers
have all gone stops at its next decoding step. Priority: an ``urgent`` batcher's batches may run
inside another batcher's running batch, between two of its decoding steps (``ModelWorker``).
Both go through the batch's ``generation.step_hook``.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from generation.step_hook import Interrupted, step_hook
from unitok.api.model_worker import ModelWorker

T = TypeVar("T")
R = TypeVar("R")


class QueueFull(Exception):
    """More items are waiting than the batcher accepts; the caller should retry later."""


class OwnerShareFull(QueueFull):
    """This owner already has its share of the queue waiting; it should retry when some are done."""


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
    interrupted: int = 0  # batches stopped mid-way because all their callers went away


@dataclass
class _Pending(Generic[T]):
    item: T
    future: asyncio.Future
    submitted: float
    owner: Hashable


class MicroBatcher(Generic[T, R]):
    """Runs ``run_batch(items) -> results`` (same length, same order) on coalesced items."""

    def __init__(self, run_batch: Callable[[list[T]], list[R]], *, max_batch: int, max_wait_ms: float,
                 worker: ModelWorker, urgent: bool = False, max_queue: int = 1024,
                 max_queue_per_owner: int | None = None) -> None:
        max_queue_per_owner = max_queue if max_queue_per_owner is None else max_queue_per_owner
        if min(max_batch, max_queue, max_queue_per_owner) < 1:
            raise ValueError("max_batch, max_queue and max_queue_per_owner must be at least 1, got "
                             f"{max_batch}, {max_queue} and {max_queue_per_owner}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be non-negative, got {max_wait_ms}")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self.max_queue_per_owner = max_queue_per_owner
        self.stats = BatchStats()
        self._run_batch = run_batch
        self._worker = worker
        self.urgent = urgent
        self._pending: deque[_Pending[T]] = deque()
        self._in_flight_per_owner: Counter[Hashable] = Counter()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start the worker on the running event loop (call from the server's startup)."""
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._work(), name="micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        while self._pending:
            pending = self._pending.popleft()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("the server is shutting down"))

    async def submit(self, items: Sequence[T], owner: Hashable = None) -> list[ItemResult[R]]:
        """Queue ``items`` together and wait for all their results (in order). ``owner`` (a client
        address) gets its turn in each batch and at most ``max_queue_per_owner`` items queued or running."""
        if self._task is None or self._arrived is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if len(self._pending) + len(items) > self.max_queue:
            raise QueueFull(f"{len(self._pending)} items are already waiting (the limit is {self.max_queue})")
        if self._in_flight_per_owner[owner] + len(items) > self.max_queue_per_owner:
            raise OwnerShareFull(f"{self._in_flight_per_owner[owner]} of your items are already queued or running "
                                 f"(the limit per client is {self.max_queue_per_owner})")
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        pending = [_Pending(item, loop.create_future(), now, owner) for item in items]
        for p in pending:
            p.future.add_done_callback(functools.partial(self._owner_item_done, owner))
        self._in_flight_per_owner[owner] += len(pending)
        self._pending.extend(pending)
        self._arrived.set()
        try:
            return list(await asyncio.gather(*(p.future for p in pending)))
        finally:
            # A caller that went away (client disconnect) frees its queued items.
            for p in pending:
                p.future.cancel()

    def _run_in_model_thread(self, items: list[T], abandoned: threading.Event) -> list[R]:
        """``run_batch(items)``, which between its decoding steps stops once ``abandoned`` is set
        and (unless it is urgent itself) lets waiting urgent work run."""

        def between_steps() -> None:
            if abandoned.is_set():
                raise Interrupted("every caller of this batch went away")
            if not self.urgent:
                self._worker.run_urgent_work()

        with step_hook(between_steps):
            return self._run_batch(items)

    def _owner_item_done(self, owner: Hashable, _future: asyncio.Future) -> None:
        """An item is answered, failed or abandoned: it no longer counts against its owner's share."""
        self._in_flight_per_owner[owner] -= 1
        if self._in_flight_per_owner[owner] <= 0:
            del self._in_flight_per_owner[owner]

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            collected = await self._collect()
            batch = [p for p in collected if not p.future.done()]
            self.stats.skipped += len(collected) - len(batch)
            if not batch:
                continue
            abandoned = _all_done_event([p.future for p in batch])
            run = functools.partial(self._run_in_model_thread, [p.item for p in batch], abandoned)
            started = time.perf_counter()
            try:
                values = await asyncio.wrap_future(self._worker.submit(run, urgent=self.urgent), loop=loop)
                if len(values) != len(batch):
                    raise RuntimeError(f"model returned {len(values)} results for {len(batch)} items")
            except Interrupted:  # every caller of this batch went away: nobody to answer
                self.stats.interrupted += 1
                continue
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
        """Wait for a first item, then up to ``max_wait_s`` more for the batch to fill; then take
        up to ``max_batch`` items, one per owner in turn (``_take_in_turns``)."""
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
        batch, self._pending = _take_in_turns(self._pending, self.max_batch)
        return batch


def _take_in_turns(pending: deque[_Pending[T]], count: int) -> tuple[list[_Pending[T]], deque[_Pending[T]]]:
    """Up to ``count`` items taken round-robin over their owners (owners in order of their oldest
    item, each owner's items in order), and the rest in their original order."""
    by_owner: dict[Hashable, deque[_Pending[T]]] = {}
    for p in pending:
        by_owner.setdefault(p.owner, deque()).append(p)
    taken: list[_Pending[T]] = []
    while len(taken) < count and by_owner:
        for owner in list(by_owner):
            taken.append(by_owner[owner].popleft())
            if not by_owner[owner]:
                del by_owner[owner]
            if len(taken) == count:
                break
    chosen = {id(p) for p in taken}
    return taken, deque(p for p in pending if id(p) not in chosen)


def _all_done_event(futures: list[asyncio.Future]) -> threading.Event:
    """An event (readable from any thread) set once every one of ``futures`` is done; before their
    batch has run, that means every caller went away."""
    event = threading.Event()
    remaining = len(futures)

    def one_done(_future: asyncio.Future) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            event.set()

    for future in futures:
        future.add_done_callback(one_done)
    return event
