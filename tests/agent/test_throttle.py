"""Bandwidth limits: which limit applies when, how fast the bucket lets bytes through, rate parsing."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from kluis.agent.config import Bandwidth, parse_rate
from kluis.agent.throttle import SLICE, RateSchedule, ThrottledTransport, TokenBucket, paced
from kluis.stores.vault import RawTransfers

MONDAY = dt.datetime(2026, 11, 23)  # a Monday


def test_work_hours_and_off_hours() -> None:
    bw = Bandwidth(work_hours_limit=1_000, off_hours_limit=9_000, work_start="08:00", work_end="18:00")
    schedule = RateSchedule(bw)
    assert schedule.limit(MONDAY.replace(hour=8)) == 1_000
    assert schedule.limit(MONDAY.replace(hour=17, minute=59)) == 1_000
    assert schedule.limit(MONDAY.replace(hour=18)) == 9_000
    assert schedule.limit(MONDAY.replace(hour=7, minute=59)) == 9_000
    assert schedule.limit((MONDAY + dt.timedelta(days=5)).replace(hour=10)) == 9_000  # Saturday
    night = RateSchedule(
        Bandwidth(work_hours_limit=5, off_hours_limit=0, work_start="22:00", work_end="06:00")
    )
    assert night.limit(MONDAY.replace(hour=23)) == 5 and night.limit(MONDAY.replace(hour=3)) == 5
    assert night.limit(MONDAY.replace(hour=12)) == 0


def test_bucket_holds_the_rate_and_unlimited_is_free() -> None:
    bucket = TokenBucket(RateSchedule(Bandwidth(work_hours_limit=2_000_000, off_hours_limit=2_000_000)))
    started = time.monotonic()
    for _ in range(16):
        bucket.consume(64 * 1024)  # 1 MiB in slices, at 2 MB/s
    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 0.9
    free = TokenBucket(RateSchedule(Bandwidth()))
    started = time.monotonic()
    free.consume(10**9)
    assert time.monotonic() - started < 0.05


class _Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the vault speaks

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(1_000_000))
        self.end_headers()
        self.wfile.write(bytes(1_000_000))

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def sink() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()


def test_transport_throttles_request_bodies(sink: str) -> None:
    schedule = RateSchedule(Bandwidth(work_hours_limit=1_000_000, off_hours_limit=1_000_000))
    up, down = TokenBucket(schedule), TokenBucket(schedule)
    with httpx.Client(transport=ThrottledTransport(httpx.HTTPTransport(), up, down)) as client:
        started = time.monotonic()
        assert client.put(sink, content=b"x" * 600_000).text == "ok\n"
        # 600 kB at 1 MB/s less the 0.2 s burst the bucket may have saved up: at least 0.4 s.
        assert 0.38 < time.monotonic() - started < 1.2
    assert up.waited > 0.3 and down.waited == 0


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("0", 0),
        ("500k", 500_000),
        ("2MiB", 2 * 1024 * 1024),
        ("1.5 MB/s", 1_500_000),
        (2048, 2048),
        ("3G", 3 * 10**9),
    ],
)
def test_rates(text: str | int, rate: int) -> None:
    assert parse_rate(text) == rate


def test_bad_rates() -> None:
    for bad in ("fast", "-1", "2 parsecs"):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_raw_reads_respect_the_download_limit(sink: str) -> None:
    """Pack reads over http.client pass the download bucket like httpx's transport does."""
    bucket = TokenBucket(RateSchedule(Bandwidth(work_hours_limit=2_000_000, off_hours_limit=2_000_000)))
    raw = RawTransfers(sink, {}, timeout=10, before_body=bucket.consume)
    try:
        started = time.monotonic()
        assert raw.get("/", {}) == bytes(1_000_000)
        assert raw.get("/", {}) == bytes(1_000_000)
        elapsed = time.monotonic() - started
        assert raw.served == 2
        assert 0.4 < elapsed < 1.8  # 2 MB at 2 MB/s, the first burst free
    finally:
        raw.close()


def test_raw_uploads_respect_the_upload_limit(sink: str) -> None:
    """Packs sent over http.client are paced by the upload bucket; without a limit they go whole."""
    bucket = TokenBucket(RateSchedule(Bandwidth(work_hours_limit=2_000_000, off_hours_limit=2_000_000)))
    pieces: list[int] = []

    def pace(body: memoryview) -> Iterator[bytes | memoryview]:
        for piece in paced(bucket, body):
            pieces.append(len(piece))
            yield piece

    raw = RawTransfers(sink, {}, timeout=10, pace=pace)
    try:
        started = time.monotonic()
        assert raw.put("/", memoryview(bytes(1_000_000)), {})
        assert raw.put("/", memoryview(bytes(1_000_000)), {})
        elapsed = time.monotonic() - started
        assert raw.served == 2 and sum(pieces) == 2_000_000
        assert max(pieces) == SLICE
        assert 0.4 < elapsed < 1.8  # 2 MB at 2 MB/s, the first burst free
    finally:
        raw.close()
    free = TokenBucket(RateSchedule(Bandwidth()))
    assert [len(p) for p in paced(free, memoryview(bytes(3_000_000)))] == [3_000_000]
