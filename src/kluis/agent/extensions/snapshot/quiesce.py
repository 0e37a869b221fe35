"""Quiescing before a snapshot: pre-script, file-system freeze, post-script.

The quiesce configuration is a TOML file that must belong to root with no access for
group or others (0600), because it names programs the agent runs as root::

    safe_freeze_wait_seconds = 30     # the watchdog thaws after this, whatever happens
    freeze = true                     # freeze the item's mounted file systems
    skip_mounts = ["/boot"]           # never freeze these
    continue_on_failure = false       # a failing script: fail the backup (false) or
                                      # go on with a file-system-consistent point (true)

    [pre]
    script = "/etc/kluis/quiesce/pre.sh"   # root-owned, 0700
    timeout = 60

    [post]
    script = "/etc/kluis/quiesce/post.sh"
    timeout = 60

Order: pre-script, freeze (with the watchdog), snapshot, thaw, post-script. The
post-script runs whenever the pre-script ran, also when the freeze or the snapshot
failed, so the application is always resumed. Consistency of the result:
``application`` when scripts are configured and all succeeded and the freeze
succeeded, ``file-system`` when the freeze succeeded, ``crash`` otherwise.
"""

from __future__ import annotations

import contextlib
import enum
import os
import pwd
import signal
import stat
import subprocess
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kluis.catalog import KluisError

from .freeze import FreezeGuard

DEFAULT_SAFE_FREEZE_WAIT_SECONDS = 30.0
DEFAULT_SCRIPT_TIMEOUT = 60.0
# Output kept from a failing script for the error's detail.
_OUTPUT_TAIL = 400


class Consistency(enum.StrEnum):
    """How consistent a recovery point is, best first."""

    APPLICATION = "application"
    FILE_SYSTEM = "file-system"
    CRASH = "crash"


@dataclass(frozen=True)
class ScriptSpec:
    """One pre- or post-snapshot script."""

    path: Path
    timeout: float = DEFAULT_SCRIPT_TIMEOUT


@dataclass(frozen=True)
class QuiesceConfig:
    """Settings of one quiesce; ``QuiesceConfig()`` freezes only, without scripts."""

    pre: ScriptSpec | None = None
    post: ScriptSpec | None = None
    continue_on_failure: bool = False
    freeze: bool = True
    skip_mounts: tuple[str, ...] = ()
    safe_freeze_wait_seconds: float = DEFAULT_SAFE_FREEZE_WAIT_SECONDS

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> QuiesceConfig:
        """Read and check a configuration file (owner and mode first, then content)."""
        p = Path(path)
        try:
            st = p.stat()
        except FileNotFoundError as exc:
            raise KluisError("QuiesceConfigInvalid", path=str(p), reason="the file does not exist") from exc
        if st.st_uid != 0 or st.st_mode & 0o077:
            raise KluisError(
                "QuiesceConfigUnsafe", path=str(p), owner=_owner(st.st_uid), mode=_mode(st.st_mode)
            )
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise KluisError("QuiesceConfigInvalid", path=str(p), reason=str(exc)) from exc
        return cls.from_dict(data, source=str(p))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "quiesce configuration") -> QuiesceConfig:
        """Build from parsed TOML; unknown or mistyped settings are refused."""

        def bad(reason: str) -> KluisError:
            return KluisError("QuiesceConfigInvalid", path=source, reason=reason)

        known = {"pre", "post", "continue_on_failure", "freeze", "skip_mounts", "safe_freeze_wait_seconds"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise bad(f"unknown setting {unknown[0]!r}")

        def number(value: Any, name: str) -> float:
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise bad(f"{name} must be a positive number of seconds")
            return float(value)

        def flag(name: str, default: bool) -> bool:
            value = data.get(name, default)
            if not isinstance(value, bool):
                raise bad(f"{name} must be true or false")
            return value

        def script(phase: str) -> ScriptSpec | None:
            section = data.get(phase)
            if section is None:
                return None
            if not isinstance(section, dict) or not isinstance(section.get("script"), str):
                raise bad(f'[{phase}] needs script = "/absolute/path"')
            extra = sorted(set(section) - {"script", "timeout"})
            if extra:
                raise bad(f"unknown setting {phase}.{extra[0]}")
            spath = Path(section["script"])
            if not spath.is_absolute():
                raise bad(f"{phase}.script must be an absolute path")
            timeout = number(section.get("timeout", DEFAULT_SCRIPT_TIMEOUT), f"{phase}.timeout")
            return ScriptSpec(spath, timeout)

        skip = data.get("skip_mounts", [])
        if not isinstance(skip, list) or not all(isinstance(s, str) for s in skip):
            raise bad("skip_mounts must be a list of mount points")
        return cls(
            pre=script("pre"),
            post=script("post"),
            continue_on_failure=flag("continue_on_failure", False),
            freeze=flag("freeze", True),
            skip_mounts=tuple(os.path.normpath(s) for s in skip),
            safe_freeze_wait_seconds=number(
                data.get("safe_freeze_wait_seconds", DEFAULT_SAFE_FREEZE_WAIT_SECONDS),
                "safe_freeze_wait_seconds",
            ),
        )


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _mode(mode: int) -> str:
    return f"{stat.S_IMODE(mode):04o}"


def check_script(phase: str, spec: ScriptSpec) -> None:
    """Refuse a script that is missing, not root's, open to group or others, or not executable."""
    try:
        st = spec.path.stat()
    except FileNotFoundError as exc:
        raise KluisError("QuiesceScriptMissing", phase=phase, script=str(spec.path)) from exc
    if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o077 or not st.st_mode & 0o100:
        raise KluisError(
            "QuiesceScriptUnsafe",
            phase=phase,
            script=str(spec.path),
            owner=_owner(st.st_uid),
            mode=_mode(st.st_mode),
        )


def run_script(phase: str, spec: ScriptSpec, env: dict[str, str] | None = None) -> None:
    """Check and run one script; QuiesceScriptFailed or QuiesceScriptTimeout when it fails."""
    check_script(phase, spec)
    full_env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    full_env.update(env or {})
    full_env["KLUIS_QUIESCE_PHASE"] = phase
    proc = subprocess.Popen(
        [str(spec.path), phase],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=full_env,
        cwd="/",
        start_new_session=True,  # its own group, so a timeout stops its children too
    )
    try:
        out, _ = proc.communicate(timeout=spec.timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise KluisError(
            "QuiesceScriptTimeout", phase=phase, script=str(spec.path), seconds=f"{spec.timeout:g}"
        ) from None
    if proc.returncode != 0:
        tail = out.decode(errors="replace").strip()[-_OUTPUT_TAIL:]
        raise KluisError(
            "QuiesceScriptFailed",
            phase=phase,
            script=str(spec.path),
            exit_code=proc.returncode,
            detail=tail or None,
        )


@dataclass
class QuiesceOutcome:
    """What a quiesce achieved, filled in as it goes."""

    scripts_configured: bool = False
    scripts_ok: bool = True
    frozen_mounts: list[str] = field(default_factory=list)
    freeze_ok: bool = False
    window_exceeded: bool = False
    freeze_seconds: float = 0.0
    warnings: list[KluisError] = field(default_factory=list)
    watchdog_status: dict[str, Any] | None = None

    @property
    def consistency(self) -> Consistency:
        """The consistency a snapshot taken inside this quiesce has."""
        if not self.freeze_ok or self.window_exceeded:
            return Consistency.CRASH
        if self.scripts_configured and self.scripts_ok:
            return Consistency.APPLICATION
        return Consistency.FILE_SYSTEM


def freezable(mounts: list[str], skip: tuple[str, ...]) -> list[str]:
    """``mounts`` without the skipped ones (compared as normalised real paths)."""
    skipped = {os.path.realpath(s) for s in skip}
    return [m for m in mounts if os.path.realpath(m) not in skipped]


@contextlib.contextmanager
def quiesced(
    config: QuiesceConfig,
    mounts: list[str],
    *,
    item: str = "",
    env: dict[str, str] | None = None,
    watchdog_status: str | None = None,
) -> Iterator[QuiesceOutcome]:
    """Quiesce for the ``with`` body (take the snapshot inside it).

    Script failures raise unless ``continue_on_failure``; then they are kept as warnings
    and the consistency drops. A freeze failure always raises UserErrorFsFreezeFailed
    (skip the mount in ``skip_mounts`` to go on without it). Thawing is in a
    ``finally``.
    """
    outcome = QuiesceOutcome(scripts_configured=bool(config.pre or config.post))
    script_env = dict(env or {})
    script_env.setdefault("KLUIS_ITEM", item)
    pre_ran = False
    body_failed = False

    def script_failed(exc: KluisError) -> None:
        outcome.scripts_ok = False
        if not config.continue_on_failure:
            raise exc
        outcome.warnings.append(exc)

    try:
        if config.pre is not None:
            try:
                check_script("pre", config.pre)
                pre_ran = True  # from here on the post-script must resume the application
                run_script("pre", config.pre, script_env)
            except KluisError as exc:
                script_failed(exc)
        targets = freezable(mounts, config.skip_mounts) if config.freeze else []
        guard = FreezeGuard(targets, config.safe_freeze_wait_seconds, status_path=watchdog_status)
        started = time.monotonic()
        with guard:
            outcome.frozen_mounts = list(guard.frozen)
            outcome.freeze_ok = bool(guard.frozen)
            yield outcome
        outcome.freeze_seconds = time.monotonic() - started if targets else 0.0
        outcome.window_exceeded = guard.window_exceeded
        outcome.watchdog_status = guard.watchdog_status
        if guard.window_exceeded:
            outcome.warnings.append(
                KluisError(
                    "FreezeWindowExceeded",
                    item=item,
                    seconds=f"{guard.elapsed:.1f}",
                    limit=f"{config.safe_freeze_wait_seconds:g}",
                )
            )
    except BaseException:
        body_failed = True
        raise
    finally:
        if config.post is not None and (pre_ran or config.pre is None):
            try:
                run_script("post", config.post, script_env)
            except KluisError as exc:
                if body_failed:  # keep the first error; this one becomes a warning
                    outcome.scripts_ok = False
                    outcome.warnings.append(exc)
                else:
                    script_failed(exc)
