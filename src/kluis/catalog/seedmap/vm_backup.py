"""Seed conditions of the VM backup documents (000 to 002): snapshots, the extension, disk restores."""

from __future__ import annotations

from kluis.catalog.seedmap.condition import SeedCondition
from kluis.catalog.seedmap.condition import row as _c

_NO_VM_CREATION = (
    "Kluis does not create VMs: a disk restore writes image files or block devices, and the VM"
    " definition, its name and its network stay with the host; replacing a VM's disks keeps them"
)

_NO_AZURE_PORTAL = (
    "Kluis has no portal whose state can differ from the hypervisor's; it asks libvirt at job time"
)

VM_BACKUP_CONDITIONS: tuple[SeedCondition, ...] = (
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
)
