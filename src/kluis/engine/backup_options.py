"""What a file-tree backup is asked to do and what it reports; which paths it leaves out."""

from __future__ import annotations

import fnmatch
import os
import re
import socket
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kluis.catalog import KluisError


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


def drop_covered_sources(
    sources: Sequence[str], rules: ExclusionRules, markers: Sequence[str], one_file_system: bool
) -> list[str]:
    """The sources without those that lie inside another source's walk.

    ``sources`` are absolute, normalised and existing. A source inside another one is
    dropped when the walk of the outer one reaches it: every folder on the way down is a
    real folder (not a symbolic link), none is excluded by a pattern or a marker file, and
    with ``one_file_system`` none is on another file system. When the walk would not reach
    it, no tree could hold both, so :class:`KluisError` ``BackupSourcesOverlap`` says why.
    """
    kept: list[str] = []
    for src in sorted(set(sources)):
        outer = next((k for k in kept if k == "/" or src.startswith(k + "/")), None)
        if outer is None:
            kept.append(src)
            continue
        reason = _unreached(outer, src, rules, markers, one_file_system)
        if reason is not None:
            raise KluisError("BackupSourcesOverlap", path=src, outer=outer, reason=reason)
    return kept


def _unreached(
    outer: str, inner: str, rules: ExclusionRules, markers: Sequence[str], one_file_system: bool
) -> str | None:
    """Why the walk of ``outer`` does not back ``inner`` up; None when it does."""
    root_dev = os.lstat(outer).st_dev
    parts = inner[len(outer) :].strip("/").split("/")
    path = outer
    for i, name in enumerate(parts):
        path = os.path.join(path, name)
        if rules.excluded(path, name):
            return f"{path} is excluded by a pattern"
        st = os.lstat(path)
        is_dir = stat.S_ISDIR(st.st_mode)
        if i < len(parts) - 1 and not is_dir:
            kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a folder"
            return f"{path} is {kind}, and the walk does not follow it"
        if is_dir and any(os.path.lexists(os.path.join(path, m)) for m in markers):
            return f"{path} holds an exclude marker file"
        if is_dir and one_file_system and st.st_dev != root_dev:
            return f"{path} is on another file system and --one-file-system is set"
    return None
