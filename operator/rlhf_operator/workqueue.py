"""A work queue of keys, as controllers have: each key's work runs once at a time, a few keys at once.

Adding a key that is running makes it run once more afterwards (coalescing any number of adds); a delayed add
keeps the earliest due time. Work returns the seconds after which to run the key again, or None; when it raises,
the key runs again after an exponential backoff (``Retry``: an expected reason to try again, logged without a
traceback), never at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable

log = logging.getLogger(__name__)


class Retry(Exception):
    """Work that should run again after the usual backoff, for an expected reason (a lost race, a busy server)."""


class WorkQueue:
    def __init__(self, work: Callable[..., Awaitable[float | None]], *, concurrency: int = 16,
                 on_error: Callable[[], None] = lambda: None, first_backoff: float = 0.5,
                 max_backoff: float = 300.0):
        self._work, self._on_error = work, on_error
        self._first_backoff, self._max_backoff = first_backoff, max_backoff
        self._slots = asyncio.Semaphore(concurrency)
        self._active: set[Hashable] = set()
        self._again: set[Hashable] = set()
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}
        self._failures: dict[Hashable, int] = {}
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    def add(self, key: tuple, delay: float = 0.0) -> None:
        """Run ``work(*key)`` now, or in ``delay`` seconds."""
        if self._closed:
            return
        if delay > 0:
            loop = asyncio.get_running_loop()
            due = loop.time() + delay
            timer = self._timers.get(key)
            if timer is not None and timer.when() <= due:
                return
            if timer is not None:
                timer.cancel()
            self._timers[key] = loop.call_at(due, self._due, key)
            return
        if key in self._active:
            self._again.add(key)
            return
        self._active.add(key)
        task = asyncio.create_task(self._run(key), name=f"reconcile {key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def forget(self, key: tuple) -> None:
        """Drop a key's pending timer and failure count (its object is gone)."""
        if timer := self._timers.pop(key, None):
            timer.cancel()
        self._failures.pop(key, None)

    async def close(self) -> None:
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _due(self, key: tuple) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def _run(self, key: tuple) -> None:
        try:
            while True:
                self._again.discard(key)
                async with self._slots:
                    delay = await self._attempt(key)
                if delay is not None:
                    self.add(key, delay)
                if key not in self._again:
                    return
        finally:
            self._active.discard(key)

    async def _attempt(self, key: tuple) -> float | None:
        try:
            delay = await self._work(*key)
        except Exception as e:
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            backoff = min(self._max_backoff, self._first_backoff * 2 ** (failures - 1))
            if isinstance(e, Retry):
                log.info("reconciling %s again in %.1fs: %s", "/".join(key), backoff, e)
            else:
                log.exception("reconciling %s failed (%d time(s) in a row); again in %.1fs", "/".join(key),
                              failures, backoff)
                self._on_error()
            return backoff
        self._failures.pop(key, None)
        return delay
