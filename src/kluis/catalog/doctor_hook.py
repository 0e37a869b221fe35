"""Which ``kluis doctor`` check detects which catalog code: the hook the doctor fills in.

The catalog does not depend on the doctor. A doctor module (any of
``DOCTOR_MODULES`` that exists) declares what it checks with a module-level mapping::

    CATALOG_CHECKS: dict[str, tuple[str, ...]] = {
        "scratch-folder": ("SalLowDiskSpace", "ScratchFolderInvalid", ...),
    }

(check name -> the codes that check can report). The coverage report shows a check
for a code only when such a module really declares it; an entry's ``doctor_check``
field is the check it is planned for and is shown as planned until then.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping

DOCTOR_MODULES = ("kluis.doctor", "kluis.agent.doctor", "kluis.vault.doctor", "kluis.cli.doctor")


def doctor_checks(modules: Iterable[str] = DOCTOR_MODULES) -> dict[str, list[str]]:
    """Code -> names of the doctor checks that detect it, from every doctor module present."""
    found: dict[str, list[str]] = {}
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # Only a missing doctor module is expected; a broken one must surface.
            if exc.name is not None and name.startswith(exc.name):
                continue
            raise
        checks: Mapping[str, Iterable[str]] = getattr(module, "CATALOG_CHECKS", {})
        for check, codes in checks.items():
            for code in codes:
                names = found.setdefault(code, [])
                if check not in names:
                    names.append(check)
    return found
