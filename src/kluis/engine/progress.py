"""Progress of long work (files, bytes, rate, ETA), reported through a callback."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Progress:
    """A running count; ``total_bytes`` is an estimate (the last run's size) when known."""

    phase: str = ""
    files: int = 0
    bytes: int = 0
    new_bytes: int = 0
    total_bytes: int | None = None
    warnings: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        """Seconds since the start."""
        return max(1e-6, time.monotonic() - self.started)

    @property
    def rate(self) -> float:
        """Bytes per second so far."""
        return self.bytes / self.elapsed

    @property
    def eta(self) -> float | None:
        """Seconds left, when a total is known and progress was made."""
        if not self.total_bytes or not self.bytes:
            return None
        return max(0.0, (self.total_bytes - self.bytes) / self.rate)

    def as_dict(self) -> dict[str, object]:
        """For job reports and ``--json``."""
        return {
            "phase": self.phase,
            "files": self.files,
            "bytes": self.bytes,
            "new_bytes": self.new_bytes,
            "total_bytes": self.total_bytes,
            "warnings": self.warnings,
            "rate": round(self.rate),
            "eta": None if self.eta is None else round(self.eta, 1),
        }


ProgressCallback = Callable[[Progress], None]


class Throttle:
    """Calls the callback at most every ``interval`` seconds (and always on ``force``)."""

    def __init__(self, callback: ProgressCallback | None, interval: float = 0.5) -> None:
        self.callback = callback
        self.interval = interval
        self._last = 0.0

    def __call__(self, progress: Progress, force: bool = False) -> None:
        if self.callback is None:
            return
        now = time.monotonic()
        if force or now - self._last >= self.interval:
            self._last = now
            self.callback(progress)
