"""What a file-tree backup is asked to do and what it reports; which paths it leaves out."""

from __future__ import annotations

import fnmatch
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class BackupOptions:
    """What to leave out and how hard to work."""

    excludes: Sequence[str] = ()
    exclude_if_present: Sequence[str] = ()
    one_file_system: bool = False
    threads: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))
    hostname: str = field(default_factory=socket.gethostname)
    item: str | None = None
    tags: Sequence[str] = ()


@dataclass
class BackupResult:
    """What a finished backup reports."""

    point_id: str
    status: str
    files: int
    dirs: int
    bytes: int
    new_bytes: int
    stored_bytes: int
    warnings: int
    files_read: int
    failed_files_log: str | None
    seconds: float
    first_warnings: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """For job reports and ``--json``."""
        return dict(self.__dict__)


class ExclusionRules:
    """Glob patterns: without a slash they match a name, with one the whole path."""

    def __init__(self, patterns: Sequence[str]) -> None:
        names = [p for p in patterns if "/" not in p]
        paths = [p.rstrip("/") for p in patterns if "/" in p]
        self._name_re = re.compile("|".join(fnmatch.translate(p) for p in names)) if names else None
        self._path_re = re.compile("|".join(fnmatch.translate(p) for p in paths)) if paths else None
        self.active = bool(names or paths)

    def excluded(self, path: str, name: str) -> bool:
        """Whether a path is excluded."""
        if self._name_re is not None and self._name_re.match(name):
            return True
        return self._path_re is not None and self._path_re.match(path) is not None
