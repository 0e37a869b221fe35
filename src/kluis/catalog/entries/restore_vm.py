"""Restoring a whole VM and mounting recovery points (seeds 000, 003).

The seeds' cloud-service settings (DNS name, reserved IP, virtual network, subnet,
storage account type) become the target host's VM name, network and storage pool;
their iSCSI recovery volume becomes a FUSE mount.
"""

from kluis.catalog.entry import CatalogEntry

ENTRIES = [
    CatalogEntry(
        code="RestoreVmNetworkConflict",
        title="The VM's network settings conflict on the target host",
        message="VM {vm} cannot be created on {host} with its original network settings: {reason}.",
        causes=(
            "The VM had a fixed MAC or IP address that another VM on the target uses.",
            "The VM had several network interfaces or settings the target's network cannot give.",
        ),
        actions=(
            "Restore the disks only (`kluis restore POINT --disks --target DIR`) and create the VM"
            " with the network settings you choose.",
            "Or restore to another host or network.",
        ),
        http_status=409,
        exit_code=8,
        seeds=("000",),
        area="restore",
    ),
    CatalogEntry(
        code="RestoreVmNameInUse",
        title="A VM with this name already exists",
        message="A VM named {name} already exists on {host}; choose another name.",
        causes=("The original VM still exists, or another VM has the name.",),
        actions=("Restore with another name (`--name NEW`), or remove the existing VM first.",),
        http_status=409,
        exit_code=8,
        seeds=("000",),
        area="restore",
    ),
    CatalogEntry(
        code="RestoreNetworkInvalid",
        title="The chosen network cannot be used",
        message="The network {network} on {host} cannot be used for the restored VM: {reason}.",
        causes=(
            "The network or bridge does not exist on the target host.",
            "The network is defined but not active.",
        ),
        actions=(
            "List the host's networks with `virsh net-list --all` and choose one that exists and is active.",
            "Start it with `virsh net-start NAME`, then restore again.",
        ),
        http_status=422,
        exit_code=2,
        seeds=("000",),
        area="restore",
    ),
    CatalogEntry(
        code="RestoreTargetStorageUnsupported",
        title="The target storage is not supported for a restore",
        message="The storage {target} cannot receive restored disks: {reason}.",
        causes=(
            "The storage pool is of a type the restore cannot write (read-only or remote-only).",
            "The target file system cannot hold sparse image files of this size.",
        ),
        actions=("Choose a directory or storage pool on local ext4, XFS or btrfs.",),
        http_status=422,
        exit_code=2,
        seeds=("000",),
        area="restore",
    ),
    CatalogEntry(
        code="RestoreVmCreatePermissionDenied",
        title="The agent may not create VMs on the target host",
        message="The agent on {host} may not create the restored VM: {reason}.",
        causes=("The agent's connection to the hypervisor lacks the rights to define VMs.",),
        actions=(
            "Restore the disks only (`kluis restore POINT --disks --target DIR`), then create the VM"
            " from them by hand (`virt-install --import`).",
            "Or give the agent the rights to define VMs on the host.",
        ),
        http_status=403,
        exit_code=3,
        seeds=("000",),
        area="restore",
    ),
    CatalogEntry(
        code="RecoveryMountFailed",
        title="The recovery point could not be mounted",
        message="Mounting recovery point {point} on {mountpoint} failed: {reason}.",
        causes=(
            "FUSE is not available: the fuse3 package is missing or `/dev/fuse` does not exist.",
            "The mount point does not exist, is not empty, or is already in use.",
            "An earlier mount is stuck and still holds the mount point.",
        ),
        actions=(
            "Install FUSE (`apt-get install fuse3`) and check that `/dev/fuse` exists.",
            "Use an empty directory as the mount point.",
            "Release a stuck mount with `fusermount3 -u MOUNTPOINT`, then mount again.",
            "If it still fails, restart the agent, or restore the files to a directory with `kluis"
            " restore` instead.",
        ),
        http_status=500,
        exit_code=9,
        seeds=("003",),
        area="restore",
    ),
]
