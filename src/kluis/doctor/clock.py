"""The machine's clock against the vault's: the vault's ``Date`` header compared with local time.

The request's local send and receive times bracket the moment the vault stamped its
answer, so the offset is measured against their midpoint. ``Date`` has whole
seconds (the vault rounds down), hence the half second added back. Tokens, credential
files and schedules all carry times; a clock off by more than ``LIMIT`` seconds is a
failure, one off by more than ``WARN_AFTER`` seconds a warning.
"""

from __future__ import annotations

from kluis.catalog import KluisError
from kluis.doctor.context import MachineContext
from kluis.doctor.framework import Check, Result, catalog_checks, failed, passed, skipped, warned

LIMIT = 300
WARN_AFTER = 60
FIX = "switch on time synchronisation: `timedatectl set-ntp true`, then check `timedatectl status`"


def clock_offset(ctx: MachineContext) -> tuple[float, float] | None:
    """(offset of the vault's clock from ours in seconds, round trip), or None without a Date header."""
    answer = ctx.ask("/health")
    if answer.date is None:
        return None
    middle = (answer.sent + answer.received) / 2
    return answer.date + 0.5 - middle, answer.received - answer.sent


def check_clock(ctx: MachineContext) -> Result:
    """ClockSkew when this machine's clock is off the vault's."""
    answer = ctx.ask("/health")
    if answer.error is not None and answer.status == 0:
        return failed(answer.error, answer.error.actions[0] if answer.error.actions else FIX)
    measured = clock_offset(ctx)
    if measured is None:
        return skipped("the vault's answer carries no Date header, so its clock cannot be read")
    offset, rtt = measured
    # Our clock minus the vault's, as the message says "this machine's clock is N seconds off".
    ours = -offset
    details = {"offset_seconds": round(ours, 1), "round_trip_seconds": round(rtt, 3), "limit": LIMIT}
    if abs(ours) > LIMIT:
        return failed(KluisError("ClockSkew", offset=f"{ours:+.0f}", limit=LIMIT), FIX, details=details)
    if abs(ours) > WARN_AFTER:
        return warned(KluisError("ClockSkew", offset=f"{ours:+.0f}", limit=LIMIT), FIX, details=details)
    return passed(f"this machine's clock is within {max(abs(ours), 1):.0f} s of the vault's", details=details)


CHECKS: list[Check[MachineContext]] = [
    Check("clock-skew", "Clock matches the vault", check_clock, ("ClockSkew",), requires=("vault-http",)),
]
CATALOG_CHECKS = catalog_checks(CHECKS)
