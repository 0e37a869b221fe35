"""Reading and applying file metadata: owner, mode, times, xattrs and POSIX ACLs.

POSIX ACLs are the extended attributes ``system.posix_acl_access`` and
``system.posix_acl_default``, so carrying xattrs carries the ACLs too.
"""

from __future__ import annotations

import base64
import errno
import grp
import os
import pwd
import stat
from functools import lru_cache

from kluis.engine.trees import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SYMLINK, Node


@lru_cache(maxsize=4096)
def user_name(uid: int) -> str | None:
    """Name of a uid, or None when the system does not know it."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


@lru_cache(maxsize=4096)
def group_name(gid: int) -> str | None:
    """Name of a gid, or None when the system does not know it."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


@lru_cache(maxsize=4096)
def uid_for(name: str | None, fallback: int) -> int:
    """The local uid of a user name (restore maps by name when it can)."""
    if name:
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            pass
    return fallback


@lru_cache(maxsize=4096)
def gid_for(name: str | None, fallback: int) -> int:
    """The local gid of a group name."""
    if name:
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            pass
    return fallback


# Node type of each file format (the st_mode bits); sockets have none and are skipped.
STAT_TYPES = {
    stat.S_IFREG: FILE,
    stat.S_IFDIR: DIR,
    stat.S_IFLNK: SYMLINK,
    stat.S_IFIFO: FIFO,
    stat.S_IFCHR: CHARDEV,
    stat.S_IFBLK: BLOCKDEV,
}


def node_type(st: os.stat_result) -> str | None:
    """The tree node type for a stat result; None for sockets (skipped)."""
    return STAT_TYPES.get(stat.S_IFMT(st.st_mode))


def read_xattrs(path: bytes) -> dict[str, str] | None:
    """All extended attributes of ``path`` (not following symlinks), values base64."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return None
    if not names:
        return None
    out: dict[str, str] = {}
    for name in names:
        try:
            out[name] = base64.b64encode(os.getxattr(path, name, follow_symlinks=False)).decode()
        except OSError:
            continue
    return out or None


def node_from_stat(name: str, st: os.stat_result, ntype: str, path: bytes) -> Node:
    """A node with the metadata of ``st`` (content and subtree are filled in by the caller)."""
    node = Node(
        name=name,
        type=ntype,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        user=user_name(st.st_uid),
        group=group_name(st.st_gid),
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        # atime is left out on purpose: reading changes it, and it would make every listing new.
        size=st.st_size if ntype == FILE else 0,
        xattrs=read_xattrs(path),
    )
    if ntype in (CHARDEV, BLOCKDEV):
        node.rdev = st.st_rdev
    if ntype == FILE and st.st_nlink > 1:
        node.nlink = st.st_nlink
    if ntype == SYMLINK:
        node.target = os.fsdecode(os.readlink(path))
    return node


def apply_metadata(name: bytes, node: Node, dir_fd: int, *, owner: bool) -> list[str]:
    """Set owner, xattrs, mode and times of ``name`` in ``dir_fd``; returns what failed.

    Never follows a symlink: everything but a link itself is changed through an
    ``O_PATH | O_NOFOLLOW`` descriptor (via /proc/self/fd), so a link swapped in
    meanwhile is not followed. Order matters: chown clears set-uid bits, so mode
    comes after it; times come last.
    """
    problems: list[str] = []
    if node.type == SYMLINK:
        if owner:
            try:
                uid, gid = uid_for(node.user, node.uid), gid_for(node.group, node.gid)
                os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
            except OSError as exc:
                problems.append(f"owner: {exc.strerror}")
        _set_times(name, node, dir_fd, problems)
        return problems
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        return [f"open: {exc.strerror}"]
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            return ["replaced by a symbolic link during restore; left alone"]
        # An O_PATH descriptor cannot be written through; its /proc name can, and it
        # still names exactly the object opened (no path lookup in the restored tree).
        problems += _apply(f"/proc/self/fd/{fd}", node, owner=owner, clean=False)
    finally:
        os.close(fd)
    return problems


def apply_metadata_fd(fd: int, node: Node, *, owner: bool, clean: bool) -> list[str]:
    """Set owner, xattrs, mode and times through an open descriptor; returns what failed.

    For files and directories this restore has just opened: no path is looked up
    again, so nothing can be swapped in between. ``clean`` says the object was
    created by this restore in a directory without a default ACL, so it carries no
    attributes of its own yet and the ``listxattr`` pass that removes strays is skipped.
    """
    return _apply(fd, node, owner=owner, clean=clean)


def _apply(target: int | str, node: Node, *, owner: bool, clean: bool) -> list[str]:
    """Owner, xattrs, mode, times on a descriptor or a /proc/self/fd name (chown before mode:
    it clears set-uid bits; times last)."""
    problems: list[str] = []
    if owner:
        try:
            os.chown(target, uid_for(node.user, node.uid), gid_for(node.group, node.gid))
        except OSError as exc:
            problems.append(f"owner: {exc.strerror}")
    wanted = node.xattrs or {}
    if not clean:
        try:
            present = os.listxattr(target)
        except OSError:
            present = []
        for key in present:
            # New files inherit a directory's default ACL; the original may not have had one.
            if key not in wanted:
                try:
                    os.removexattr(target, key)
                except OSError:
                    pass
    for key, value in wanted.items():
        try:
            os.setxattr(target, key, base64.b64decode(value))
        except OSError as exc:
            # Without root, trusted.* and security.* names are refused: expected.
            if owner or exc.errno not in (errno.EPERM, errno.ENOTSUP):
                problems.append(f"xattr {key}: {exc.strerror}")
    try:
        os.chmod(target, node.mode)
    except OSError as exc:
        problems.append(f"mode: {exc.strerror}")
    try:
        os.utime(target, ns=(node.atime_ns or node.mtime_ns, node.mtime_ns))
    except OSError as exc:
        problems.append(f"times: {exc.strerror}")
    return problems


def has_default_acl(fd: int) -> bool:
    """Whether new entries in the directory ``fd`` inherit an ACL (when unsure: True)."""
    try:
        os.getxattr(fd, "system.posix_acl_default")
    except OSError as exc:
        return exc.errno not in (errno.ENODATA, errno.ENOTSUP)
    return True


def _set_times(name: bytes, node: Node, dir_fd: int, problems: list[str]) -> None:
    try:
        os.utime(
            name, ns=(node.atime_ns or node.mtime_ns, node.mtime_ns), dir_fd=dir_fd, follow_symlinks=False
        )
    except OSError as exc:
        problems.append(f"times: {exc.strerror}")
