"""The kernel a disk backup needs, checked against a really old-looking kernel.

``setarch ARCH --uname-2.6`` runs a program with the UNAME26 personality: the kernel
itself then reports a 2.6.x release to ``uname()``, so the process sees an old
kernel without any code of ours being told so. Both the disk backup's first step
(``take_snapshot``) and ``kluis doctor``'s ``snapshot-os`` check run under it, and
once more without it, where they must pass.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kluis.agent.extensions.snapshot.support import distribution_name, kernel_version, unsupported_reason

# A disk backup of a block device that does not exist, reporting the code it ends with:
# past the kernel check that is ProtectedMachineNotFound, so no disk is needed at all.
SNAPSHOT = (
    "import json\n"
    "from kluis.agent.extensions.snapshot import DiskRef, HostMachine, take_snapshot\n"
    "from kluis.catalog import KluisError\n"
    "machine = HostMachine('host', [DiskRef('root', '/dev/kluis-no-such-disk', 'block')])\n"
    "try:\n"
    "    take_snapshot(machine, item='x')\n"
    "except KluisError as exc:\n"
    "    print(json.dumps(exc.to_dict()))\n"
)


def _uname26() -> list[str]:
    """The setarch prefix, or skip when this machine cannot run it."""
    if shutil.which("setarch") is None:
        pytest.skip("setarch (util-linux) is not installed")
    prefix = ["setarch", platform.machine(), "--uname-2.6"]
    probe = subprocess.run([*prefix, "uname", "-r"], capture_output=True, text=True, check=False)
    if probe.returncode != 0 or not probe.stdout.startswith("2.6."):
        pytest.skip(f"the UNAME26 personality is not available here: {probe.stderr.strip()}")
    return prefix


def _python(prefix: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    """This interpreter (Kluis installed in it), started through ``prefix``."""
    return subprocess.run(
        [*prefix, sys.executable, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_this_kernel_is_supported() -> None:
    release = os.uname().release
    assert kernel_version(release) is not None and unsupported_reason(release) is None
    assert kernel_version("2.6.78-fc") == (2, 6) and unsupported_reason("2.6.78-fc") is not None
    assert unsupported_reason("4.4.0") is not None and unsupported_reason("4.5.0") is None


def test_disk_backup_on_an_old_kernel_is_refused_first() -> None:
    prefix = _uname26()
    old = _python(prefix, "-c", SNAPSHOT)
    assert old.returncode == 0, old.stderr
    error = json.loads(old.stdout)
    assert error["code"] == "OperatingSystemUnsupported", error
    assert error["params"]["kernel"].startswith("2.6."), error
    assert error["params"]["os"] == distribution_name()
    assert "4.5" in error["params"]["reason"]
    assert error["message"].startswith(f"The machine runs {distribution_name()} (kernel 2.6.")

    normal = _python([], "-c", SNAPSHOT)
    assert normal.returncode == 0, normal.stderr
    assert json.loads(normal.stdout)["code"] == "ProtectedMachineNotFound", "past the kernel check"


def _doctor(prefix: list[str], config_dir: Path) -> dict[str, object]:
    # No agent is configured: the agent checks fail or skip, the snapshot checks still run.
    proc = _python(prefix, "-m", "kluis", "doctor", "--json", "--config-dir", str(config_dir))
    try:
        checks = {c["id"]: c for c in json.loads(proc.stdout)["checks"]}
    except ValueError:
        raise AssertionError(f"doctor printed no JSON (rc {proc.returncode}):\n{proc.stderr}") from None
    return dict(checks["snapshot-os"])


def test_doctor_reports_the_old_kernel(tmp_path: Path) -> None:
    prefix = _uname26()
    check = _doctor(prefix, tmp_path)
    error = check["error"]
    assert isinstance(error, dict)
    assert check["verdict"] == "fail" and error["code"] == "OperatingSystemUnsupported", check
    assert error["params"]["kernel"].startswith("2.6."), check
    assert "update the kernel" in str(check["fix"])

    check = _doctor([], tmp_path)
    assert check["verdict"] == "pass", check
    assert os.uname().release in str(check["summary"])
