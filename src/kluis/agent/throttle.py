"""Bandwidth throttling: a token bucket per direction whose rate follows work and off hours.

The limits come from the ``[bandwidth]`` section of the agent configuration. The
bucket wraps the HTTP transport, so every byte the agent sends to or reads from the
vault (packs, indexes, restores) passes through it, in slices small enough that the
rate holds within a fraction of a second.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from typing import cast

import httpx

from kluis.agent.config import DAYS, Bandwidth

SLICE = 64 * 1024


class RateSchedule:
    """Which limit applies now: the work-hours limit inside the work window, else the off-hours one."""

    def __init__(self, bandwidth: Bandwidth, now: Callable[[], dt.datetime] = dt.datetime.now) -> None:
        self.bandwidth = bandwidth
        self._now = now

    def in_work_hours(self, when: dt.datetime | None = None) -> bool:
        """Whether ``when`` (local time, default now) falls inside the work window."""
        when = when or self._now()
        bw = self.bandwidth
        if DAYS[when.weekday()] not in bw.work_days:
            return False
        start = dt.time.fromisoformat(bw.work_start)
        end = dt.time.fromisoformat(bw.work_end)
        t = when.time()
        if start <= end:
            return start <= t < end
        return t >= start or t < end  # a window across midnight, e.g. 22:00-06:00

    def limit(self, when: dt.datetime | None = None) -> int:
        """Bytes per second allowed now; 0 means unlimited."""
        bw = self.bandwidth
        return bw.work_hours_limit if self.in_work_hours(when) else bw.off_hours_limit


class TokenBucket:
    """Thread-safe token bucket; the rate is read from the schedule on every refill."""

    def __init__(self, schedule: RateSchedule, burst_seconds: float = 0.2) -> None:
        self.schedule = schedule
        self.burst_seconds = burst_seconds
        self._lock = threading.Lock()
        self._tokens = 0.0
        self._stamp = time.monotonic()
        self._rate_checked = 0.0
        self._rate = 0
        self.waited = 0.0

    def _current_rate(self, now: float) -> int:
        # Asking the schedule costs a datetime; once a second is often enough.
        if now - self._rate_checked >= 1.0:
            self._rate = self.schedule.limit()
            self._rate_checked = now
        return self._rate

    def unlimited(self) -> bool:
        """Whether no limit applies now (then bytes pass without slicing or waiting)."""
        with self._lock:
            return self._current_rate(time.monotonic()) <= 0

    def consume(self, amount: int) -> None:
        """Block until ``amount`` bytes may pass."""
        remaining = amount
        while remaining > 0:
            with self._lock:
                now = time.monotonic()
                rate = self._current_rate(now)
                if rate <= 0:
                    self._tokens = 0.0
                    self._stamp = now
                    return
                capacity = max(rate * self.burst_seconds, float(SLICE))
                self._tokens = min(capacity, self._tokens + (now - self._stamp) * rate)
                self._stamp = now
                take = min(remaining, int(capacity))
                if self._tokens >= take:
                    self._tokens -= take
                    remaining -= take
                    continue
                wait = (take - self._tokens) / rate
            self.waited += wait
            time.sleep(wait)


def paced(bucket: TokenBucket, chunk: bytes | memoryview) -> Iterator[bytes | memoryview]:
    """``chunk`` whole while no limit applies, else in slices that each wait for their tokens."""
    if bucket.unlimited():
        # No limit now: a 16 MiB pack goes out in one write, not 256 slices.
        yield chunk
        return
    view = memoryview(chunk)
    for i in range(0, len(view), SLICE):
        piece = view[i : i + SLICE]
        bucket.consume(len(piece))
        yield piece


class _ThrottledStream(httpx.SyncByteStream):
    """A byte stream cut into slices that each wait for their tokens."""

    def __init__(self, inner: httpx.SyncByteStream, bucket: TokenBucket) -> None:
        self._inner = inner
        self._bucket = bucket

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            # h11 sends any buffer (and copies it once): views are not copied here first.
            yield from cast("Iterator[bytes]", paced(self._bucket, chunk))

    def close(self) -> None:
        self._inner.close()


class ThrottledTransport(httpx.BaseTransport):
    """Wraps a transport so request bodies and response bodies respect the limits."""

    def __init__(self, inner: httpx.BaseTransport, upload: TokenBucket, download: TokenBucket) -> None:
        self.inner = inner
        self.upload = upload
        self.download = download

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if (
            isinstance(request.stream, httpx.SyncByteStream)
            and request.headers.get("content-length", "0") != "0"
        ):
            request.stream = _ThrottledStream(request.stream, self.upload)
        response = self.inner.handle_request(request)
        if isinstance(response.stream, httpx.SyncByteStream):
            response.stream = _ThrottledStream(response.stream, self.download)
        return response

    def close(self) -> None:
        self.inner.close()
