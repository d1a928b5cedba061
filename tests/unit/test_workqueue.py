"""The controller's work queue: one run at a time per key, coalesced adds, delays, and retries on failure."""

import asyncio

import pytest

from rlhf_operator.workqueue import WorkQueue


class Work:
    def __init__(self, fail: int = 0, again: float | None = None):
        self.calls: list[tuple] = []
        self.running = 0
        self.most_at_once = 0
        self.fail, self.again = fail, again
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, *key):
        self.calls.append(key)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        await self.gate.wait()
        self.running -= 1
        if self.fail:
            self.fail -= 1
            raise RuntimeError("API down")
        return self.again


async def settle(seconds: float = 0.05) -> None:
    await asyncio.sleep(seconds)


@pytest.mark.asyncio
async def test_adds_while_a_key_runs_coalesce_into_one_more_run():
    work = Work()
    work.gate.clear()
    queue = WorkQueue(work)
    queue.add(("ns", "a"))
    await settle()
    for _ in range(5):
        queue.add(("ns", "a"))
    work.gate.set()
    await settle()
    assert work.calls == [("ns", "a"), ("ns", "a")]
    assert work.most_at_once == 1
    await queue.close()


@pytest.mark.asyncio
async def test_a_failing_key_is_retried_with_backoff_and_errors_are_counted():
    work, errors = Work(fail=2), []
    queue = WorkQueue(work, on_error=lambda: errors.append(1), first_backoff=0.01)
    queue.add(("ns", "a"))
    await settle(0.2)
    assert len(work.calls) == 3 and len(errors) == 2
    await queue.close()


@pytest.mark.asyncio
async def test_work_asks_to_run_again_later_and_a_delayed_add_keeps_the_earliest_time():
    work = Work(again=0.05)
    queue = WorkQueue(work)
    queue.add(("ns", "a"))
    await settle(0.02)
    assert len(work.calls) == 1
    await settle(0.06)
    assert len(work.calls) == 2
    work.again = None
    queue.add(("ns", "b"), delay=10)
    queue.add(("ns", "b"), delay=0.01)
    await settle(0.05)
    assert work.calls.count(("ns", "b")) == 1
    await queue.close()


@pytest.mark.asyncio
async def test_keys_run_side_by_side_up_to_the_concurrency():
    work = Work()
    work.gate.clear()
    queue = WorkQueue(work, concurrency=2)
    for name in "abcd":
        queue.add(("ns", name))
    await settle()
    assert work.running == 2
    work.gate.set()
    await settle()
    assert sorted(work.calls) == [("ns", name) for name in "abcd"]
    await queue.close()
