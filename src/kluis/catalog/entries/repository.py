"""Conditions of the repository format: keys, packs, blobs, trees, recovery points."""

from kluis.catalog.entry import CatalogEntry, Severity

ENTRIES = [
    CatalogEntry(
        code="RepoPassphraseIncorrect",
        title="Passphrase does not unlock the keys",
        message="The passphrase does not unlock the key set of repository {repo}.",
        causes=(
            "The passphrase was mistyped, or belongs to another machine or repository.",
            "The passphrase was changed and an old one was given.",
        ),
        actions=(
            "Enter the passphrase that was set when this machine was registered (or last changed).",
            "If it is lost but the machine still has its KEK file in the scratch folder,"
            " run the agent there: it unlocks the keys without the passphrase.",
            "Without the passphrase and the KEK file the data cannot be decrypted by anyone.",
        ),
        http_status=403,
        exit_code=3,
        area="repository",
    ),
    CatalogEntry(
        code="RepoNotFound",
        title="No repository at this location",
        message="There is no Kluis repository at {location}.",
        causes=("The location is wrong, or the repository was never initialised.",),
        actions=("Check the store URL, or initialise a repository there first.",),
        http_status=404,
        exit_code=4,
        area="repository",
    ),
    CatalogEntry(
        code="RepoAlreadyExists",
        title="A repository already exists here",
        message="A Kluis repository already exists at {location}; it was left untouched.",
        causes=("The location was initialised before.",),
        actions=("Use the existing repository, or choose an empty location.",),
        http_status=409,
        area="repository",
    ),
    CatalogEntry(
        code="RepoFormatUnsupported",
        title="Repository format not supported",
        message="The repository at {location} uses format version {version}; this Kluis reads"
        " version {supported}.",
        causes=("The repository was written by a newer Kluis.",),
        actions=("Upgrade Kluis on this machine.",),
        area="repository",
    ),
    CatalogEntry(
        code="RepoKeyFileCorrupt",
        title="Key file damaged",
        message="The key file {name} cannot be read: {reason}.",
        causes=("The key file was truncated or edited.",),
        actions=("Restore the key file from the vault (it keeps the wrapped key set) or from a copy.",),
        area="repository",
    ),
    CatalogEntry(
        code="RepoBlobCorrupt",
        title="Stored data failed its integrity check",
        message="Blob {blob} in pack {pack} failed authentication or its content hash: the stored"
        " bytes are damaged or were altered.",
        causes=(
            "The storage medium or the object store returned damaged data.",
            "Someone modified the pack file.",
        ),
        actions=(
            "Run `kluis verify --read-data` to list every affected recovery point and file.",
            "Run a new backup: damaged chunks that still exist on the machine are stored again.",
            "Check the storage hardware (SMART, `dmesg`) or the object store's health.",
        ),
        exit_code=5,
        area="repository",
    ),
    CatalogEntry(
        code="RepoPackMissing",
        title="Pack file missing",
        message="Pack {pack} is listed in the index but missing from the store.",
        causes=(
            "The pack was deleted outside Kluis.",
            "The store lost data.",
        ),
        actions=(
            "Run `kluis verify` to list the affected recovery points.",
            "Run a new backup so that chunks still present on the machine are stored again.",
        ),
        exit_code=5,
        area="repository",
    ),
    CatalogEntry(
        code="RepoPackCorrupt",
        title="Pack file damaged",
        message="Pack {pack} is damaged: {reason}.",
        causes=(
            "The pack was truncated or altered in the store.",
            "An upload was cut off and the damaged pack was not cleaned up.",
        ),
        actions=(
            "Run `kluis verify --read-data` to list the affected recovery points and files.",
            "Run a new backup so that chunks still present on the machine are stored again.",
        ),
        exit_code=5,
        area="repository",
    ),
    CatalogEntry(
        code="RepoBlobMissing",
        title="Referenced data missing from the index",
        message="Blob {blob} is referenced by {where} but is not in any pack.",
        causes=(
            "A pack holding it was deleted outside Kluis.",
            "The index was damaged.",
        ),
        actions=(
            "Run `kluis verify` for the full list of affected recovery points.",
            "Run a new backup so that chunks still present on the machine are stored again.",
        ),
        exit_code=5,
        area="repository",
    ),
    CatalogEntry(
        code="RepoIndexCorrupt",
        title="Index file damaged",
        message="Index file {name} cannot be read: {reason}.",
        causes=("The index file was truncated or altered.",),
        actions=("Rebuild the index from the packs with `kluis repair index`.",),
        exit_code=5,
        area="repository",
    ),
    CatalogEntry(
        code="RepoTreeCorrupt",
        title="Directory listing damaged",
        message="A directory listing ({blob}) of recovery point {point} cannot be decoded: {reason}.",
        causes=("The tree blob decrypted but its content is not a valid listing.",),
        actions=("Run `kluis verify --read-data`; restore from another recovery point.",),
        exit_code=5,
        area="repository",
    ),
    CatalogEntry(
        code="RecoveryPointNotFound",
        title="Recovery point not found",
        message="Recovery point {point} does not exist.",
        causes=(
            "The id is mistyped or too short to be unique.",
            "Retention expired the recovery point.",
        ),
        actions=("List recovery points with `kluis points list ITEM` and use a full id.",),
        http_status=404,
        exit_code=4,
        area="repository",
    ),
    CatalogEntry(
        code="RecoveryPointCorrupt",
        title="Recovery point damaged",
        message="Recovery point {point} cannot be read: {reason}.",
        causes=("The recovery point file was altered or truncated.",),
        actions=("Restore from another recovery point; run `kluis verify`.",),
        exit_code=5,
        area="repository",
    ),
    CatalogEntry(
        code="RestoreUnsafePath",
        title="Unsafe path refused during restore",
        message="Refused to restore {path}: {reason}. Nothing was written outside {target}.",
        causes=(
            "The recovery point holds a name with `..`, a slash or an absolute path, which only"
            " a damaged or forged recovery point can contain.",
            "A symbolic link appeared inside the restore target while restoring.",
        ),
        actions=(
            "Restore into an empty folder that no other program writes to.",
            "Run `kluis verify --read-data` on the repository.",
        ),
        severity=Severity.WARNING,
        area="restore",
    ),
    CatalogEntry(
        code="RestoreTargetInvalid",
        title="Restore target cannot be used",
        message="Cannot restore into {target}: {reason}.",
        causes=(
            "The target is not a directory, or cannot be created.",
            "The target's file system is read-only or full.",
        ),
        actions=("Choose a writable directory with enough free space.",),
        area="restore",
    ),
    CatalogEntry(
        code="RestorePathNotInPoint",
        title="A path to restore is not in the recovery point",
        message="Nothing in recovery point {point} matches {path}, so nothing was restored for it.",
        causes=(
            "The path is mistyped, or it is given relative to the wrong folder: paths to restore "
            "start at the root of the backed-up machine (for example /home/ann/notes).",
            "The file did not exist yet, or was excluded, when this recovery point was made.",
        ),
        actions=(
            "List what the point holds (`kluis mount`, or `kluis points list` for the items' paths) "
            "and restore again with the path as it appears there.",
            "Pick an older or newer recovery point that holds the file.",
        ),
        severity=Severity.WARNING,
        area="restore",
    ),
    CatalogEntry(
        code="RestoreFileFailed",
        title="A file could not be restored",
        message="Could not restore {path}: {reason}.",
        causes=(
            "The target file system refused the write (full, read-only, permission).",
            "Data for the file is damaged in the repository.",
        ),
        actions=(
            "Free space or fix permissions on the target and restore that path again.",
            "Run `kluis verify --read-data` if the reason is damaged data.",
        ),
        severity=Severity.WARNING,
        area="restore",
    ),
    CatalogEntry(
        code="BackupSourceMissing",
        title="Backup source does not exist",
        message="The path {path} to back up does not exist or cannot be read: {reason}.",
        causes=("The folder was removed or renamed, or its volume is not mounted.",),
        actions=("Mount the volume, or change the protected item's paths.",),
        area="backup",
    ),
    CatalogEntry(
        code="BackupSourcesOverlap",
        title="Backup paths overlap",
        message=(
            "{path} lies inside {outer}, which is backed up as well, but the backup of {outer} "
            "does not reach it: {reason}."
        ),
        causes=(
            "A path below another protected path is reached through a symbolic link, is on "
            "another file system while --one-file-system is set, or is left out by an exclusion.",
        ),
        actions=(
            "Protect the real location of the inner path (the target of the link) instead.",
            "Or protect it as an item of its own, or drop the exclusion or --one-file-system that hides it.",
        ),
        area="backup",
    ),
    CatalogEntry(
        code="DiskSourceUnreadable",
        title="Disk cannot be read",
        message="Cannot read disk {path}: {reason}.",
        causes=(
            "The device or image file does not exist or is not readable by the agent.",
            "The device returned an I/O error.",
        ),
        actions=(
            "Check the path and that the agent runs as root.",
            "Check `dmesg` for I/O errors on the device.",
        ),
        area="backup",
    ),
]

ENTRIES.append(
    CatalogEntry(
        code="OperationCancelled",
        title="Operation cancelled",
        message="The {operation} was cancelled before it finished; nothing partial was committed.",
        causes=("A user or the vault cancelled the job.",),
        actions=("Start the operation again when needed.",),
        severity=Severity.INFO,
        exit_code=130,
        area="jobs",
    )
)
