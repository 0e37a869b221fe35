"""The agent's configuration: one TOML file (mode 0600) written at registration.

Default location ``/etc/kluis/agent.toml``; ``--config-dir`` or ``KLUIS_AGENT_CONFIG_DIR``
choose another directory (tests use temporary ones). Example::

    [vault]
    id = "4f1c..."                       # the vault this machine belongs to
    name = "backup-01"
    url = "https://backup-01.example:8400"
    tls_fingerprint = "sha256:ab12..."   # pinned: any other certificate is refused
    tls_certificate = "vault-ca.pem"     # relative to the config directory

    [machine]
    id = "9e0d..."
    hostname = "web-01"                  # the name it registered with (230006 when it changes)
    token = "kluis_m_..."
    key_fingerprint = "..."

    [agent]
    scratch = "/var/lib/kluis/scratch"
    proxy = "http://user:pw@proxy:3128"  # optional
    max_jobs = 2
    heartbeat_interval = 60              # optional; the vault's value otherwise
    poll_wait = 30                       # seconds one long poll for work waits

    [bandwidth]                          # bytes per second; 0 = unlimited
    work_hours_limit = 0
    off_hours_limit = 0
    work_days = ["mon", "tue", "wed", "thu", "fri"]
    work_start = "08:00"
    work_end = "18:00"
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import tomli_w

from kluis.catalog import KluisError

CONFIG_NAME = "agent.toml"
DEFAULT_CONFIG_DIR = Path("/etc/kluis")
DEFAULT_SCRATCH = Path("/var/lib/kluis/scratch")
KEK_NAME = "kluis.kek"
CA_NAME = "vault-ca.pem"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*(?:/s)?\s*$", re.IGNORECASE)


def config_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The configuration directory: the option, else ``KLUIS_AGENT_CONFIG_DIR``, else /etc/kluis."""
    if explicit:
        return Path(explicit).absolute()
    env = os.environ.get("KLUIS_AGENT_CONFIG_DIR")
    return Path(env).absolute() if env else DEFAULT_CONFIG_DIR


def current_hostname(override: str | None = None) -> str:
    """This machine's host name (``KLUIS_AGENT_HOSTNAME`` or an option override it, for tests)."""
    return override or os.environ.get("KLUIS_AGENT_HOSTNAME") or socket.gethostname()


def parse_rate(text: str | int | float) -> int:
    """``"2MiB"``, ``"500k"``, ``1048576`` -> bytes per second (0 = unlimited).

    ``k``/``M``/``G`` are powers of 1000, ``KiB``/``MiB``/``GiB`` powers of 1024; a trailing
    ``B`` or ``/s`` is allowed.
    """
    if isinstance(text, bool):
        raise ValueError("a rate is a number of bytes per second")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError("a rate cannot be negative")
        return int(text)
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a rate (like 2MiB or 500k)")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    power = "kmgt".index(unit[0]) + 1 if unit[:1] in ("k", "m", "g", "t") else 0
    base = 1024 if unit[1:2] == "i" else 1000
    return int(number * base**power)


@dataclass
class Bandwidth:
    """Upload/download limits in bytes per second for work hours and off hours (0 = unlimited)."""

    work_hours_limit: int = 0
    off_hours_limit: int = 0
    work_days: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri")
    work_start: str = "08:00"
    work_end: str = "18:00"

    def validate(self, where: str) -> None:
        """Refuse settings that cannot work, naming the key."""
        for key in ("work_start", "work_end"):
            if not _TIME.match(getattr(self, key)):
                raise _invalid(where, f"bandwidth.{key} must be HH:MM")
        bad = [d for d in self.work_days if d not in DAYS]
        if bad:
            raise _invalid(where, f"bandwidth.work_days has unknown days {bad} (use {', '.join(DAYS)})")
        if self.work_hours_limit < 0 or self.off_hours_limit < 0:
            raise _invalid(where, "bandwidth limits cannot be negative")


@dataclass
class AgentConfig:
    """Everything the agent needs to talk to its vault and do its work."""

    vault_id: str
    vault_name: str
    vault_url: str
    machine_id: str
    hostname: str
    token: str
    key_fingerprint: str
    scratch: Path
    tls_fingerprint: str | None = None
    tls_certificate: str | None = None
    proxy: str | None = None
    max_jobs: int = 2
    heartbeat_interval: float | None = None
    poll_wait: float = 30.0
    bandwidth: Bandwidth = field(default_factory=Bandwidth)
    # ``[extensions] enable``: whether snapshot extensions may run (read by the disk runner
    # and by doctor straight from the file as well).
    extensions_enabled: bool = True
    # Sections this class does not model, kept verbatim so saving never drops an admin's settings.
    other_sections: dict[str, Any] = field(default_factory=dict, compare=False)
    path: Path | None = field(default=None, compare=False)

    # -- derived paths ---------------------------------------------------------------------

    @property
    def dir(self) -> Path:
        """The configuration directory."""
        return self.path.parent if self.path else DEFAULT_CONFIG_DIR

    @property
    def kek_path(self) -> Path:
        """The KEK file in the scratch folder."""
        return self.scratch / KEK_NAME

    @property
    def ca_path(self) -> Path | None:
        """The vault's pinned certificate (PEM), when the vault uses TLS."""
        if not self.tls_certificate:
            return None
        p = Path(self.tls_certificate)
        return p if p.is_absolute() else self.dir / p

    # -- TOML --------------------------------------------------------------------------------

    def to_toml(self) -> dict[str, Any]:
        """The nested TOML document."""
        vault: dict[str, Any] = {"id": self.vault_id, "name": self.vault_name, "url": self.vault_url}
        if self.tls_fingerprint:
            vault["tls_fingerprint"] = self.tls_fingerprint
        if self.tls_certificate:
            vault["tls_certificate"] = self.tls_certificate
        agent: dict[str, Any] = {
            "scratch": str(self.scratch),
            "max_jobs": self.max_jobs,
            "poll_wait": self.poll_wait,
        }
        if self.proxy:
            agent["proxy"] = self.proxy
        if self.heartbeat_interval is not None:
            agent["heartbeat_interval"] = self.heartbeat_interval
        doc: dict[str, Any] = dict(self.other_sections)
        doc["extensions"] = {**doc.get("extensions", {}), "enable": self.extensions_enabled}
        return doc | {
            "vault": vault,
            "machine": {
                "id": self.machine_id,
                "hostname": self.hostname,
                "token": self.token,
                "key_fingerprint": self.key_fingerprint,
            },
            "agent": agent,
            "bandwidth": {
                "work_hours_limit": self.bandwidth.work_hours_limit,
                "off_hours_limit": self.bandwidth.off_hours_limit,
                "work_days": list(self.bandwidth.work_days),
                "work_start": self.bandwidth.work_start,
                "work_end": self.bandwidth.work_end,
            },
        }

    def save(self, path: Path | None = None) -> Path:
        """Write atomically with mode 0600 (the file holds the machine's token)."""
        target = path or self.path or DEFAULT_CONFIG_DIR / CONFIG_NAME
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(target.parent, 0o700)
        tmp = target.with_name(target.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(tomli_w.dumps(self.to_toml()).encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        self.path = target
        return target

    @classmethod
    def load(cls, directory: Path) -> AgentConfig:
        """Read the configuration; AgentNotRegistered when there is none, AgentConfigInvalid when bad."""
        path = directory / CONFIG_NAME
        try:
            doc = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise KluisError("AgentNotRegistered", path=str(path)) from None
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise _invalid(str(path), str(exc)) from None
        return cls.from_toml(doc, path)

    @classmethod
    def from_toml(cls, doc: dict[str, Any], path: Path) -> AgentConfig:
        """Build from a parsed document, checking the type of every key."""
        where = str(path)

        def get(section: str, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
            value = doc.get(section, {}).get(key, default)
            if value is ...:
                raise _invalid(where, f"{section}.{key} is missing")
            if value is None or value is default:
                return value
            if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
                raise _invalid(where, f"{section}.{key} has the wrong type")
            return value

        try:
            bw = Bandwidth(
                work_hours_limit=parse_rate(get("bandwidth", "work_hours_limit", (int, float, str), 0)),
                off_hours_limit=parse_rate(get("bandwidth", "off_hours_limit", (int, float, str), 0)),
                work_days=tuple(str(d).lower()[:3] for d in get("bandwidth", "work_days", list, DAYS[:5])),
                work_start=get("bandwidth", "work_start", str, "08:00"),
                work_end=get("bandwidth", "work_end", str, "18:00"),
            )
        except ValueError as exc:
            raise _invalid(where, f"bandwidth: {exc}") from None
        bw.validate(where)
        hb = get("agent", "heartbeat_interval", (int, float), None)
        cfg = cls(
            vault_id=get("vault", "id", str),
            vault_name=get("vault", "name", str, ""),
            vault_url=get("vault", "url", str).rstrip("/"),
            tls_fingerprint=get("vault", "tls_fingerprint", str, None),
            tls_certificate=get("vault", "tls_certificate", str, None),
            machine_id=get("machine", "id", str),
            hostname=get("machine", "hostname", str),
            token=get("machine", "token", str),
            key_fingerprint=get("machine", "key_fingerprint", str, ""),
            scratch=Path(get("agent", "scratch", str, str(DEFAULT_SCRATCH))),
            proxy=get("agent", "proxy", str, None) or None,
            max_jobs=int(get("agent", "max_jobs", int, 2)),
            heartbeat_interval=float(hb) if hb is not None else None,
            poll_wait=float(get("agent", "poll_wait", (int, float), 30.0)),
            bandwidth=bw,
            extensions_enabled=get("extensions", "enable", bool, True),
            other_sections={k: v for k, v in doc.items() if k not in _MODELLED_SECTIONS},
            path=path,
        )
        if cfg.max_jobs < 1:
            raise _invalid(where, "agent.max_jobs must be at least 1")
        if not 0 <= cfg.poll_wait <= 60:
            raise _invalid(where, "agent.poll_wait must be between 0 and 60 seconds")
        if cfg.heartbeat_interval is not None and cfg.heartbeat_interval <= 0:
            raise _invalid(where, "agent.heartbeat_interval must be positive")
        if cfg.proxy is not None and not _proxy_url_ok(cfg.proxy):
            raise _invalid(where, "agent.proxy must be a URL like http://[USER:PASSWORD@]HOST:PORT")
        return cfg

    def replace(self, **changes: Any) -> AgentConfig:
        """A copy with some fields changed."""
        new = dataclasses.replace(self, **changes)
        new.path = self.path
        return new


_MODELLED_SECTIONS = frozenset({"vault", "machine", "agent", "bandwidth"})


def _proxy_url_ok(url: str) -> bool:
    """Whether ``url`` names an HTTP proxy the agent can talk to (scheme, host, a valid port)."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _invalid(where: str, reason: str) -> KluisError:
    return KluisError("AgentConfigInvalid", path=where, reason=reason)


def env_seconds(name: str, *, allow_zero: bool = False) -> float | None:
    """Seconds from the daemon's environment variable ``name``, for knobs of slow links and tests.

    None when it is unset, or not a finite number of seconds above zero (or zero itself,
    with ``allow_zero``): the caller's default applies, and a bad value says so in the log.
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0 if allow_zero else value > 0) or value == float("inf"):
        log = logging.getLogger("kluis.agent")
        log.warning("%s=%r is not a valid number of seconds; the default applies", name, text)
        return None
    return value
