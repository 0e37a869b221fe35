"""Outcomes of a files-and-folders backup as a whole (seed 003, "completed with warnings")."""

from kluis.catalog.entry import CatalogEntry, Severity

ENTRIES = [
    CatalogEntry(
        code="BackupCompletedWithWarnings",
        title="Backup completed with warnings",
        message="The backup of {item} completed, but {count} files were skipped; they are listed in {log}.",
        causes=(
            "Files changed, disappeared or could not be read while the backup ran.",
            "Files of a kind that cannot be backed up (sockets, online-only files) are in the"
            " protected folders.",
            "Another program (a virus scanner, a database) held files in a way that blocked reading.",
        ),
        actions=(
            "Read the failed-files log; each line has a code explained in this guide.",
            "Exclude files that need not be backed up with exclusion patterns on the item.",
            "Run the backup again after fixing the causes; skipped files are picked up then.",
        ),
        severity=Severity.WARNING,
        http_status=200,
        exit_code=0,
        seeds=("003",),
        area="files",
    ),
    CatalogEntry(
        code="ProtectedFolderRecreated",
        title="A protected top-level folder was deleted and created again",
        message="The protected folder {path} was replaced by a new folder with the same name; its"
        " content is read in full again.",
        causes=(
            "A program or a person deleted the top-level folder and created it again, for example"
            " while restoring or deploying.",
            "Another file system was mounted on the path.",
        ),
        actions=(
            "Delete and recreate subfolders instead of the protected top-level folder.",
            "No other action is needed: the next backups are incremental again.",
        ),
        severity=Severity.WARNING,
        http_status=200,
        exit_code=0,
        seeds=("003",),
        area="files",
    ),
]
