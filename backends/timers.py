"""Named timers on an asyncio loop, for the HTTP protocols of the asyncio
backends (uvicorn, hypercorn): a head's deadline, a stalled body, a client
that reads nothing. One timer of each name at a time; arming one again
replaces it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Timers:
    """A protocol's named timers on the loop, one of each name at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._handles: dict[str, asyncio.TimerHandle] = {}

    def armed(self, name: str) -> bool:
        return name in self._handles

    def arm(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        self.cancel(name)

        def fire() -> None:
            del self._handles[name]
            callback()

        self._handles[name] = self._loop.call_later(delay, fire)

    def cancel(self, name: str) -> None:
        handle = self._handles.pop(name, None)
        if handle is not None:
            handle.cancel()

    def cancel_all(self) -> None:
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()
