"""Wake long-polling agents in this process when work is queued for their machine.

Work queued by another vault process is found by a periodic database check
instead (``kluis.vault.api.machines.watch_database``: one query for all waiting
polls); this only makes the common case (same process) immediate.
"""

from __future__ import annotations

import asyncio
import threading


class WorkNotifier:
    """Per-machine wake-ups, safe to signal from worker threads."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: dict[str, set[asyncio.Event]] = {}
        self._lock = threading.Lock()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the server's event loop (called at startup)."""
        self._loop = loop

    def subscribe(self, machine_id: str) -> asyncio.Event:
        """An event set when work for ``machine_id`` is queued; unsubscribe when done."""
        event = asyncio.Event()
        with self._lock:
            self._events.setdefault(machine_id, set()).add(event)
        return event

    def unsubscribe(self, machine_id: str, event: asyncio.Event) -> None:
        """Stop delivering wake-ups to ``event``."""
        with self._lock:
            waiting = self._events.get(machine_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._events[machine_id]

    def waiting(self) -> list[str]:
        """The machines that have a poll waiting in this process."""
        with self._lock:
            return list(self._events)

    def notify(self, machine_id: str | None) -> None:
        """Wake every poll waiting for ``machine_id`` (from any thread)."""
        if machine_id is None or self._loop is None:
            return
        with self._lock:
            events = list(self._events.get(machine_id, ()))
        for event in events:
            try:
                self._loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop is closing
                return
