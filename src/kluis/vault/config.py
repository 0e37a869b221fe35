"""The vault's configuration: one TOML file, written by ``kluis vault init``.

Example (every key optional except ``[vault] id`` and ``name``)::

    [vault]
    id = "4f1c..."              # stable id; credentials files name it
    name = "backup-01"
    url = "https://backup-01.example:8400"   # what agents use; default from listen + TLS

    [server]
    listen = "127.0.0.1:8400"
    tls_cert = "/etc/kluis/vault.crt"
    tls_key = "/etc/kluis/vault.key"
    tmp_dir = "/var/lib/kluis/tmp"   # uploads are spooled here before their checks

    [database]
    url = "sqlite:////var/lib/kluis/vault.db"   # or postgresql://user:pw@host/db

    [store]
    url = "file:///var/lib/kluis/store"

    [limits]
    max_machines = 50
    on_demand_daily_limit = 9
    pack_size_limit = 134217728

    [agents]
    heartbeat_interval = 60        # seconds
    unresponsive_after = 3         # missed heartbeats
    latest_version = "0.1.0"

    [scheduler]
    enabled = true
    interval = 10                  # seconds between scheduler ticks
    lease_ttl = 30                 # seconds a lease lasts without renewal
    spread = 1800                  # seconds over which one run's jobs are spread
    dispatch_timeout = 86400       # a job no agent picked up fails after this
    stall_timeout = 3600           # a running job without progress fails after this
    maintenance_time = "03:00"     # UTC: daily retention, then garbage collection

    [gc]
    grace_hours = 24
    repack_threshold = 0.5
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from kluis import __version__
from kluis.catalog import KluisError

CONFIG_NAME = "vault.toml"
DEFAULT_PORT = 8400


@dataclass
class VaultConfig:
    """Every setting of one vault process; see the module docstring for the file layout."""

    vault_id: str
    vault_name: str
    db_url: str
    store_url: str
    public_url: str | None = None
    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    tls_cert: str | None = None
    tls_key: str | None = None
    tmp_dir: str | None = None
    max_machines: int = 50
    on_demand_daily_limit: int = 9
    pack_size_limit: int = 128 * 1024 * 1024
    heartbeat_interval: int = 60
    unresponsive_after: int = 3
    latest_agent_version: str = __version__
    scheduler_enabled: bool = True
    scheduler_interval: float = 10.0
    lease_ttl: float = 30.0
    schedule_spread: int = 1800
    dispatch_timeout: int = 24 * 3600
    stall_timeout: int = 3600
    maintenance_time: str = "03:00"
    gc_grace_hours: float = 24.0
    gc_repack_threshold: float = 0.5
    path: Path | None = field(default=None, compare=False)

    @property
    def url(self) -> str:
        """The URL agents use to reach this vault."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host, _, port = self.listen.rpartition(":")
        if host in ("", "0.0.0.0", "::", "[::]"):
            host = "127.0.0.1"
        scheme = "https" if self.tls_cert else "http"
        return f"{scheme}://{host}:{port}"

    def validate(self) -> None:
        """Refuse values that cannot work, naming the key."""
        where = str(self.path or "configuration")
        checks: list[tuple[bool, str]] = [
            (bool(self.vault_id), "vault.id is empty"),
            (bool(self.vault_name), "vault.name is empty"),
            (self.max_machines >= 1, "limits.max_machines must be at least 1"),
            (self.on_demand_daily_limit >= 1, "limits.on_demand_daily_limit must be at least 1"),
            (self.pack_size_limit >= 1024, "limits.pack_size_limit must be at least 1024 bytes"),
            (self.heartbeat_interval >= 1, "agents.heartbeat_interval must be at least 1 second"),
            (self.unresponsive_after >= 1, "agents.unresponsive_after must be at least 1"),
            (self.scheduler_interval > 0, "scheduler.interval must be positive"),
            (self.lease_ttl > self.scheduler_interval, "scheduler.lease_ttl must exceed scheduler.interval"),
            (self.schedule_spread >= 0, "scheduler.spread must not be negative"),
            (self.gc_grace_hours >= 0, "gc.grace_hours must not be negative"),
            (0 <= self.gc_repack_threshold <= 1, "gc.repack_threshold must be between 0 and 1"),
            ((self.tls_cert is None) == (self.tls_key is None), "server.tls_cert and tls_key go together"),
        ]
        try:
            hh, mm = self.maintenance_time.split(":")
            checks.append((0 <= int(hh) < 24 and 0 <= int(mm) < 60, "scheduler.maintenance_time"))
        except ValueError:
            checks.append((False, "scheduler.maintenance_time must be HH:MM"))
        for ok, reason in checks:
            if not ok:
                raise KluisError("VaultConfigInvalid", path=where, reason=reason)

    # -- TOML ------------------------------------------------------------------------------

    def to_toml(self) -> dict[str, Any]:
        """The nested TOML document for this configuration."""
        vault: dict[str, Any] = {"id": self.vault_id, "name": self.vault_name}
        if self.public_url:
            vault["url"] = self.public_url
        server: dict[str, Any] = {"listen": self.listen}
        if self.tls_cert:
            server["tls_cert"] = self.tls_cert
        if self.tls_key:
            server["tls_key"] = self.tls_key
        if self.tmp_dir:
            server["tmp_dir"] = self.tmp_dir
        return {
            "vault": vault,
            "server": server,
            "database": {"url": self.db_url},
            "store": {"url": self.store_url},
            "limits": {
                "max_machines": self.max_machines,
                "on_demand_daily_limit": self.on_demand_daily_limit,
                "pack_size_limit": self.pack_size_limit,
            },
            "agents": {
                "heartbeat_interval": self.heartbeat_interval,
                "unresponsive_after": self.unresponsive_after,
                "latest_version": self.latest_agent_version,
            },
            "scheduler": {
                "enabled": self.scheduler_enabled,
                "interval": self.scheduler_interval,
                "lease_ttl": self.lease_ttl,
                "spread": self.schedule_spread,
                "dispatch_timeout": self.dispatch_timeout,
                "stall_timeout": self.stall_timeout,
                "maintenance_time": self.maintenance_time,
            },
            "gc": {"grace_hours": self.gc_grace_hours, "repack_threshold": self.gc_repack_threshold},
        }

    def save(self, path: Path) -> None:
        """Write the configuration (mode 0600: it may hold database passwords)."""
        data = tomli_w.dumps(self.to_toml()).encode()
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        self.path = path

    @classmethod
    def load(cls, path: Path) -> VaultConfig:
        """Read and validate a configuration file; VaultConfigInvalid when it cannot be used."""
        try:
            doc = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise KluisError("VaultConfigInvalid", path=str(path), reason="the file does not exist") from None
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise KluisError("VaultConfigInvalid", path=str(path), reason=str(exc)) from None
        cfg = cls.from_toml(doc, path)
        cfg.validate()
        return cfg

    @classmethod
    def from_toml(cls, doc: dict[str, Any], path: Path | None = None) -> VaultConfig:
        """Build from a parsed TOML document, type-checking every key it reads."""
        where = str(path or "configuration")

        def get(section: str, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
            value = doc.get(section, {}).get(key, default)
            if value is None:
                return None
            if isinstance(value, bool) and kind in (int, float, (int, float)):
                raise KluisError("VaultConfigInvalid", path=where, reason=f"{section}.{key} must be a number")
            if not isinstance(value, kind):
                raise KluisError(
                    "VaultConfigInvalid", path=where, reason=f"{section}.{key} has the wrong type"
                )
            return value

        base = cls(vault_id="", vault_name="", db_url="", store_url="")
        values = {
            "vault_id": get("vault", "id", str, ""),
            "vault_name": get("vault", "name", str, ""),
            "public_url": get("vault", "url", str),
            "listen": get("server", "listen", str, base.listen),
            "tls_cert": get("server", "tls_cert", str),
            "tls_key": get("server", "tls_key", str),
            "tmp_dir": get("server", "tmp_dir", str),
            "db_url": get("database", "url", str, ""),
            "store_url": get("store", "url", str, ""),
            "max_machines": get("limits", "max_machines", int, base.max_machines),
            "on_demand_daily_limit": get("limits", "on_demand_daily_limit", int, base.on_demand_daily_limit),
            "pack_size_limit": get("limits", "pack_size_limit", int, base.pack_size_limit),
            "heartbeat_interval": get("agents", "heartbeat_interval", int, base.heartbeat_interval),
            "unresponsive_after": get("agents", "unresponsive_after", int, base.unresponsive_after),
            "latest_agent_version": get("agents", "latest_version", str, base.latest_agent_version),
            "scheduler_enabled": get("scheduler", "enabled", bool, True),
            "scheduler_interval": float(get("scheduler", "interval", (int, float), base.scheduler_interval)),
            "lease_ttl": float(get("scheduler", "lease_ttl", (int, float), base.lease_ttl)),
            "schedule_spread": get("scheduler", "spread", int, base.schedule_spread),
            "dispatch_timeout": get("scheduler", "dispatch_timeout", int, base.dispatch_timeout),
            "stall_timeout": get("scheduler", "stall_timeout", int, base.stall_timeout),
            "maintenance_time": get("scheduler", "maintenance_time", str, base.maintenance_time),
            "gc_grace_hours": float(get("gc", "grace_hours", (int, float), base.gc_grace_hours)),
            "gc_repack_threshold": float(
                get("gc", "repack_threshold", (int, float), base.gc_repack_threshold)
            ),
        }
        if not values["db_url"]:
            raise KluisError("VaultConfigInvalid", path=where, reason="database.url is missing")
        if not values["store_url"]:
            raise KluisError("VaultConfigInvalid", path=where, reason="store.url is missing")
        cfg = cls(**values)
        cfg.path = path
        return cfg

    def with_overrides(self, **changes: Any) -> VaultConfig:
        """A copy with the given non-None fields replaced (command-line options)."""
        clean = {k: v for k, v in changes.items() if v is not None}
        cfg = dataclasses.replace(self, **clean)
        cfg.path = self.path
        cfg.validate()
        return cfg


def new_config(
    data_dir: Path, name: str, *, listen: str | None = None, url: str | None = None
) -> VaultConfig:
    """A fresh configuration for a vault whose database and store live under ``data_dir``."""
    data_dir = data_dir.absolute()
    cfg = VaultConfig(
        vault_id=uuid.uuid4().hex,
        vault_name=name,
        db_url=f"sqlite:///{data_dir / 'vault.db'}",
        store_url=f"file://{data_dir / 'store'}",
        public_url=url,
    )
    if listen:
        cfg.listen = listen
    cfg.validate()
    return cfg
