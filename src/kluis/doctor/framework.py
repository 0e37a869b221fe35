"""The check framework: a check has an id and a title and gives one verdict with the catalog error.

A check's ``run(ctx)`` returns a :class:`Result`: ``pass``, ``warn``, ``fail`` or
``skip``, the catalog error behind a warning or failure, the exact command or setting
that fixes it, and, where the repair is safe to do unasked, a :class:`Fix` that
``kluis doctor --fix`` applies. Checks run in order; a check that ``requires`` others
is skipped (naming them) unless they passed or only warned, so one broken step does
not produce a cascade of follow-on failures.
"""

from __future__ import annotations

import enum
import logging
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from kluis.catalog import KluisError
from kluis.catalog.ui import t

log = logging.getLogger("kluis.doctor")
C = TypeVar("C")


class Verdict(enum.StrEnum):
    """The outcome of one check."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


class NotApplicable(Exception):
    """Raised by a check that cannot apply here; the run records a skip with this reason."""


@dataclass
class Fix:
    """A repair ``--fix`` may apply by itself: safe, and undone by nothing a user wanted."""

    id: str
    description: str
    # Does the repair and returns what it did in one sentence; raises KluisError when it could not.
    apply: Callable[[], str]


@dataclass
class Result:
    """What one check found."""

    verdict: Verdict
    summary: str
    error: KluisError | None = None
    fix: str | None = None
    auto_fix: Fix | None = None
    details: dict[str, Any] = field(default_factory=dict)


def passed(summary: str, **details: Any) -> Result:
    """A check that found nothing wrong."""
    return Result(Verdict.PASS, summary, details=details)


def skipped(reason: str, **details: Any) -> Result:
    """A check that could not apply here; ``reason`` says why."""
    return Result(Verdict.SKIP, reason, details=details)


def failed(
    error: KluisError,
    fix: str,
    *,
    summary: str | None = None,
    auto_fix: Fix | None = None,
    details: dict[str, Any] | None = None,
) -> Result:
    """A failure: its catalog error and the command or setting that fixes it."""
    return Result(Verdict.FAIL, summary or error.message, error, fix, auto_fix, details or {})


def warned(
    error: KluisError,
    fix: str,
    *,
    summary: str | None = None,
    auto_fix: Fix | None = None,
    details: dict[str, Any] | None = None,
) -> Result:
    """Something to act on that does not stop backups yet."""
    return Result(Verdict.WARN, summary or error.message, error, fix, auto_fix, details or {})


@dataclass(frozen=True)
class Check(Generic[C]):
    """One health check: ``codes`` are the catalog codes its results can carry."""

    id: str
    title: str
    run: Callable[[C], Result]
    codes: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()


def catalog_checks(checks: Iterable[Check[Any]]) -> dict[str, tuple[str, ...]]:
    """The ``CATALOG_CHECKS`` mapping of a module: check id -> the codes it reports."""
    return {check.id: check.codes for check in checks if check.codes}


@dataclass
class Outcome:
    """A check with its result and how long it took."""

    check: Check[Any]
    result: Result
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` shape of one check."""
        r = self.result
        return {
            "id": self.check.id,
            "title": self.check.title,
            "verdict": str(r.verdict),
            "summary": r.summary,
            "error": r.error.to_dict() if r.error is not None else None,
            "fix": r.fix,
            "auto_fix": r.auto_fix.description if r.auto_fix is not None else None,
            "details": r.details,
            "seconds": round(self.seconds, 3),
        }


def _crashed(check: Check[Any], exc: BaseException) -> Result:
    reason = f"{type(exc).__name__}: {exc}"
    log.debug("check %s crashed:\n%s", check.id, "".join(traceback.format_exception(exc)))
    error = KluisError("DoctorCheckFailed", check=check.id, reason=reason)
    return failed(error, "Run `kluis doctor --json` and report its output with the agent's log.")


def run_checks(checks: Sequence[Check[C]], ctx: C) -> list[Outcome]:
    """Run ``checks`` in order against ``ctx``; never raises for a check's own failure."""
    outcomes: list[Outcome] = []
    by_id: dict[str, Outcome] = {}
    for check in checks:
        started = time.monotonic()
        blocked = [
            t(by_id[r].check.title)
            for r in check.requires
            if r in by_id and by_id[r].result.verdict not in (Verdict.PASS, Verdict.WARN)
        ]
        if blocked:
            result = skipped(t("not checked: needs {checks} to pass first", checks=", ".join(blocked)))
        else:
            try:
                result = check.run(ctx)
            except NotApplicable as exc:
                result = skipped(str(exc))
            except KluisError as exc:
                # A check may raise the catalog error it found; its first action is the fix.
                result = failed(exc, exc.actions[0] if exc.actions else "")
            except Exception as exc:
                result = _crashed(check, exc)
        outcome = Outcome(check, result, time.monotonic() - started)
        outcomes.append(outcome)
        by_id[check.id] = outcome
    return outcomes


@dataclass
class FixReport:
    """What ``--fix`` did for one check."""

    check: str
    fix: str
    ok: bool
    message: str
    error: KluisError | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` shape."""
        return {
            "check": self.check,
            "fix": self.fix,
            "ok": self.ok,
            "message": self.message,
            "error": self.error.to_dict() if self.error is not None else None,
        }


def apply_fixes(outcomes: Sequence[Outcome]) -> list[FixReport]:
    """Apply every safe fix of a warning or failure, once per fix id, in check order."""
    reports: list[FixReport] = []
    done: set[str] = set()
    for outcome in outcomes:
        fix = outcome.result.auto_fix
        if fix is None or outcome.result.verdict not in (Verdict.WARN, Verdict.FAIL) or fix.id in done:
            continue
        done.add(fix.id)
        try:
            message = fix.apply()
        except KluisError as exc:
            reports.append(FixReport(outcome.check.id, fix.id, False, exc.message, exc))
        except Exception as exc:
            error = KluisError("DoctorCheckFailed", check=f"{outcome.check.id} (--fix)", reason=str(exc))
            reports.append(FixReport(outcome.check.id, fix.id, False, error.message, error))
        else:
            reports.append(FixReport(outcome.check.id, fix.id, True, message))
    return reports


@dataclass
class Report:
    """A whole doctor run: the checks in order and the fixes applied."""

    mode: str
    outcomes: list[Outcome]
    fixes: list[FixReport] = field(default_factory=list)
    before_fixes: list[Outcome] = field(default_factory=list)

    def count(self, verdict: Verdict) -> int:
        """How many checks ended with ``verdict``."""
        return sum(1 for o in self.outcomes if o.result.verdict is verdict)

    @property
    def ok(self) -> bool:
        """No check failed (warnings and skips do not fail a run)."""
        return self.count(Verdict.FAIL) == 0

    @property
    def exit_code(self) -> int:
        """0 when nothing failed, 1 when any check failed."""
        return 0 if self.ok else 1

    def outcome(self, check_id: str) -> Outcome:
        """The outcome of one check by id."""
        for o in self.outcomes:
            if o.check.id == check_id:
                return o
        raise KeyError(check_id)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document."""
        data: dict[str, Any] = {
            "mode": self.mode,
            "ok": self.ok,
            "counts": {str(v): self.count(v) for v in Verdict},
            "checks": [o.to_dict() for o in self.outcomes],
            "fixes": [f.to_dict() for f in self.fixes],
        }
        if self.before_fixes:
            data["before_fixes"] = [o.to_dict() for o in self.before_fixes]
        return data
