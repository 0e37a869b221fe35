"""Backing up a machine's or VM's disks as a whole (seeds 000, 002, 004).

Windows-only conditions here map as follows: a BitLocker-locked drive is a locked LUKS
volume; Key Vault permissions for encrypted VMs are the machine's permission to read
its wrapped key set in the vault.
"""

from kluis.catalog.entry import CatalogEntry

ENTRIES = [
    CatalogEntry(
        code="BackUpOperationFailed",
        title="The backup failed with an internal error",
        message="The backup of {item} failed with an internal error after {attempts} attempts: {reason}.",
        causes=(
            "The agent hangs or does not respond.",
            "The agent is outdated.",
            "The snapshot status could not be retrieved, or a snapshot could not be taken.",
            "The snapshot extension fails to update or load.",
            "A lock on the restore point collection stops old recovery points from being deleted.",
            "The machine has no network path to the vault, or the vault's storage had a passing fault.",
        ),
        actions=(
            "Run the backup again in a few minutes.",
            "Restart the agent (`systemctl restart kluis-agent`) and update it if it is outdated.",
            "Uninstall a failed extension with `kluis extension uninstall NAME`.",
            "Remove a lock with `kluis points unlock ITEM`.",
            "Run `kluis doctor` on the machine and `kluis doctor --vault` on the server.",
        ),
        http_status=500,
        exit_code=1,
        seeds=("000", "002", "004"),
        seed_codes=("BackUpOperationFailedV2",),
        area="vm_backup",
    ),
    CatalogEntry(
        code="UserErrorUnsupportedDiskSize",
        title="The disk is larger than supported",
        message="Disk {disk} is {size}, larger than the supported {limit}.",
        causes=(
            "Disks larger than 32 TiB cannot be backed up.",
            "LUKS-encrypted disks larger than 4 TiB cannot be backed up.",
        ),
        actions=(
            "Split the data over several smaller disks or volumes.",
            "Or protect the data on it with a files-and-folders backup instead.",
        ),
        http_status=422,
        exit_code=10,
        seeds=("002", "004"),
        area="vm_backup",
    ),
    CatalogEntry(
        code="UserErrorBcmDatasourceNotPresent",
        title="The machine is not actively protected",
        message="The backup of {item} failed: the item is not actively protected (its protection is"
        " {state}).",
        causes=(
            "Protection of the item was stopped or paused.",
            "The item was removed from the vault while a job for it was queued.",
        ),
        actions=(
            "Check the item's state with `kluis items list`.",
            "Resume protection with `kluis resume-protection ITEM`, then run the backup again.",
        ),
        http_status=409,
        exit_code=9,
        seeds=("004",),
        area="vm_backup",
    ),
    CatalogEntry(
        code="ProtectedMachineNotFound",
        title="The protected machine or disk no longer exists",
        message="The {kind} {name} protected by {item} no longer exists, but its policy still"
        " schedules backups.",
        causes=(
            "The VM, disk image or block device was deleted or renamed.",
            "The host configuration no longer lists it.",
        ),
        actions=(
            "If it was deleted on purpose, stop protection and keep the data: `kluis stop-protection"
            " ITEM`; this also ends the recurring failures.",
            "Or recreate it with the same name and path, then run the backup again.",
        ),
        http_status=404,
        exit_code=4,
        seeds=("000",),
        area="vm_backup",
    ),
    CatalogEntry(
        code="VmStateTransitional",
        title="The machine is not in a state that allows a backup",
        message="VM {vm} is {state}; a backup needs it running or shut off.",
        causes=(
            "The VM is starting, stopping, paused or migrating.",
            "The VM's process was stopped by a signal (SIGSTOP) or exited and was not reaped yet.",
        ),
        actions=(
            "Wait until the VM is running or shut off, then run the backup again: `ps -o stat= -p PID`"
            " of the process in the VM's `pid_file` shows its state (`T`: paused, `Z`: stopping).",
            "Resume a paused VM (`kill -CONT PID`, or `virsh resume VM`) if nobody paused it on purpose.",
        ),
        http_status=409,
        exit_code=9,
        seeds=("000", "004"),
        area="vm_backup",
    ),
    CatalogEntry(
        code="UserErrorVmNotShutDown",
        title="The machine must be shut down first",
        message="VM {vm} is running; {operation} needs it shut down.",
        causes=(
            "Replacing a VM's disks with restored ones is only done while the VM is off, so no"
            " running system writes to them.",
        ),
        actions=(
            "Shut the VM down (`virsh shutdown VM`) and run the operation again.",
            "Or restore the disks to new image files and attach them yourself.",
        ),
        http_status=409,
        exit_code=9,
        area="vm_backup",
    ),
    CatalogEntry(
        code="UserErrorKeyvaultPermissionsNotConfigured",
        title="No access to the key for an encrypted disk",
        message="Machine {machine} may not read the key needed to back up encrypted disk {disk}.",
        causes=(
            "The machine's account in the vault lacks permission to read its wrapped key set.",
            "The key file for the LUKS volume is not available to the agent.",
        ),
        actions=(
            "Give the machine access to its keys in the vault, or register it again.",
            "Make the LUKS key file readable by root only and configure its path for the item.",
        ),
        http_status=403,
        exit_code=3,
        seeds=("000", "002", "004"),
        area="vm_backup",
    ),
    CatalogEntry(
        code="EncryptedVolumeLocked",
        title="An encrypted volume is locked",
        message="The LUKS volume {device} is locked (not opened), so its content cannot be read or frozen.",
        causes=(
            "The volume was not opened at boot, for example because its key was not available.",
            "It was closed by hand.",
        ),
        actions=(
            "Open it with `cryptsetup open DEVICE NAME` and mount it, then run the backup again.",
            "Or exclude the volume from the item if it should not be backed up.",
        ),
        http_status=409,
        exit_code=9,
        seeds=("000",),
        area="vm_backup",
    ),
    CatalogEntry(
        code="BackupDataTransferTimeout",
        title="Transferring data to the vault timed out",
        message="Transferring data of {item} to the vault timed out after {seconds} seconds.",
        causes=(
            "The vault's storage had a passing fault or was overloaded.",
            "The source disks or the network are too slow for the amount of changed data.",
        ),
        actions=(
            "Run the backup again in a few minutes.",
            "If it keeps happening, move busy disks to less loaded storage or spread backup times.",
        ),
        http_status=504,
        exit_code=7,
        seeds=("000",),
        area="vm_backup",
    ),
]
