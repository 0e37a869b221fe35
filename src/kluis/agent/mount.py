"""Mount markers: how the agent knows that a recovery point of an item is mounted.

As in the seeds, a scheduled backup of an item waits while one of its recovery
points is mounted for browsing. ``kluis mount`` records each mount in the agent's
scratch folder, and the agent's job runner asks :func:`active_mounts` before it
starts a backup of that item.

One marker per mount, written by the process that serves the mount and removed
when it unmounts::

    <scratch>/mounts/<item id>.<pid>.json
    {"item": "<item id>", "point": "<point id>", "mountpoint": "/abs/dir",
     "pid": 1234, "started_at": "2026-01-01T10:00:00+00:00", "idle_timeout": 600}

A marker whose process is gone, or whose mountpoint is no longer a mount, is stale
(the process was killed): :func:`active_mounts` ignores it and deletes it. Only the
standard library is used, so the agent can import this without the ``mount`` extra.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

MOUNTS_DIR = "mounts"


@dataclass(frozen=True)
class MountMarker:
    """One live mount of a recovery point."""

    item: str
    point: str
    mountpoint: str
    pid: int
    started_at: str
    idle_timeout: float
    path: str = ""


def marker_path(scratch: Path, item_id: str, pid: int | None = None) -> Path:
    """Where the marker of a mount of ``item_id`` by process ``pid`` lives."""
    return scratch / MOUNTS_DIR / f"{item_id}.{pid or os.getpid()}.json"


def write_marker(scratch: Path, item_id: str, point_id: str, mountpoint: str, idle_timeout: float) -> Path:
    """Record that this process serves a mount of ``item_id`` (atomically, mode 0644)."""
    path = marker_path(scratch, item_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    marker = MountMarker(
        item=item_id,
        point=point_id,
        mountpoint=os.path.abspath(mountpoint),
        pid=os.getpid(),
        started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        idle_timeout=idle_timeout,
    )
    body = {k: v for k, v in asdict(marker).items() if k != "path"}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(body) + "\n")
    os.replace(tmp, path)
    return path


def remove_marker(path: Path) -> None:
    """Forget a mount (it ended)."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it is just not ours
    return True


def _mounted(mountpoint: str) -> bool:
    try:
        return os.path.ismount(mountpoint)
    except OSError:
        return False


def active_mounts(scratch: Path, item_id: str | None = None) -> list[MountMarker]:
    """The live mounts recorded in ``scratch`` (of one item when given); stale markers are removed."""
    folder = scratch / MOUNTS_DIR
    pattern = f"{item_id}.*.json" if item_id else "*.json"
    found: list[MountMarker] = []
    for path in sorted(folder.glob(pattern)):
        try:
            raw = json.loads(path.read_text())
            marker = MountMarker(
                item=str(raw["item"]),
                point=str(raw["point"]),
                mountpoint=str(raw["mountpoint"]),
                pid=int(raw["pid"]),
                started_at=str(raw.get("started_at", "")),
                idle_timeout=float(raw.get("idle_timeout", 0)),
                path=str(path),
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written, or not ours
        if item_id is not None and marker.item != item_id:
            continue
        if not _alive(marker.pid) or not _mounted(marker.mountpoint):
            remove_marker(path)
            continue
        found.append(marker)
    return found
