"""The catalog's shape: unique codes and anchors, required codes, sane fields, the seed map."""

from __future__ import annotations

import string

import pytest

from kluis.catalog import CatalogEntry, Severity, all_entries, lookup
from kluis.catalog.entry import anchor_for, placeholders
from kluis.catalog.seedmap import SEED_CONDITIONS

# Codes other parts of Kluis raise; they must exist with exactly this spelling.
REQUIRED_CODES = (
    "UserErrorBackupOperationInProgress",
    "SalLowDiskSpace",
    "SalChecksumStoreInitializationFailed",
    "SalVhdInitializationError",
    "SalBitmapError",
    "34513",
    "100110",
    "100050",
    "34506",
    "0x1FC07",
    "230006",
    "ProxyAuthenticationRequired",
    "UserErrorGuestAgentStatusUnavailable",
    "GuestAgentSnapshotTaskStatusError",
    "UserErrorRpCollectionLimitReached",
    "UserErrorKeyvaultPermissionsNotConfigured",
    "ExtensionSnapshotFailedNoNetwork",
    "ExtensionOperationFailedForManagedDisks",
    "BackUpOperationFailed",
    "UserErrorUnsupportedDiskSize",
    "UserErrorFsFreezeFailed",
    "UserErrorBcmDatasourceNotPresent",
    "UserErrorVmNotShutDown",
    "JobCancelNotSupported",
    "JobNotCancellable",
    "JobNotInProgress",
    "JobCancelFailed",
    "AuthTokenInvalid",
    "RoleForbidden",
    "MachineLimitReached",
    "OnDemandBackupLimitReached",
    "ResourceNotFound",
    "ValidationFailed",
    "InternalError",
)

# Parameters callers pass; changing them breaks code that raises these errors.
REQUIRED_PARAMS = {
    "RoleForbidden": {"role", "action", "needed"},
    "ResourceNotFound": {"kind", "name"},
    "ValidationFailed": {"reason"},
    "SalLowDiskSpace": {"path", "free", "needed"},
}


@pytest.mark.parametrize("code", REQUIRED_CODES)
def test_required_code_exists(code: str) -> None:
    assert lookup(code).code == code


def test_required_parameters() -> None:
    for code, params in REQUIRED_PARAMS.items():
        assert set(lookup(code).params) == params, code
    assert "traceback" not in lookup("InternalError").message.lower()
    assert lookup("InternalError").http_status == 500
    assert lookup("AuthTokenInvalid").http_status == 401
    assert lookup("RoleForbidden").http_status == 403
    assert lookup("ResourceNotFound").http_status == 404
    assert lookup("ValidationFailed").http_status == 422


def test_no_two_entries_share_a_code_or_anchor() -> None:
    entries = list(all_entries().values())
    by_folded: dict[str, str] = {}
    by_anchor: dict[str, str] = {}
    clashes = []
    for entry in entries:
        folded = entry.code.casefold()
        if folded in by_folded:
            clashes.append(f"{entry.code} and {by_folded[folded]} differ only in case")
        by_folded[folded] = entry.code
        if entry.anchor in by_anchor:
            clashes.append(f"{entry.code} and {by_anchor[entry.anchor]} share anchor {entry.anchor}")
        by_anchor[entry.anchor] = entry.code
    assert not clashes, "\n".join(clashes)


def test_entry_fields_are_sane() -> None:
    problems = []
    for entry in all_entries().values():
        where = entry.code
        if not entry.title or not entry.message or not entry.causes or not entry.actions:
            problems.append(f"{where}: title, message, causes and actions are all required")
        if not isinstance(entry.severity, Severity):
            problems.append(f"{where}: severity must be a Severity")
        if not 100 <= entry.http_status <= 599:
            problems.append(f"{where}: http_status {entry.http_status}")
        if not 0 <= entry.exit_code <= 255:
            problems.append(f"{where}: exit_code {entry.exit_code}")
        if entry.anchor != anchor_for(entry.code):
            problems.append(f"{where}: anchor {entry.anchor} is not derived from the code")
        for field, text in entry.texts:
            try:
                names = placeholders(text)
            except ValueError as exc:
                problems.append(f"{where} {field}: bad template ({exc})")
                continue
            for name in names:
                if not name.isidentifier():
                    problems.append(f"{where} {field}: placeholder {{{name}}} is not a plain name")
            if text != text.strip() or "  " in text:
                problems.append(f"{where} {field}: stray whitespace")
        for field, text in entry.texts[2:]:
            extra = set(placeholders(text)) - set(entry.params)
            if extra:
                problems.append(f"{where} {field}: uses {sorted(extra)} that the message does not name")
    assert not problems, "\n".join(problems)


def test_placeholders_helper() -> None:
    assert placeholders("{a} and {b} and {a}") == ("a", "b")
    assert placeholders("no braces") == ()
    with pytest.raises(ValueError):
        list(string.Formatter().parse("{unclosed"))


def test_new_fields_default_so_old_entries_keep_working() -> None:
    entry = CatalogEntry(code="X1", title="t", message="m {a}", causes=("c",), actions=("a",))
    assert entry.seed_codes == () and entry.doctor_check == "" and entry.anchor == "x1"
    assert entry.params == ("a",)


def test_seed_spelling_is_kept_as_seed_code() -> None:
    assert (
        "ExtentionOperationFailedForManagedDisks"
        in lookup("ExtensionOperationFailedForManagedDisks").seed_codes
    )
    assert "BackUpOperationFailedV2" in lookup("BackUpOperationFailed").seed_codes
    assert "407" in lookup("ProxyAuthenticationRequired").seed_codes


def test_seed_map_points_at_real_entries() -> None:
    entries = all_entries()
    problems = []
    for cond in SEED_CONDITIONS:
        label = f"seed {cond.seed}: {cond.condition}"
        if cond.seed not in {"000", "001", "002", "003", "004"}:
            problems.append(f"{label}: unknown seed")
        if cond.code is None:
            if not cond.not_applicable:
                problems.append(f"{label}: no code and no reason why it is not applicable")
        else:
            if cond.code not in entries:
                problems.append(f"{label}: code {cond.code} is not in the catalog")
            if cond.not_applicable:
                problems.append(f"{label}: has a code and a not-applicable reason")
    assert not problems, "\n".join(problems)
    # Every seed has conditions, and the Windows-only ones are mapped or explained.
    assert {c.seed for c in SEED_CONDITIONS} == {"000", "001", "002", "003", "004"}
    windows_only = ("VSS", "COM+", "MSDTC", "BitLocker", "SchUseStrongCrypto", "Visual C++", "MachineKeys")
    for word in windows_only:
        rows = [c for c in SEED_CONDITIONS if word in c.condition]
        assert rows, word
        assert all(c.analogue or c.not_applicable for c in rows), word
