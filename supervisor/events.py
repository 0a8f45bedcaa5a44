"""The arbiter's event stream: what happened, to whom, as plain dicts.

Watchers publish lifecycle events (spawn, ready, exit, flapping, state
changes, reload); the control channel streams them to ``juggler events``
subscribers and tests read them. Publishing never blocks: a subscriber is a
callable that must itself only queue the event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("juggler.supervisor")

Event = dict[str, Any]
Subscriber = Callable[[Event], None]

# Every topic published, as docs/protocol.md describes them for clients.
TOPICS = frozenset(
    {"spawn", "spawn_failed", "ready", "promote", "exit", "state", "flapping", "reload"}
)


class EventBus:
    """Fan-out of events to subscribers, in the order they happened."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add a subscriber; return the function that removes it."""
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber)

    def emit(self, topic: str, **data: Any) -> None:
        assert topic in TOPICS, f"undocumented event topic {topic!r}"
        event: Event = {"topic": topic, "time": time.time(), **data}
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                # One broken subscriber must not silence the others.
                log.exception("event subscriber %r failed", subscriber)
