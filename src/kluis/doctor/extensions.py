"""Extensions: their handler states (seed 004, steps 3 and 4) and a directory they can run from.

``extension-handlers`` reads each extension's handler state (in the scratch folder's
``extensions/``, where the agent installs them) and re-hashes the files of the ones
that succeeded: ``failed``, stuck in ``transitioning`` or damaged files are
ExtensionHandlerFailed; a version other than the one the vault serves now is a warning
(the next disk backup would install it). The fix is the seeds' one, done at once
instead of at the next backup: uninstall and install again through the
ExtensionManager, with the package the vault serves (checksum checked), or this
agent's own copy of the snapshot extension when the vault cannot be reached.

``extension-dir`` asks the directory the same two questions the manager asks before
installing: is its file system mounted ``noexec`` (ExtensionDirNoexec), and does a
small program placed there run (ExtensionBlockedBySecurityPolicy: SELinux, AppArmor,
fapolicyd, the seeds' application control).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kluis.agent.extensions.snapshot import (
    EXTENSION_NAME,
    ExtensionManager,
    HandlerState,
    build_snapshot_extension_package,
)
from kluis.agent.extensions.snapshot.mounts import mount_of
from kluis.catalog import KluisError
from kluis.doctor.context import MachineContext
from kluis.doctor.framework import Check, Fix, Result, catalog_checks, failed, passed, warned

STUCK_AFTER = 600.0  # seconds an install may stay "transitioning"


def manager(ctx: MachineContext) -> ExtensionManager:
    """The agent's extension manager, configured as the agent configures it."""
    return ExtensionManager(
        ctx.extensions_dir,
        machine=ctx.machine,
        enabled=ctx.extensions_enabled,
        config_path=str(ctx.config_path),
    )


def _constant(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def served(ctx: MachineContext, name: str) -> dict[str, Any] | None:
    """What the vault serves for extension ``name`` (version, sha256, url), or None when unknown."""
    try:
        answer = ctx.ask(f"/extensions/{name}")
    except KluisError:
        return None
    if answer.error is not None or not isinstance(answer.body, dict) or "version" not in answer.body:
        return None
    return answer.body


def _reinstall_one(ctx: MachineContext, mgr: ExtensionManager, name: str) -> str:
    info = served(ctx, name)
    if info is not None:
        url = str(info["url"])
        mgr.uninstall(name)
        state = mgr.install(
            name,
            str(info["version"]),
            str(info["sha256"]),
            lambda: ctx.download(url),
            url=ctx.cfg.vault_url + url,
        )
        return f"reinstalled {name} {state.version} from the vault ({state.state})"
    if name != EXTENSION_NAME:
        # Only the vault has other packages: removing it makes the next backup install it.
        mgr.uninstall(name)
        return f"uninstalled {name} (the vault cannot be asked; the next backup installs it again)"
    with tempfile.TemporaryDirectory(prefix="kluis-doctor-") as tmp:
        path, sha256, version = build_snapshot_extension_package(tmp)
        package = path.read_bytes()
    mgr.uninstall(name)
    state = mgr.install(name, version, sha256, _constant(package), url=f"the agent's own package {path.name}")
    return f"reinstalled {name} {state.version} from this agent's own copy (the vault did not answer)"


def reinstall(ctx: MachineContext, names: list[str]) -> str:
    """Uninstall and install again, as the next disk backup would, but now."""
    mgr = manager(ctx)
    return "; ".join(_reinstall_one(ctx, mgr, name) for name in names)


def _problem(
    ctx: MachineContext, mgr: ExtensionManager, hs: HandlerState, now: float
) -> tuple[str, bool] | None:
    """(what is wrong, whether it stops backups) for one extension, or None."""
    if hs.state == "failed":
        return (hs.message or hs.code or "its last operation failed"), True
    if hs.state == "transitioning":
        if now - hs.updated > STUCK_AFTER:
            return f"its installation started {now - hs.updated:.0f} s ago and never finished", True
        return None
    damage = mgr.verify(hs.name)
    if damage is not None:
        return f"the installed files are damaged: {damage}", True
    info = served(ctx, hs.name)
    if info is not None and info["version"] != hs.version:
        return f"the vault serves version {info['version']}", False
    return None


def check_extension_handlers(ctx: MachineContext) -> Result:
    """Every installed extension succeeded, is intact and current."""
    mgr = manager(ctx)
    states = mgr.states()
    if not states:
        return passed(f"no extension installed in {mgr.dir} yet; the first disk backup installs them")
    broken: list[tuple[HandlerState, str, bool]] = []
    for hs in states:
        problem = _problem(ctx, mgr, hs, ctx.now)
        if problem is not None:
            broken.append((hs, *problem))
    if not broken:
        listed = ", ".join(f"{s.name} {s.version} ({s.state})" for s in states)
        return passed(f"installed and intact: {listed}")
    names = [hs.name for hs, _, _ in broken]
    fix = Fix("reinstall-extensions", f"reinstall {', '.join(names)}", lambda: reinstall(ctx, names))
    hs, reason, blocking = next((b for b in broken if b[2]), broken[0])
    error = KluisError(
        "ExtensionHandlerFailed",
        extension=hs.name,
        version=hs.version,
        machine=ctx.machine,
        state=hs.state,
        reason=reason,
    )
    how = (
        f"kluis doctor --fix --config-dir {ctx.config_dir} (reinstalls {', '.join(names)} now), or"
        f" `kluis extension uninstall {names[0]}` and the next disk backup installs it"
    )
    details = {"broken": [{"name": b.name, "state": b.state, "reason": r} for b, r, _ in broken]}
    if blocking:
        return failed(error, how, auto_fix=fix, details=details)
    return warned(error, how, auto_fix=fix, details=details)


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_extension_dir(ctx: MachineContext) -> Result:
    """Programs can run from the extension directory: no noexec mount, no denying security policy."""
    mgr = manager(ctx)
    try:
        if mgr.dir.is_dir():
            mgr.check_executable()
        elif os.statvfs(_existing(mgr.dir)).f_flag & os.ST_NOEXEC:
            raise KluisError("ExtensionDirNoexec", path=str(mgr.dir))
    except KluisError as exc:
        if exc.code == "ExtensionDirNoexec":
            mountpoint = mount_of(_existing(mgr.dir)).mountpoint
            fix = (
                f"mount {mountpoint} without noexec (`mount -o remount,exec {mountpoint}` and drop"
                " noexec from its /etc/fstab line), or move the scratch folder to a file system that"
                " allows programs: kluis agent config set scratch DIR"
            )
        else:
            fix = (
                f"allow programs in {mgr.dir} in the security policy (SELinux: `ausearch -m avc -ts"
                " recent`; AppArmor: `aa-status`; fapolicyd: `fapolicyd-cli --list`)"
            )
        return failed(exc, fix)
    if not mgr.dir.is_dir():
        return passed(f"{mgr.dir} does not exist yet; its file system allows programs to run")
    return passed(f"programs run from {mgr.dir}")


CHECKS: list[Check[MachineContext]] = [
    Check(
        "extension-handlers",
        "Extension handler states",
        check_extension_handlers,
        ("ExtensionHandlerFailed",),
    ),
    Check(
        "extension-dir",
        "Extension directory (noexec, permissions)",
        check_extension_dir,
        ("ExtensionDirNoexec", "ExtensionBlockedBySecurityPolicy"),
    ),
]
CATALOG_CHECKS = catalog_checks(CHECKS)
