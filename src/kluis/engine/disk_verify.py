"""Structural checks of disk recovery points, for ``verify``.

Every map segment of every disk must load (decrypt, match its id) and decode to
the entry count the manifest implies, and every block id it names must be in the
index. Segments shared by several points are checked once per run.
"""

from __future__ import annotations

from typing import Any

from kluis.catalog import KluisError
from kluis.engine.blockmap import disks_of, stored_ids
from kluis.engine.disk_restore import load_segment
from kluis.engine.repository import Repository

# Missing blocks named per disk; the rest are counted in the affected points anyway.
_MAX_REPORTED = 10


def check_disk_point(
    repo: Repository,
    point_id: str,
    manifest: dict[str, Any],
    seen_segments: set[bytes] | None = None,
) -> list[tuple[KluisError, set[bytes]]]:
    """Problems found in the disks of one point, each with the blob ids it concerns."""
    problems: list[tuple[KluisError, set[bytes]]] = []
    seen = seen_segments if seen_segments is not None else set()
    try:
        disks = disks_of(point_id, manifest)
    except KluisError as exc:
        return [(exc, set())]
    for disk in disks:
        missing: set[bytes] = set()
        for seg, seg_id in enumerate(disk.segments):
            if seg_id in seen:
                continue
            try:
                raw = load_segment(repo, point_id, disk, seg)
            except KluisError as exc:
                problems.append((exc, {seg_id}))
                continue
            seen.add(seg_id)
            missing.update(i for i in stored_ids(raw) if i not in repo.index)
        for blob in sorted(missing)[:_MAX_REPORTED]:
            problems.append(
                (
                    KluisError(
                        "RepoBlobMissing",
                        blob=blob.hex(),
                        where=f"disk {disk.name} of recovery point {point_id}",
                    ),
                    {blob},
                )
            )
        if len(missing) > _MAX_REPORTED:
            problems.append(
                (
                    KluisError(
                        "RepoBlobMissing",
                        blob=f"{len(missing) - _MAX_REPORTED} more",
                        where=f"disk {disk.name} of recovery point {point_id}",
                    ),
                    missing,
                )
            )
    return problems
