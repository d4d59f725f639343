import asyncio
import sys

import pytest

from app.lifecycle import Lifecycle
from app.memory import malloc_trim, return_memory_when_idle


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_malloc_trim_is_found_and_callable_on_linux():
    trim = malloc_trim()
    assert trim is not None
    assert trim() in (0, 1)  # 1: memory was released, 0: there was none to release


def test_trims_once_after_requests_and_a_quiet_spell_never_while_busy():
    async def scenario() -> list[int]:
        life = Lifecycle()
        life.state = "ready"
        calls: list[int] = []

        def trim() -> int:
            calls.append(life.in_flight)
            return 1

        task = asyncio.create_task(return_memory_when_idle(life, trim, idle_s=0.05, poll_s=0.01))
        await asyncio.sleep(0.3)
        assert calls == []  # nothing served yet: nothing to give back
        async with life.accept():
            await asyncio.sleep(0.3)
            assert calls == []  # busy
        for _ in range(200):
            if calls:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        assert calls == [0]  # once, while idle; no new requests, no second trim
        life.state = "draining"
        await asyncio.wait_for(task, 2)  # the loop ends with the service
        return calls

    assert asyncio.run(scenario()) == [0]
