"""Back a disk image up with Kluis's disk-image engine through its Python API, like a CLI would.

Used by the benchmark only while ``kluis repo backup-disk`` does not exist (see the
DISK-ENGINE HOOK in bench_tools.py). The previous recovery point of kind "disk" is
passed on, as a scheduled daily backup would. Prints the result as JSON.

    .venv/bin/python benchmarks/kluis_disk_driver.py IMAGE --repo DIR --passphrase-file F --scratch DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("image", type=Path)
    p.add_argument("--repo", required=True)
    p.add_argument("--passphrase-file", type=Path, required=True)
    p.add_argument("--scratch", type=Path, required=True)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()

    from kluis.engine.disk_backup import DiskBackup
    from kluis.engine.repository import Repository
    from kluis.stores import open_store

    store = open_store(args.repo)
    args.scratch.mkdir(parents=True, exist_ok=True)
    passphrase = args.passphrase_file.read_text().rstrip("\n")
    repo = Repository.open(store, passphrase=passphrase, cache_dir=args.scratch)
    disks = [pt for pt in repo.list_points() if pt.kind == "disk"]
    previous = disks[-1].id if disks else None
    if args.threads:
        backup = DiskBackup(
            repo, str(args.image), name="disk0", previous_point=previous, threads=args.threads
        )
    else:  # the engine's default thread count
        backup = DiskBackup(repo, str(args.image), name="disk0", previous_point=previous)
    result = backup.run()
    json.dump(result.as_dict(), sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
