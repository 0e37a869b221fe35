"""The failed-files log: one line per file a backup skipped, with its catalog code."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path

from kluis.catalog import KluisError


class FailedFilesLog:
    """Appends JSON lines ``{time, path, code, message}`` to a log in the scratch folder."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.count = 0
        self.first: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")

    def add(self, error: KluisError, path: str) -> None:
        """Record one skipped file."""
        record = {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "path": path,
            "code": error.code,
            "severity": str(error.entry.severity),
            "message": error.message,
        }
        with self._lock:
            self.count += 1
            if len(self.first) < 100:
                self.first.append(record)
            if self._file is not None:
                self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        """Flush and close the log."""
        if self._file is not None:
            self._file.close()
            self._file = None
