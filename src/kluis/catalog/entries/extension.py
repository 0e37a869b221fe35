"""The snapshot extension: install, load, dependencies, permission to run (seeds 000, 001, 002, 004).

The seeds' Windows-only extension dependencies (COM+ System Application, MSDTC,
Visual C++ redistributable) map to ExtensionDependencyMissing; application control
(AppLocker) maps to SELinux, AppArmor or fapolicyd denials and noexec mounts.
"""

from kluis.catalog.entry import CatalogEntry

ENTRIES = [
    CatalogEntry(
        code="ExtensionSnapshotFailedNoNetwork",
        title="Snapshot failed: no network connection",
        message="The snapshot extension on {machine} could not reach the vault at {url}: {reason}.",
        causes=(
            "The snapshot status could not be retrieved, or a snapshot could not be taken.",
            "The extension fails to install, update or load.",
            "Outgoing connections from the machine to the vault are blocked, or a needed proxy is not"
            " configured.",
        ),
        actions=(
            "Run `kluis doctor` on the machine to find the failing step (DNS, TCP, TLS, proxy).",
            "Allow the machine to reach the vault's address and port, directly or through a proxy"
            " set with `HTTPS_PROXY` for the agent service.",
            "Check the extension with `kluis extension list`; uninstall a failed one so the next"
            " backup reinstalls it.",
            "Run the backup again.",
        ),
        http_status=503,
        exit_code=7,
        seeds=("000", "001", "002", "004"),
        area="extension",
        doctor_check="vault-reachable",
    ),
    CatalogEntry(
        code="ExtensionOperationFailedForManagedDisks",
        title="The snapshot extension failed",
        message="The snapshot extension {extension} failed on {machine}: {reason}.",
        causes=(
            "The snapshot status could not be retrieved, or a snapshot could not be taken.",
            "The extension package failed its checksum or could not be loaded.",
            "The agent hangs or does not respond.",
            "The agent is outdated.",
        ),
        actions=(
            "Run the backup again; a passing fault clears by itself.",
            "Uninstall the extension with `kluis extension uninstall {extension}`; the next backup"
            " installs it afresh.",
            "Restart the agent with `systemctl restart kluis-agent` and update it if it is outdated.",
            "If it keeps failing, collect `journalctl -u kluis-agent` and the extension's log.",
        ),
        http_status=500,
        exit_code=9,
        seeds=("000", "002", "004"),
        seed_codes=("ExtentionOperationFailedForManagedDisks",),
        area="extension",
        doctor_check="extensions",
    ),
    CatalogEntry(
        code="ExtensionInstallFailed",
        title="The extension could not be installed",
        message="Installing extension {extension} on {machine} failed: {reason}.",
        causes=(
            "The agent is not installed correctly or is not running.",
            "Extensions are switched off in the agent configuration.",
            "The extension directory is full or not writable.",
        ),
        actions=(
            "Check the agent with `systemctl status kluis-agent` and `kluis doctor`.",
            "Make sure extensions are enabled in the agent configuration (`extensions.enable = true`).",
            "Free space under the extension directory, then run the backup again.",
        ),
        http_status=500,
        exit_code=9,
        seeds=("000",),
        area="extension",
        doctor_check="extensions",
    ),
    CatalogEntry(
        code="ExtensionDependencyMissing",
        title="A program the extension needs is missing",
        message="Extension {extension} needs {dependency}, which is not installed or does not work on"
        " this machine.",
        causes=(
            "The package that provides the program is not installed (for example util-linux for"
            " fsfreeze, btrfs-progs, lvm2 or qemu-utils).",
            "The program is installed but fails when the extension calls it.",
        ),
        actions=(
            "Install the package with your package manager, for example `apt-get install"
            " util-linux btrfs-progs lvm2 qemu-utils`.",
            "Run the program by hand to see its error, then run the backup again.",
        ),
        http_status=500,
        exit_code=9,
        seeds=("000", "004"),
        seed_codes=("ExtensionInstallationFailedCOM", "ExtensionInstallationFailedMDTC"),
        area="extension",
        doctor_check="snapshot-prerequisites",
    ),
    CatalogEntry(
        code="ExtensionBlockedBySecurityPolicy",
        title="A security policy stops the extension from running",
        message="Running {path} was denied by the security policy ({reason}).",
        causes=(
            "SELinux, AppArmor or fapolicyd does not allow the agent to run its extension.",
            "An application allow-list based on paths or publishers does not include the"
            " extension directory.",
        ),
        actions=(
            "Look for the denial with `ausearch -m avc -ts recent` or `journalctl -k | grep apparmor`.",
            "Allow the agent's state directory `/var/lib/kluis` and its extensions in the policy.",
            "Run the backup again.",
        ),
        http_status=500,
        exit_code=9,
        seeds=("000", "004"),
        area="extension",
        doctor_check="extensions",
    ),
    CatalogEntry(
        code="ExtensionDirNoexec",
        title="The extension directory does not allow running programs",
        message="The extension directory {path} is on a file system mounted noexec or lacks execute"
        " permission; extensions cannot run from it.",
        causes=(
            "`/var` or `/var/lib` is mounted with the `noexec` option for hardening.",
            "The directory's permissions were changed so root cannot execute files in it.",
        ),
        actions=(
            "Remount without noexec (`mount -o remount,exec MOUNTPOINT`) and remove the option in"
            " `/etc/fstab`, or set the agent's `extensions.dir` to a directory on an exec mount.",
            "Reset the permissions: `chmod -R u+rwX PATH`.",
        ),
        http_status=500,
        exit_code=9,
        seeds=("004",),
        area="extension",
        doctor_check="extensions",
    ),
    CatalogEntry(
        code="ExtensionHandlerFailed",
        title="The extension is in a failed state",
        message="Extension {extension} version {version} on {machine} is in state {state}: {reason}.",
        causes=(
            "The extension failed to update or load after an agent or extension update.",
            "Its files were changed or removed by hand.",
        ),
        actions=(
            "Uninstall it with `kluis extension uninstall {extension}`; the next backup reinstalls"
            " the current version.",
            "If the extension still does not load, update the agent and try again.",
        ),
        http_status=500,
        exit_code=9,
        seeds=("000", "001", "002", "004"),
        area="extension",
        seed_codes=("UserErrorVmProvisioningStateFailed",),
        doctor_check="extensions",
    ),
]
