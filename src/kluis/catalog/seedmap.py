"""Every error condition in the source documents (``shared/seeds``) and where it went in Kluis.

One row per condition as a seed states it, in our words. ``code`` is the catalog
entry that covers it; ``analogue`` says what the condition becomes on Linux when the
seed's condition is specific to Windows or Azure; a condition Kluis cannot meet has no
code and says why in ``not_applicable``. ``docs/catalog-mapping.md`` and
``docs/troubleshooting-coverage.md`` are generated from this table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SeedCondition:
    """One error condition of a source document and its place in the catalog."""

    seed: str
    condition: str
    code: str | None = None
    seed_code: str = ""
    analogue: str = ""
    not_applicable: str = ""


def _c(seed: str, condition: str, code: str | None = None, **kw: str) -> SeedCondition:
    return SeedCondition(seed, condition, code, **kw)


_NO_VM_CREATION = (
    "Kluis does not create VMs: a disk restore writes image files or block devices, and the VM"
    " definition, its name and its network stay with the host; replacing a VM's disks keeps them"
)

_NO_AZURE_PORTAL = (
    "Kluis has no portal whose state can differ from the hypervisor's; it asks libvirt at job time"
)

SEED_CONDITIONS: tuple[SeedCondition, ...] = (
    # 000: VM backup error table
    _c("000", "Operation cannot run because the VM no longer exists", "ProtectedMachineNotFound"),
    _c("000", "Snapshot failed: no network connectivity in the VM", "ExtensionSnapshotFailedNoNetwork"),
    _c("000", "VM agent cannot communicate with the backup service", "UserErrorGuestAgentStatusUnavailable"),
    _c(
        "000",
        "VM is in a failed provisioning state",
        "ExtensionHandlerFailed",
        seed_code="UserErrorVmProvisioningStateFailed",
        analogue="the snapshot extension's handler state recorded as failed on the machine",
    ),
    _c(
        "000",
        "VMSnapshot extension operation failed for managed disks",
        "ExtensionOperationFailedForManagedDisks",
        seed_code="ExtentionOperationFailedForManagedDisks",
    ),
    _c(
        "000",
        "Snapshot cannot be copied: not enough free space in the storage account",
        "SnapshotSpaceInsufficient",
        analogue="copy-on-write space for the snapshot in the volume group, thin pool or file system",
    ),
    _c("000", "Operation failed because the VM agent does not respond", "AgentUnresponsive"),
    _c("000", "Recovery Services extension operation failed: the VM agent is outdated", "AgentOutdated"),
    _c("000", "The VM does not exist", "ProtectedMachineNotFound"),
    _c("000", "Another operation is in progress for this item", "UserErrorBackupOperationInProgress"),
    _c(
        "000",
        "Copying data from the vault timed out (storage fault or too few IOPS)",
        "BackupDataTransferTimeout",
    ),
    _c("000", "Backup failed with an internal error", "BackUpOperationFailed"),
    _c(
        "000",
        "VM agent could not install the Recovery Services extension (agent missing or flag not set)",
        "ExtensionInstallFailed",
    ),
    _c(
        "000",
        "Extension installation failed: COM+ cannot talk to MSDTC",
        "ExtensionDependencyMissing",
        seed_code="ExtensionInstallationFailedCOM / ExtensionInstallationFailedMDTC",
        analogue="a program the extension calls (fsfreeze, btrfs, lvm2, qemu-img) is missing or broken",
    ),
    _c(
        "000",
        "Snapshot failed: the drive is locked by BitLocker",
        "EncryptedVolumeLocked",
        analogue="a LUKS volume that is not opened",
    ),
    _c(
        "000",
        "VM is not in a state that allows backups (starting or stopping)",
        "VmStateTransitional",
    ),
    _c(
        "000",
        "Linux VM with SELinux: the agent's path is not allowed by the security policy",
        "ExtensionBlockedBySecurityPolicy",
        analogue="SELinux, AppArmor or Landlock denying the agent the programs it runs",
    ),
    _c("000", "Azure VM not found", "ProtectedMachineNotFound"),
    _c(
        "000",
        "No VM agent present in the VM",
        "VmGuestAgentUnavailable",
        analogue='a running VM whose file systems the host cannot quiesce (`guest_agent = "none"`)',
    ),
    _c(
        "000",
        "Snapshot failed because VSS writers are in a bad state",
        "QuiesceScriptFailed",
        seed_code="ExtensionFailedVssWriterInBadState",
        analogue="an application's pre- or post-snapshot script failing",
    ),
    _c(
        "000",
        "Snapshot failed: configuration parse error (permissions on the MachineKeys folder)",
        "AgentKeyPermissionsWrong",
        analogue="wrong owner or mode on the agent's key directory",
    ),
    _c(
        "000",
        "Backup service lacks Key Vault permissions for encrypted VMs",
        "UserErrorKeyvaultPermissionsNotConfigured",
        analogue="the machine's permission to read its wrapped key set, and the LUKS key file",
    ),
    _c(
        "000",
        "Snapshot extension installation failed: COM+ cannot talk to MSDTC (second variant)",
        "ExtensionDependencyMissing",
        analogue="a program the extension calls is missing or broken",
    ),
    _c(
        "000",
        "Snapshot failed with a COM+ error",
        "SnapshotProviderFailed",
        analogue="the snapshot tool (btrfs, lvcreate, qemu-img, cp --reflink) failing",
    ),
    _c("000", "One or more mount points could not be frozen", "UserErrorFsFreezeFailed"),
    _c(
        "000",
        "Snapshot failed: the secure network channel could not be created (.NET SchUseStrongCrypto)",
        "TlsHandshakeFailed",
        analogue="a TLS handshake failure between agent and vault",
    ),
    _c(
        "000",
        "Snapshot failed: installing the Visual C++ redistributable failed",
        "ExtensionDependencyMissing",
        analogue="a package the extension needs is not installed",
    ),
    # 000: Jobs table
    _c("000", "Cancellation is not supported for this job type", "JobCancelNotSupported"),
    _c("000", "The job is not in a cancellable state", "JobNotCancellable"),
    _c("000", "The job cannot be cancelled because it is not in progress", "JobNotInProgress"),
    _c("000", "Cancelling the job failed", "JobCancelFailed"),
    # 000: Restore table
    _c(
        "000",
        "Restore failed with an internal cloud error (DNS settings, reserved IP, special network setup)",
        not_applicable=_NO_VM_CREATION,
    ),
    _c(
        "000",
        "The chosen DNS name is already in use",
        not_applicable=_NO_VM_CREATION,
    ),
    _c(
        "000",
        "The virtual network configuration is not correct",
        not_applicable=_NO_VM_CREATION,
    ),
    _c(
        "000",
        "The cloud service uses a reserved IP that does not match the VM's configuration",
        not_applicable=_NO_VM_CREATION,
    ),
    _c(
        "000",
        "The cloud service reached its limit of input endpoints",
        not_applicable="Kluis creates no load-balancer endpoints; a restored VM joins the network named",
    ),
    _c(
        "000",
        "Vault and target storage account are in different regions",
        not_applicable="Kluis has no regions; a restore writes to any host that runs a registered agent",
    ),
    _c(
        "000",
        "The storage account type is not supported for restore",
        "RestoreTargetInvalid",
        analogue="a target that cannot take the restored disk: too small, mounted, or read-only",
    ),
    _c(
        "000",
        "The storage account for the restore is not online",
        "RestoreTargetInvalid",
        analogue="a target directory whose volume is not mounted or is read-only",
    ),
    _c(
        "000",
        "Resource group quota reached",
        not_applicable="Kluis has no subscriptions or resource-group quotas; lack of space on the"
        " target is RestoreTargetInvalid",
    ),
    _c(
        "000",
        "The selected subnet does not exist",
        not_applicable=_NO_VM_CREATION,
    ),
    _c(
        "000",
        "The backup service has no access to resources in the subscription",
        not_applicable=_NO_VM_CREATION,
    ),
    _c("000", "Backup takes more than 12 hours or restore more than 6 hours", "JobRunningLong"),
    _c("000", "VM agent version below the minimum", "AgentOutdated"),
    # 000/001/002: snapshot task causes
    _c("000", "Network access to storage blocked by a network security group", "100050"),
    _c(
        "000",
        "SQL Server backup configured in the VM delays the snapshot (VSS full backup)",
        "QuiesceScriptTimeout",
        analogue="an application's own backup or flush making the pre-snapshot script slow",
    ),
    _c(
        "000",
        "VM state reported wrongly because the VM was shut down from inside (RDP)",
        not_applicable=_NO_AZURE_PORTAL,
    ),
    _c(
        "000",
        "More than four VMs of one cloud service back up at the same time",
        "ScheduleOverlapOnHost",
        analogue="many machines on one host starting their backups in the same hour",
    ),
    _c(
        "000",
        "VM runs above 90% CPU or memory; the snapshot task times out",
        "GuestAgentSnapshotTaskStatusError",
    ),
    _c(
        "000",
        "DHCP disabled in the guest, so the host address (DHCP option 245) is unknown",
        not_applicable="the agent is given the vault's URL at registration; no DHCP option is used",
    ),
    # 000: networking section
    _c("000", "Public addresses cannot be resolved (DNS)", "VaultDnsResolutionFailed"),
    _c("000", "Access to the service's IP addresses is blocked (allow-list or HTTP proxy needed)", "100050"),
    # 001
    _c(
        "001",
        "Could not communicate with the VM agent for snapshot status: snapshot sub-task timed out",
        "GuestAgentSnapshotTaskStatusError",
    ),
    _c("001", "The VM has no internet access", "ExtensionSnapshotFailedNoNetwork"),
    _c("001", "The VM agent in a Linux VM is outdated", "AgentOutdated"),
    _c("001", "The agent does not restart by itself after a crash", "AgentServiceNotEnabled"),
    _c("001", "The backup extension fails to update or load", "ExtensionHandlerFailed"),
    _c(
        "001",
        "The iaasvmprovider service is not enabled with automatic start (Windows)",
        "AgentServiceNotEnabled",
        analogue="the kluis-agent systemd unit not enabled at boot",
    ),
    _c(
        "001",
        "The snapshot status cannot be retrieved or snapshots cannot be taken",
        "GuestAgentSnapshotTaskStatusError",
    ),
    _c("001", "Many VMs of one cloud service back up at the same time", "ScheduleOverlapOnHost"),
    # 002
    _c(
        "002",
        "UserErrorGuestAgentStatusUnavailable: the VM agent cannot communicate with the service",
        "UserErrorGuestAgentStatusUnavailable",
    ),
    _c(
        "002",
        "GuestAgentSnapshotTaskStatusError: no snapshot status from the VM agent",
        "GuestAgentSnapshotTaskStatusError",
    ),
    _c(
        "002",
        "UserErrorRpCollectionLimitReached: the restore point collection limit is reached",
        "UserErrorRpCollectionLimitReached",
    ),
    _c(
        "002",
        "UserErrorKeyvaultPermissionsNotConfigured: no permission to the key vault",
        "UserErrorKeyvaultPermissionsNotConfigured",
    ),
    _c(
        "002",
        "ExtensionSnapshotFailedNoNetwork: snapshot failed, no network in the VM",
        "ExtensionSnapshotFailedNoNetwork",
    ),
    _c(
        "002",
        "ExtentionOperationFailedForManagedDisks: the VMSnapshot extension operation failed",
        "ExtensionOperationFailedForManagedDisks",
        seed_code="ExtentionOperationFailedForManagedDisks",
    ),
    _c(
        "002",
        "BackUpOperationFailed / BackUpOperationFailedV2: backup failed with an internal error",
        "BackUpOperationFailed",
        seed_code="BackUpOperationFailed / BackUpOperationFailedV2",
    ),
    _c("002", "UserErrorUnsupportedDiskSize: disks larger than 4095 GB", "UserErrorUnsupportedDiskSize"),
    _c(
        "002",
        "UserErrorBackupOperationInProgress: another backup is in progress",
        "UserErrorBackupOperationInProgress",
    ),
    _c(
        "002",
        "The VM agent is installed but does not respond (Windows)",
        "AgentUnresponsive",
        analogue="the kluis-agent service hanging or stopped",
    ),
    _c(
        "002",
        ".NET 4.5 missing, so the VM agent cannot talk to the service",
        not_applicable="the agent is a Python package; pip refuses to install it where its runtime is"
        " missing or too old",
    ),
    _c("002", "A lock on the restore point resource group blocks clean-up", "RestorePointCollectionLocked"),
    _c("002", "Deleting a large restore point collection times out", "RestorePointCleanupIncomplete"),
    _c(
        "002",
        "The backup is configured in another vault whose job still runs",
        "UserErrorBackupOperationInProgress",
    ),
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
