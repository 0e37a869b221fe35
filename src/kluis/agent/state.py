"""The daemon's status file in the scratch folder (``agent-state.json``).

The daemon writes it on every heartbeat and job change; ``kluis agent status`` reads
it. It also remembers which jobs were running, so a daemon that died in the middle of
a job reports that job as failed when it starts again instead of leaving it hanging.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("kluis.agent")


def read_state(path: Path) -> dict[str, Any]:
    """The last state a daemon wrote ({} when none)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class AgentState:
    """Thread-safe, atomically written status of one daemon."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.data: dict[str, Any] = read_state(path)

    def _write(self) -> None:
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.data, indent=1, default=str))
            os.replace(tmp, self.path)
        except OSError as exc:
            # A full or broken scratch folder must not stop the daemon; the job checks report it.
            log.warning("the status file %s cannot be written: %s", self.path, exc.strerror or exc)
            tmp.unlink(missing_ok=True)

    def update(self, **values: Any) -> None:
        """Set top-level fields."""
        with self._lock:
            self.data.update(values)
            self._write()

    def job_started(self, job_id: str, info: dict[str, Any]) -> None:
        """Remember a running job."""
        with self._lock:
            self.data.setdefault("running", {})[job_id] = {**info, "started": time.time()}
            self._write()

    def job_finished(self, job_id: str, outcome: dict[str, Any]) -> None:
        """Forget a running job; keep a short history of the last ones."""
        with self._lock:
            info = self.data.setdefault("running", {}).pop(job_id, {})
            history = self.data.setdefault("recent", [])
            history.insert(0, {"id": job_id, **info, "ended": time.time(), **outcome})
            del history[20:]
            self._write()

    def running(self) -> dict[str, dict[str, Any]]:
        """Jobs recorded as running."""
        with self._lock:
            return dict(self.data.get("running") or {})
