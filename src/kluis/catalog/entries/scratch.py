"""The scratch folder (the seeds' cache or scratch folder): space, access, checksum store (seed 003).

Checked before every job. The seeds' VHD is the agent's temporary area in the scratch
folder; their bitmap is the change-detection state kept in the checksum store.
"""

from kluis.catalog.entry import CatalogEntry

ENTRIES = [
    CatalogEntry(
        code="SalLowDiskSpace",
        title="Not enough free space for the scratch folder",
        message="The volume holding the scratch folder {path} has {free} free, but this backup needs"
        " at least {needed}.",
        causes=(
            "The scratch folder's volume is nearly full; it needs free space of 5 to 10% of the data"
            " being protected.",
            "Old temporary files or failed-files logs have piled up in the scratch folder.",
        ),
        actions=(
            "Free space on the volume (`df -h PATH` shows it), or move the scratch folder to a bigger"
            " volume with `kluis agent config set scratch DIR`.",
            "Update the agent to the latest version; it cleans its temporary files itself.",
            "Run the backup again.",
        ),
        http_status=507,
        exit_code=6,
        seeds=("003",),
        area="scratch",
        doctor_check="scratch-folder",
    ),
    CatalogEntry(
        code="SalChecksumStoreInitializationFailed",
        title="The checksum store cannot be opened",
        message="The agent could not open its checksum store {path}: {reason}.",
        causes=(
            "Another program, often a virus scanner or a second agent process, holds the store's"
            " files locked.",
            "The scratch folder is not valid or the agent may not access it.",
            "The store's file was damaged, for example by a crash or a full disk.",
        ),
        actions=(
            "Make sure only one agent runs (`systemctl status kluis-agent`) and exclude the scratch"
            " folder from virus scanners.",
            "Check that the scratch folder exists and is writable by root (`kluis doctor`).",
            "If the store is damaged, delete it; the next backup rebuilds it by reading every file once.",
            "Restart the agent (`systemctl restart kluis-agent`) and run the backup again.",
        ),
        http_status=500,
        exit_code=9,
        seeds=("003",),
        area="scratch",
        doctor_check="scratch-folder",
    ),
    CatalogEntry(
        code="SalVhdInitializationError",
        title="The temporary area in the scratch folder cannot be set up",
        message="The agent could not set up its temporary area {path} in the scratch folder: {reason}.",
        causes=(
            "Another program holds files in the scratch folder locked or removes them.",
            "The scratch folder is not valid, not writable or on a volume that is not mounted.",
            "The scratch folder's file system does not support what the temporary area needs"
            " (sparse files, or it is mounted read-only).",
        ),
        actions=(
            "Exclude the scratch folder from virus scanners and cleaners such as `systemd-tmpfiles`.",
            "Check that the scratch folder is valid and writable (`kluis doctor`).",
            "Move the scratch folder to a local ext4, XFS or btrfs volume with `kluis agent config set"
            " scratch DIR`.",
            "Restart the agent (`systemctl restart kluis-agent`) and run the job again.",
        ),
        http_status=500,
        exit_code=9,
        seeds=("003",),
        area="scratch",
        doctor_check="scratch-folder",
    ),
    CatalogEntry(
        code="SalBitmapError",
        title="Changes in a file could not be determined",
        message="The change-detection state for {path} could not be read: {reason}.",
        causes=(
            "The checksum store's record for the file is damaged.",
            "Storage problems on the scratch folder's volume (full, read errors).",
        ),
        actions=(
            "Update the agent to the latest version.",
            "Check the scratch folder's volume for space and errors (`df -h`, `dmesg`).",
            "Run the operation again; the file is then read in full once.",
        ),
        http_status=500,
        exit_code=9,
        seeds=("003",),
        area="scratch",
        doctor_check="scratch-folder",
    ),
    CatalogEntry(
        code="ScratchFolderInvalid",
        title="The scratch folder is not usable",
        message="The scratch folder {path} is not usable: {reason}.",
        causes=(
            "The folder does not exist, or its volume is not mounted.",
            "The folder is not a directory, not owned by root or not writable.",
            "The folder's file system is mounted read-only.",
        ),
        actions=(
            "Mount the volume or create the folder (`install -d -m 0700 PATH`).",
            "Or choose another folder with `kluis agent config set scratch DIR`.",
        ),
        http_status=500,
        exit_code=9,
        seeds=("003",),
        area="scratch",
        doctor_check="scratch-folder",
    ),
    CatalogEntry(
        code="ScratchFolderUnsupportedFs",
        title="The scratch folder is on an unsuitable file system",
        message="The scratch folder {path} is on a {fstype} file system, which the agent cannot use for it.",
        causes=(
            "The folder is on a network or FUSE file system, where locks and sparse files are unreliable.",
            "The folder is on tmpfs, whose content is lost at reboot (including the KEK file).",
        ),
        actions=(
            "Move the scratch folder to a local ext4, XFS or btrfs volume with `kluis agent config"
            " set scratch DIR`.",
        ),
        http_status=500,
        exit_code=9,
        seeds=("003",),
        area="scratch",
        doctor_check="scratch-folder",
    ),
]
