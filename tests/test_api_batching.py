"""The micro-batcher on its own: coalescing, order, batching off, errors, abandoned callers (queued
and running), clients taking turns and their share of the queue."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from generation.step_hook import Interrupted, call_step_hook, step_hook
from unitok.api.batching import MicroBatcher, OwnerShareFull, QueueFull
from unitok.api.model_worker import ModelWorker


class RecordingSquarer:
    """Squares numbers, slowly, and records the batches it was called with and from which thread."""

    def __init__(self, delay_s: float = 0.05) -> None:
        self.delay_s = delay_s
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        if any(x < 0 for x in items):
            raise ValueError("negative input")
        return [x * x for x in items]


def run_with_batcher(model, max_batch: int, max_wait_ms: float, scenario, max_queue: int = 1024,
                     max_queue_per_owner: int | None = None):
    async def main():
        worker = ModelWorker(thread_name_prefix="model")
        batcher = MicroBatcher(model, max_batch=max_batch, max_wait_ms=max_wait_ms, worker=worker,
                               max_queue=max_queue, max_queue_per_owner=max_queue_per_owner)
        batcher.start()
        try:
            return await scenario(batcher)
        finally:
            await batcher.stop()
            worker.shutdown()

    return asyncio.run(main())


def test_concurrent_requests_share_batches_and_get_their_own_results():
    model = RecordingSquarer()

    async def scenario(batcher):
        requests = [[i] for i in range(20)] + [[100, 101, 102]]
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
        return requests, results, batcher.stats

    requests, results, stats = run_with_batcher(model, max_batch=8, max_wait_ms=50, scenario=scenario)
    for request, result in zip(requests, results, strict=True):
        assert [r.value for r in result] == [x * x for x in request]
    assert all(len(batch) <= 8 for batch in model.batches)
    assert len(model.batches) == 3 and stats.largest_batch == 8 and stats.items == 23
    assert model.threads == {"model_0"}, "the model must run off the event loop, in the executor"
    assert all(r.batch_size == 8 for r in results[0])


def test_max_batch_one_runs_each_item_alone():
    model = RecordingSquarer(delay_s=0.0)

    async def scenario(batcher):
        return await asyncio.gather(*(batcher.submit([i, i + 1]) for i in range(5)))

    results = run_with_batcher(model, max_batch=1, max_wait_ms=10, scenario=scenario)
    assert all(len(batch) == 1 for batch in model.batches) and len(model.batches) == 10
    assert [[r.value for r in result] for result in results] == [[i * i, (i + 1) ** 2] for i in range(5)]


def test_a_lone_request_waits_at_most_max_wait():
    model = RecordingSquarer(delay_s=0.0)

    async def scenario(batcher):
        started = time.perf_counter()
        [result] = await batcher.submit([3])
        return result, time.perf_counter() - started

    result, elapsed = run_with_batcher(model, max_batch=16, max_wait_ms=30, scenario=scenario)
    assert result.value == 9 and result.batch_size == 1
    assert 0.025 <= elapsed < 1.0


def test_a_failing_batch_fails_its_callers_and_the_worker_keeps_serving():
    model = RecordingSquarer(delay_s=0.0)

    async def scenario(batcher):
        with pytest.raises(ValueError, match="negative input"):
            await batcher.submit([-1])
        return await batcher.submit([4])

    [result] = run_with_batcher(model, max_batch=4, max_wait_ms=1, scenario=scenario)
    assert result.value == 16


def test_items_of_a_caller_that_went_away_are_not_computed():
    model = RecordingSquarer(delay_s=0.5)

    async def scenario(batcher):
        first = asyncio.ensure_future(batcher.submit([1]))
        await asyncio.sleep(0.05)  # the model is now busy with [1]
        abandoned = asyncio.ensure_future(batcher.submit([2]))
        await asyncio.sleep(0.01)
        abandoned.cancel()
        await first
        return await batcher.submit([3])

    [result] = run_with_batcher(model, max_batch=4, max_wait_ms=0, scenario=scenario)
    assert result.value == 9
    assert [2] not in model.batches and model.batches == [[1], [3]]


def test_a_full_queue_refuses_at_once_instead_of_piling_up():
    model = RecordingSquarer(delay_s=0.3)

    async def scenario(batcher):
        busy = asyncio.ensure_future(batcher.submit([1]))
        await asyncio.sleep(0.05)  # [1] is running; the queue is empty again
        waiting = asyncio.ensure_future(batcher.submit([2, 3]))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match="limit is 3"):
            await batcher.submit([4, 5])
        return await busy, await waiting

    busy, waiting = run_with_batcher(model, max_batch=4, max_wait_ms=0, scenario=scenario, max_queue=3)
    assert [r.value for r in busy + waiting] == [1, 4, 9]


class SteppingSquarer(RecordingSquarer):
    """Squares numbers in ``steps`` decoding steps, each calling ``call_step_hook`` as the
    pipeline's decoding loops do; records how many steps each batch ran."""

    def __init__(self, steps: int = 40, step_s: float = 0.02) -> None:
        super().__init__(delay_s=0.0)
        self.steps, self.step_s = steps, step_s
        self.steps_run: list[int] = []

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.steps_run.append(0)
        for _ in range(self.steps):
            call_step_hook()
            time.sleep(self.step_s)
            self.steps_run[-1] += 1
        return [x * x for x in items]


def test_a_running_batch_whose_callers_all_left_stops_at_its_next_step():
    model = SteppingSquarer(steps=40, step_s=0.02)  # 0.8 s per batch when it runs to the end

    async def scenario(batcher):
        abandoned = asyncio.ensure_future(batcher.submit([1, 2]))
        await asyncio.sleep(0.1)  # the batch is running
        abandoned.cancel()
        started = time.perf_counter()
        [result] = await batcher.submit([3])
        return result, time.perf_counter() - started, batcher.stats

    result, waited, stats = run_with_batcher(model, max_batch=4, max_wait_ms=0, scenario=scenario)
    assert result.value == 9 and stats.interrupted == 1
    assert model.steps_run[0] < 15 and model.steps_run[1] == 40, model.steps_run
    assert waited < 0.8 + 0.3  # its own batch and at most one step of the abandoned one


def test_a_batch_with_one_caller_left_runs_to_the_end():
    model = SteppingSquarer(steps=20, step_s=0.01)

    async def scenario(batcher):
        leaving = asyncio.ensure_future(batcher.submit([1]))
        staying = asyncio.ensure_future(batcher.submit([2]))
        await asyncio.sleep(0.05)
        leaving.cancel()
        return await staying, batcher.stats

    [result], stats = run_with_batcher(model, max_batch=4, max_wait_ms=20, scenario=scenario)
    assert result.value == 4 and stats.interrupted == 0
    assert model.batches == [[1, 2]] and model.steps_run == [20]


def test_outside_a_step_hook_block_the_call_is_a_no_op_and_a_nested_block_replaces_the_hook():
    calls = []

    def stop() -> None:
        raise Interrupted("stop")

    call_step_hook()
    with step_hook(lambda: calls.append("outer")):
        call_step_hook()
        with step_hook(stop), pytest.raises(Interrupted):
            call_step_hook()
        call_step_hook()
    call_step_hook()  # the hook ends with its block
    assert calls == ["outer", "outer"]


def test_a_batch_takes_its_items_from_the_waiting_clients_in_turn():
    model = RecordingSquarer(delay_s=0.1)

    async def scenario(batcher):
        busy = asyncio.ensure_future(batcher.submit([0], owner="a"))
        await asyncio.sleep(0.03)  # [0] is running; what follows queues behind it
        flood = asyncio.ensure_future(batcher.submit([1, 2, 3, 4, 5, 6, 7, 8], owner="a"))
        await asyncio.sleep(0)
        polite = asyncio.ensure_future(batcher.submit([100], owner="b"))
        await asyncio.sleep(0)
        other = asyncio.ensure_future(batcher.submit([200, 201], owner="c"))
        return await asyncio.gather(busy, flood, polite, other)

    results = run_with_batcher(model, max_batch=4, max_wait_ms=0, scenario=scenario)
    assert [[r.value for r in result] for result in results] == [[0], [x * x for x in range(1, 9)], [10000],
                                                                [40000, 40401]]
    assert model.batches == [[0], [1, 100, 200, 2], [3, 201, 4, 5], [6, 7, 8]]


def test_one_client_cannot_take_more_than_its_share_of_the_queue():
    model = RecordingSquarer(delay_s=0.3)

    async def scenario(batcher):
        busy = asyncio.ensure_future(batcher.submit([1], owner="greedy"))
        await asyncio.sleep(0.05)  # [1] is running, and still counts until it is answered
        waiting = asyncio.ensure_future(batcher.submit([2, 3], owner="greedy"))
        await asyncio.sleep(0)
        with pytest.raises(OwnerShareFull, match="3 of your items are already queued or running .the limit per client is 3"):
            await batcher.submit([4], owner="greedy")
        others = await batcher.submit([5, 6], owner="someone else")
        again = await batcher.submit([7, 8], owner="greedy")  # its earlier items are done: room again
        return await busy, await waiting, others, again

    results = run_with_batcher(model, max_batch=4, max_wait_ms=0, scenario=scenario, max_queue_per_owner=3)
    assert [[r.value for r in result] for result in results] == [[1], [4, 9], [25, 36], [49, 64]]


def test_urgent_work_runs_between_the_steps_of_a_running_batch():
    drawing = SteppingSquarer(steps=50, step_s=0.02)  # 1 s per batch
    captioning = RecordingSquarer(delay_s=0.01)

    async def main():
        worker = ModelWorker(thread_name_prefix="model")
        slow = MicroBatcher(drawing, max_batch=4, max_wait_ms=0, worker=worker)
        fast = MicroBatcher(captioning, max_batch=4, max_wait_ms=0, worker=worker, urgent=True)
        slow.start()
        fast.start()
        try:
            long = asyncio.ensure_future(slow.submit([1, 2]))
            await asyncio.sleep(0.1)  # the long batch is running
            started = time.perf_counter()
            [short] = await fast.submit([3])
            waited = time.perf_counter() - started
            return await long, short, waited
        finally:
            await slow.stop()
            await fast.stop()
            worker.shutdown()

    long, short, waited = asyncio.run(main())
    assert short.value == 9 and [r.value for r in long] == [1, 4]
    assert waited < 0.3  # a step and its own batch, not the ~0.9 s left of the long one
    assert drawing.steps_run == [50] and captioning.threads == {"model_0"}
