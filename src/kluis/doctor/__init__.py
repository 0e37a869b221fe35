"""``kluis doctor``: the source documents' step-by-step health checks, run for you.

On a machine (:func:`run_machine`), in the seeds' order: the machine (reboot pending);
the agent service running, heartbeating and current; the agent's configuration and the
privacy of its secrets; the path to the vault step by step (DNS, TCP, proxy, TLS, HTTP,
authentication); the clock against the vault's; the registration; the KEK file and
whether it unlocks the vault's key sets; the scratch folder (space, temporary area,
checksum stores); extension handler states; snapshot prerequisites; the extension
directory; jobs in progress; restore point collections.

On the vault server (:func:`run_vault`): configuration, database, migrations, store,
the scheduler lease, unresponsive agents and items whose backups keep failing.

Every warning and failure carries its catalog error and the command or setting that
fixes it; ``fix=True`` applies the safe fixes (restart the agent, reinstall an
extension, delete expired instant recovery points), then checks again. Each module
declares the catalog codes its checks report in ``CATALOG_CHECKS``; the mapping here
merges them for the coverage report (``kluis.catalog.doctor_hook``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kluis.doctor import (
    agentconfig,
    clock,
    credentials,
    extensions,
    jobs,
    network,
    points,
    scratch,
    server,
    service,
    snapshot,
)
from kluis.doctor.context import MachineContext
from kluis.doctor.framework import Check, Outcome, Report, Result, Verdict, apply_fixes, run_checks
from kluis.doctor.server import VaultDoctorContext


def _pick(checks: list[Check[Any]], *ids: str) -> list[Check[Any]]:
    by_id = {c.id: c for c in checks}
    return [by_id[i] for i in ids]


MACHINE_CHECKS: list[Check[MachineContext]] = [
    *service.CHECKS,
    *agentconfig.CHECKS,
    *network.CHECKS,
    *clock.CHECKS,
    *credentials.CHECKS,
    *scratch.CHECKS,
    *_pick(extensions.CHECKS, "extension-handlers"),
    *snapshot.CHECKS,
    *_pick(extensions.CHECKS, "extension-dir"),
    *jobs.CHECKS,
    *points.CHECKS,
]
VAULT_CHECKS: list[Check[VaultDoctorContext]] = list(server.CHECKS)

CATALOG_CHECKS: dict[str, tuple[str, ...]] = {}
for _module in (
    service,
    agentconfig,
    network,
    clock,
    credentials,
    scratch,
    extensions,
    snapshot,
    jobs,
    points,
    server,
):
    CATALOG_CHECKS.update(_module.CATALOG_CHECKS)


def run_machine(config_dir: Path, *, fix: bool = False, hostname: str | None = None) -> Report:
    """Every machine check of the agent configured in ``config_dir``; ``fix`` repairs, then re-checks."""
    ctx = MachineContext(config_dir, hostname)
    try:
        outcomes = run_checks(MACHINE_CHECKS, ctx)
        # The fixes may still ask the vault (an extension package), through the same connection.
        fixes = apply_fixes(outcomes) if fix else []
    finally:
        ctx.close()
    if not fixes:
        return Report("machine", outcomes)
    again = MachineContext(config_dir, hostname)
    try:
        return Report("machine", run_checks(MACHINE_CHECKS, again), fixes, before_fixes=outcomes)
    finally:
        again.close()


def run_vault(config_path: Path) -> Report:
    """Every vault check against the vault configured in ``config_path`` (read only)."""
    ctx = VaultDoctorContext(config_path)
    try:
        return Report("vault", run_checks(VAULT_CHECKS, ctx))
    finally:
        ctx.close()


__all__ = [
    "CATALOG_CHECKS",
    "MACHINE_CHECKS",
    "VAULT_CHECKS",
    "Check",
    "Outcome",
    "Report",
    "Result",
    "Verdict",
    "run_machine",
    "run_vault",
]
