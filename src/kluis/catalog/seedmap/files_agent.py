"""Seed conditions of the files-and-folders agent documents (003 and 004)."""

from __future__ import annotations

from kluis.catalog.seedmap.condition import SeedCondition
from kluis.catalog.seedmap.condition import row as _c

FILES_AGENT_CONDITIONS: tuple[SeedCondition, ...] = (
    # 003: MARS agent
    _c("003", "Invalid vault credentials (ID 34513)", "34513", seed_code="34513"),
    _c("003", "Registration blocked by a proxy or firewall, or no internet connection", "100050"),
    _c(
        "003",
        "Registration blocked by antivirus software",
        "34513",
        analogue="SELinux or AppArmor denying the agent access to its files",
    ),
    _c(
        "003",
        "More than 60,000 .tmp files in the temp folder",
        "SalLowDiskSpace",
        analogue="a full scratch volume",
    ),
    _c("003", "Machine date and time do not match the time zone", "ClockSkew"),
    _c(
        "003",
        "Re-registering a server with another passphrase than the one first used",
        "RepoPassphraseIncorrect",
    ),
    _c(
        "003",
        "Service URLs not in Internet Explorer's trusted sites",
        not_applicable="no browser is involved: the agent speaks HTTPS to the vault directly",
    ),
    _c(
        "003",
        "Wrong proxy settings for the system account (Internet Explorer)",
        "100050",
        analogue="HTTPS_PROXY in the kluis-agent service's environment",
    ),
    _c(
        "003",
        "Unable to download the vault credentials file (ID 403)",
        "VaultCredentialsDownloadFailed",
        seed_code="403",
    ),
    _c("003", "The vault's limit of 50 machines is reached", "MachineLimitReached"),
    _c("003", "The user lacks the role needed to download credentials and register", "RoleForbidden"),
    _c("003", "The agent cannot connect to the backup service (ID 100050)", "100050", seed_code="100050"),
    _c("003", "Proxy authentication required (407)", "ProxyAuthenticationRequired", seed_code="407"),
    _c(
        "003",
        "The vault credentials file is from another vault than the server's (ID 100110)",
        "100110",
        seed_code="100110",
    ),
    _c("003", "Backup jobs completed with warnings", "BackupCompletedWithWarnings"),
    _c("003", "File or folder is damaged and unreadable (0x80070570)", "0x80070570", seed_code="0x80070570"),
    _c(
        "003",
        "The system cannot find the file specified (0x80070002, 0x80070003)",
        "0x80070002",
        seed_code="0x80070002 / 0x80070003",
    ),
    _c("003", "Access denied (0x80070005)", "0x80070005", seed_code="0x80070005"),
    _c("003", "Access to the cloud file denied (0x8007018b)", "0x8007018b", seed_code="0x8007018b"),
    _c(
        "003",
        "Unsupported file attributes (OneDrive folder, compressed stream, reparse points)",
        "SpecialFileSkipped",
        analogue="sockets and other special files that cannot be backed up",
    ),
    _c("003", "Files locked by an application or held by antivirus software", "0x80070005"),
    _c(
        "003",
        "Protected top-level folders deleted and recreated with the same name",
        "ProtectedFolderRecreated",
    ),
    _c("003", "Failed to set the encryption key for secure backups", "EncryptionKeySetupFailed"),
    _c("003", "Activation did not complete (0x1FC07)", "0x1FC07", seed_code="0x1FC07"),
    _c(
        "003",
        "The encryption passphrase stored on this computer is not configured correctly (34506)",
        "34506",
        seed_code="34506",
    ),
    _c(
        "003",
        "Scheduled backups do not run but manual backups work",
        "ScheduledBackupNotRun",
    ),
    _c(
        "003",
        "The Windows Server Backup schedule conflicts with the agent's schedule",
        "UserErrorBackupOperationInProgress",
        analogue="another timer starting a backup of the same item",
    ),
    _c(
        "003",
        "The online backup trigger is disabled in Task Scheduler",
        "ScheduledBackupNotRun",
        analogue="the item's protection stopped or the agent offline when due",
    ),
    _c(
        "003",
        "The scheduled task does not run as SYSTEM or a local administrator",
        "ScheduledBackupNotRun",
        analogue="the agent service not running as root",
    ),
    _c(
        "003",
        "PowerShell 3.0 or later missing, module path not set, or execution policy restricted",
        not_applicable="the scheduler runs in the vault and the agent needs no shell to start a job",
    ),
    _c(
        "003",
        "MSOnlineBackup PowerShell module files missing or damaged",
        "ScheduledBackupNotRun",
        analogue="a damaged agent installation",
    ),
    _c(
        "003",
        "Resource not provisioned in service stamp: the server was renamed (230006)",
        "230006",
        seed_code="230006",
    ),
    _c(
        "003",
        "Job could not be started because another job was in progress (duplicate trigger)",
        "UserErrorBackupOperationInProgress",
    ),
    _c(
        "003",
        "The recovery volume cannot be mounted (iSCSI initiator)",
        "RecoveryMountFailed",
        analogue="FUSE missing or a stuck FUSE mount",
    ),
    _c("003", "Less than 5-10% free space on the scratch folder's volume", "SalLowDiskSpace"),
    _c("003", "The scratch folder is not valid or not accessible", "ScratchFolderInvalid"),
    _c(
        "003",
        "Unsupported attributes on the cache folder",
        "ScratchFolderUnsupportedFs",
        analogue="the scratch folder on a network, FUSE or tmpfs file system",
    ),
    _c(
        "003",
        "Not enough shadow copy storage for the backup",
        "SnapshotSpaceInsufficient",
        analogue="copy-on-write space for the snapshot",
    ),
    _c(
        "003",
        "Antivirus or another process blocks access to the cache folder",
        "SalChecksumStoreInitializationFailed",
    ),
    _c(
        "003",
        "The agent cannot access the backup checksum in the scratch location",
        "SalChecksumStoreInitializationFailed",
        seed_code="SalChecksumStoreInitializationFailed",
    ),
    _c(
        "003",
        "The agent cannot access the scratch location to initialise the VHD",
        "SalVhdInitializationError",
        seed_code="SalVhdInitializationError",
        analogue="the agent's temporary area in the scratch folder",
    ),
    _c(
        "003",
        "Backup failed: not enough storage on the scratch folder's volume",
        "SalLowDiskSpace",
        seed_code="SalLowDiskSpace",
    ),
    _c(
        "003",
        "Changes in a file cannot be found",
        "SalBitmapError",
        seed_code="SalBitmapError",
        analogue="the change-detection state in the checksum store",
    ),
    _c(
        "003",
        "Offline backup needs Azure PowerShell 3.7.0 on source and copy computer",
        not_applicable="Kluis has no offline seeding by shipped disks",
    ),
    _c(
        "003",
        ".NET Framework 4.5.2 or later missing",
        not_applicable="the agent is a Python package; pip refuses to install it on an unsupported runtime",
    ),
    # 004: step-by-step checks and newer codes
    _c(
        "004",
        "VM provisioning state is stopped, deallocated or updating",
        "VmStateTransitional",
    ),
    _c("004", "Pending OS updates or reboots", "MachineRebootPending"),
    _c(
        "004", "The guest agent service is not running or not current", "UserErrorGuestAgentStatusUnavailable"
    ),
    _c("004", "The VM runs an unsupported operating system", "OperatingSystemUnsupported"),
    _c(
        "004",
        "The Linux agent's system package dependencies are missing (supported Python version)",
        not_applicable="the agent is a Python package; its dependencies are installed by pip with it",
    ),
    _c(
        "004",
        "An extension is not in the provisioning-succeeded state",
        "ExtensionHandlerFailed",
        seed_code="UserErrorVmProvisioningStateFailed",
    ),
    _c(
        "004",
        "COM+ System Application or MSDTC not running",
        "ExtensionDependencyMissing",
        analogue="a program the extension needs not installed or not working",
    ),
    _c("004", "The VMSnapshot extension is in a failed state", "ExtensionHandlerFailed"),
    _c(
        "004",
        "Antivirus blocks the backup extension from running",
        "ExtensionBlockedBySecurityPolicy",
        analogue="SELinux, AppArmor or fapolicyd denying the extension",
    ),
    _c(
        "004",
        "Extension packages cannot be downloaded or status cannot be sent (ports 80, 443, 32526)",
        "ExtensionSnapshotFailedNoNetwork",
    ),
    _c(
        "004",
        "DHCP must be enabled in the guest",
        not_applicable="the agent is given the vault's URL at registration; no DHCP option is used",
    ),
    _c(
        "004",
        "VSS writer service not running",
        "QuiesceScriptFailed",
        analogue="a failing pre- or post-snapshot script",
    ),
    _c(
        "004", "Encrypted disks without the required permissions", "UserErrorKeyvaultPermissionsNotConfigured"
    ),
    _c(
        "004",
        "UserErrorVmProvisioningStateFailed: the VM is in a failed provisioning state",
        "ExtensionHandlerFailed",
        seed_code="UserErrorVmProvisioningStateFailed",
        analogue="the snapshot extension's handler state recorded as failed on the machine",
    ),
    _c(
        "004", "Restore point collection limit: at most 18 points per VM", "UserErrorRpCollectionLimitReached"
    ),
    _c(
        "004",
        "ExtensionOperationFailedForManagedDisks: VMSnapshot extension operation failed",
        "ExtensionOperationFailedForManagedDisks",
        seed_code="ExtensionOperationFailedForManagedDisks",
    ),
    _c(
        "004",
        "Backup service may not delete old restore points because of a resource group lock",
        "RestorePointCollectionLocked",
    ),
    _c(
        "004",
        "UserErrorUnsupportedDiskSize: disks over 32 TB, or encrypted disks over 4 TB",
        "UserErrorUnsupportedDiskSize",
    ),
    _c(
        "004",
        "UserErrorCrpReportedUserError: the VM reported an error, see the job details",
        "SnapshotProviderFailed",
        seed_code="UserErrorCrpReportedUserError",
        analogue="the host's snapshot tool (qemu-img, btrfs, cp --reflink) failing; its output is in"
        " the job's details",
    ),
    _c(
        "004",
        "UserErrorBcmDatasourceNotPresent: the VM is not actively protected",
        "UserErrorBcmDatasourceNotPresent",
    ),
    _c(
        "004",
        "VM agent configuration options not set (Extensions.Enable=y, Provisioning.Agent=auto)",
        "AgentConfigOptionInvalid",
        seed_code="Extensions.Enable / Provisioning.Agent",
        analogue="`extensions.enable` and related options in the Kluis agent configuration",
    ),
    _c(
        "004",
        "An application control solution (AppLocker) blocks IaaSBcdrExtension.exe",
        "ExtensionBlockedBySecurityPolicy",
        analogue="SELinux, AppArmor or fapolicyd rules, or a noexec mount of the extension directory",
    ),
    _c(
        "004",
        "Path-based application control rules stop the extension's executable",
        "ExtensionDirNoexec",
        analogue="a noexec mount or missing execute permission on the extension directory",
    ),
)
