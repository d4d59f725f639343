import asyncio
import threading
import time

import pytest

from app.batcher import Batcher
from app.errors import ServiceError


def run(coro):
    return asyncio.run(coro)


def doubler(record: list[int], delay: float = 0.0):
    def run_batch(items: list[int]) -> list[int]:
        record.append(len(items))
        time.sleep(delay)
        return [2 * i for i in items]

    return run_batch


def test_limits_are_validated_at_construction():
    with pytest.raises(ValueError, match="max_batch_size"):
        Batcher(doubler([]), 0, 0.0, 10)
    with pytest.raises(ValueError, match="queue_size"):
        Batcher(doubler([]), 8, 0.0, 4)
    with pytest.raises(ValueError, match="max_wait_s"):
        Batcher(doubler([]), 8, -1.0, 10)


def test_concurrent_requests_share_batches_and_results_match_inputs():
    sizes: list[int] = []

    async def main():
        b = Batcher(doubler(sizes), max_batch_size=4, max_wait_s=0.05, queue_size=64)
        b.start()
        deadline = asyncio.get_running_loop().time() + 5
        results = await asyncio.gather(*(b.submit([i, 100 + i], deadline) for i in range(6)))
        await b.drain(1)
        return results

    results = run(main())
    for i, served in enumerate(results):
        assert [r for r, _ in served] == [2 * i, 2 * (100 + i)]
    assert sum(sizes) == 12
    assert max(sizes) == 4  # full batches, and faces of one request may span two batches
    assert len(sizes) == 3


def test_max_wait_zero_takes_what_is_there():
    sizes: list[int] = []

    async def main():
        b = Batcher(doubler(sizes), max_batch_size=8, max_wait_s=0.0, queue_size=64)
        b.start()
        deadline = asyncio.get_running_loop().time() + 5
        out = await b.submit([1], deadline)
        await b.drain(1)
        return out

    served = run(main())
    assert served[0][0] == 2
    assert served[0][1].size == 1
    assert sizes == [1]


def test_queue_full_is_503_and_deadline_is_504():
    gate = threading.Event()

    def blocked(items: list[int]) -> list[int]:
        gate.wait(5)
        return items

    async def main():
        b = Batcher(blocked, max_batch_size=1, max_wait_s=0.0, queue_size=2)
        b.start()
        loop = asyncio.get_running_loop()
        running = asyncio.create_task(b.submit([0], loop.time() + 5))  # occupies the worker
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(b.submit([1, 2], loop.time() + 0.1))  # fills the queue
        await asyncio.sleep(0.01)
        with pytest.raises(ServiceError) as full:
            await b.submit([3], loop.time() + 5)
        with pytest.raises(ServiceError) as late:
            await waiting
        gate.set()
        await running
        assert b.depth == 0  # timed-out faces were dropped, not run
        await b.drain(1)
        return full.value, late.value

    full, late = run(main())
    assert (full.status, full.code) == (503, "queue_full")
    assert full.headers["Retry-After"]
    assert (late.status, late.code) == (504, "deadline_exceeded")


def test_wrong_result_count_fails_the_batch_not_the_process():
    async def main():
        b = Batcher(lambda items: items[:-1], max_batch_size=4, max_wait_s=0.0, queue_size=8)
        b.start()
        with pytest.raises(ServiceError, match="inference failed"):
            await b.submit([1, 2], asyncio.get_running_loop().time() + 5)
        ok = Batcher(doubler([]), 4, 0.0, 8)
        ok.start()
        assert (await ok.submit([3], asyncio.get_running_loop().time() + 5))[0][0] == 6
        await b.drain(1)
        await ok.drain(1)

    run(main())


def test_drain_finishes_queued_work_and_refuses_new():
    sizes: list[int] = []

    async def main():
        b = Batcher(doubler(sizes, delay=0.05), max_batch_size=2, max_wait_s=0.0, queue_size=16)
        b.start()
        loop = asyncio.get_running_loop()
        accepted = [asyncio.create_task(b.submit([i], loop.time() + 5)) for i in range(6)]
        await asyncio.sleep(0.01)
        finished = await b.drain(5)
        with pytest.raises(ServiceError) as refused:
            await b.submit([9], loop.time() + 5)
        return finished, [t.result()[0][0] for t in accepted], refused.value

    finished, results, refused = run(main())
    assert finished
    assert results == [0, 2, 4, 6, 8, 10]
    assert (refused.status, refused.code) == (503, "draining")
