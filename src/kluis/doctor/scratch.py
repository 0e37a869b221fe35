"""The scratch folder, with the agent's own checks (``kluis.agent.scratch``) run as a job would run them.

``scratch-folder``: it exists, is a directory, is writable, and its volume has the
free space the next backup of the largest item needs (5% of its last backup, at
least 16 MiB): ScratchFolderInvalid, SalLowDiskSpace. ``scratch-temp-area``: the
temporary area takes a sparse file (SalVhdInitializationError). ``checksum-store``:
each item's checksum store opens and reads back (SalChecksumStoreInitializationFailed,
SalBitmapError); a store a running job has open is left alone.
"""

from __future__ import annotations

from pathlib import Path

from kluis.agent import scratch
from kluis.catalog import KluisError
from kluis.doctor.context import MachineContext
from kluis.doctor.framework import Check, Result, catalog_checks, failed, passed, warned


def item_ids(ctx: MachineContext) -> list[str]:
    """Ids of the items with state in the scratch folder."""
    items = ctx.layout.root / "items"
    try:
        return sorted(p.name for p in items.iterdir() if p.is_dir())
    except OSError:
        return []


def _fix(error: KluisError, root: Path) -> str:
    if error.code == "SalLowDiskSpace":
        return (
            f"free space on the volume of {root} (`df -h {root}`), or move the scratch folder to a"
            " bigger volume: kluis agent config set scratch DIR"
        )
    if error.code == "ScratchFolderInvalid":
        return f"make {root} a directory writable by root (`mkdir -p {root} && chmod 0700 {root}`)"
    return error.actions[0] if error.actions else "kluis agent config set scratch DIR"


def check_scratch_folder(ctx: MachineContext) -> Result:
    """Exists, writable, enough free space for the largest item's next backup."""
    layout = ctx.layout
    sizes = [scratch.last_backup_bytes(layout, item) or 0 for item in item_ids(ctx)]
    protected = max(sizes, default=0)
    try:
        free, needed = scratch.check_folder(layout.root, protected)
    except KluisError as exc:
        return failed(exc, _fix(exc, layout.root))
    fstype = scratch.filesystem_type(layout.root)
    if fstype in scratch.VOLATILE_FS:
        error = KluisError("ScratchFolderUnsupportedFs", path=str(layout.root), fstype=fstype)
        return warned(
            error, "kluis agent config set scratch DIR (a folder on a local disk; stop the agent first)"
        )
    return passed(
        f"{layout.root}: {scratch.human(free)} free, at least {scratch.human(needed)} needed",
        free=free,
        needed=needed,
    )


def check_temp_area(ctx: MachineContext) -> Result:
    """The temporary area takes a sparse file and hands its space back."""
    try:
        scratch.check_temp_area(ctx.layout)
    except KluisError as exc:
        return failed(exc, _fix(exc, ctx.layout.root))
    return passed(f"{ctx.layout.tmp} works")


def check_checksum_stores(ctx: MachineContext) -> Result:
    """Every item's checksum store opens and reads back, except those a running job has open."""
    busy = {str(info.get("item")) for info in (ctx.state().get("running") or {}).values() if info.get("item")}
    checked: list[str] = []
    for item in item_ids(ctx):
        path = ctx.layout.checksum_store(item)
        if not path.exists() or item in busy:
            continue
        try:
            scratch.open_checksum_store(path).close()
        except KluisError as exc:
            fix = (
                f"stop the agent, delete {path} (the next backup of the item rebuilds it by reading"
                " every file once), then restart the agent"
            )
            return failed(exc, fix)
        checked.append(item)
    in_use = f"; {len(busy)} in use by running jobs" if busy else ""
    return passed(f"{len(checked)} checksum store(s) read back{in_use}", checked=checked)


CHECKS: list[Check[MachineContext]] = [
    Check(
        "scratch-folder",
        "Scratch folder and free space",
        check_scratch_folder,
        ("ScratchFolderInvalid", "SalLowDiskSpace", "ScratchFolderUnsupportedFs"),
    ),
    Check(
        "scratch-temp-area",
        "Scratch folder temporary area",
        check_temp_area,
        ("SalVhdInitializationError",),
        requires=("scratch-folder",),
    ),
    Check(
        "checksum-store",
        "Checksum stores readable",
        check_checksum_stores,
        ("SalChecksumStoreInitializationFailed", "SalBitmapError"),
        requires=("scratch-folder",),
    ),
]
CATALOG_CHECKS = catalog_checks(CHECKS)
