"""Real processes for agent tests: a vault server (``kluis vault serve``) and agent daemons.

Everything runs through the ``kluis`` command line as a user would run it; the vault is
driven through its HTTP API with the admin token. Ports are free loopback ports.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import tomli_w

from tests.support._process import clean_env, log_tail, spawn, stop
from tests.support.ports import wait_for_tcp
from tests.vault.helpers import VaultServer as _VaultServer

PASSPHRASE = "correct horse battery staple 42"
OTHER_PASSPHRASE = "a different passphrase of 32 chars"
FINAL = ("Completed", "CompletedWithWarnings", "Failed", "Cancelled")


def base_env() -> dict[str, str]:
    """The test process's environment without proxies or Kluis settings that would leak in."""
    env = clean_env(
        ["KLUIS_", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"]
    )
    env["KLUIS_FAST_KDF"] = "1"
    env["KLUIS_LANG"] = "en"
    env["NO_PROXY"] = "*"
    env["COLUMNS"] = "200"
    return env


@dataclass
class Result:
    """A finished ``kluis`` command."""

    rc: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        """Its ``--json`` output."""
        return json.loads(self.stdout)

    @property
    def error(self) -> dict[str, Any]:
        """The catalog error of a failed ``--json`` command."""
        data = self.json
        assert isinstance(data, dict) and "error" in data, self.stdout + self.stderr
        return dict(data["error"])


@functools.cache
def netns_available() -> bool:
    """Whether ``unshare --net`` works here (root, and a kernel with network namespaces)."""
    try:
        return subprocess.run(["unshare", "--net", "true"], capture_output=True, check=False).returncode == 0
    except FileNotFoundError:
        return False


def kluis(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    netns: bool = False,
    cwd: Path | None = None,
) -> Result:
    """Run ``kluis ARGS`` (optionally in a fresh network namespace with no network at all)."""
    cmd = [sys.executable, "-m", "kluis", *args]
    if netns:
        cmd = ["unshare", "--net", *cmd]
    proc = subprocess.run(
        cmd, env=env or base_env(), capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


class VaultServer(_VaultServer):
    """The vault tests' server process (``kluis vault serve``), with what agent tests need on top."""

    def __init__(
        self, data: Path, *, name: str = "testvault", cert: Path | None = None, **overrides: Any
    ) -> None:
        super().__init__(data, f"sqlite:///{data / 'vault.db'}", name=name, **overrides)
        self.cert = cert
        if cert is not None:
            self.url = f"https://127.0.0.1:{self.port}"

    @property
    def vault_id(self) -> str:
        """The vault's id."""
        return self.config.vault_id

    @property
    def name(self) -> str:
        """The vault's name."""
        return self.config.vault_name

    def start(self, timeout: float = 30.0) -> VaultServer:
        """Start ``kluis vault serve`` and wait for it (over HTTPS when it has a certificate)."""
        if self.cert is None:
            super().start(timeout)
            return self
        args = [sys.executable, "-m", "kluis", "vault", "serve", "--data", str(self.data)]
        self.process = spawn(args, log=self.log, env=base_env(), cwd=self.data)
        context = ssl.create_default_context(cafile=str(self.cert))
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=1, verify=context).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vault did not start:\n{log_tail(self.log)}")
            time.sleep(0.05)

    def credentials_file(self, out_dir: Path) -> Path:
        """A fresh credentials file written where an administrator would copy it to."""
        out_dir.mkdir(parents=True, exist_ok=True)
        made = kluis("vault", "credentials", "--data", str(self.data), "--out", str(out_dir), "--json")
        assert made.rc == 0, made.stdout + made.stderr
        return Path(made.json["file"])

    def job(self, job_id: str) -> dict[str, Any]:
        """A job as the API shows it."""
        data: dict[str, Any] = self.ok("GET", f"/api/v1/jobs/{job_id}")
        return data

    def wait_job(self, job_id: str, timeout: float = 60, statuses: tuple[str, ...] = FINAL) -> dict[str, Any]:
        """Poll until the job reaches one of ``statuses``."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in statuses:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s: {job}")
            time.sleep(0.1)

    def backup(self, item_id: str) -> dict[str, Any]:
        """Trigger an on-demand backup; the job."""
        data: dict[str, Any] = self.ok("POST", f"/api/v1/items/{item_id}/backup", json={})
        return data

    def files_item(self, machine_id: str, policy_id: str, paths: list[str], name: str) -> dict[str, Any]:
        """Protect files and folders of a machine."""
        body = {"machine_id": machine_id, "name": name, "kind": "files", "paths": paths, "policy": policy_id}
        data: dict[str, Any] = self.ok("POST", "/api/v1/items", json=body)
        return data


def start_vault(workdir: Path, name: str = "testvault", **overrides: Any) -> VaultServer:
    """A started vault with its data under ``workdir/name``."""
    return VaultServer(workdir / name, name=name, **overrides).start()


@dataclass
class AgentProc:
    """One agent: its configuration directory, scratch folder, host name and daemon process."""

    root: Path
    hostname: str
    scratch: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def config_dir(self) -> Path:
        """Its configuration directory."""
        return self.root / "etc"

    @property
    def log(self) -> Path:
        """The daemon's output."""
        return self.root / "agent.log"

    @property
    def config_file(self) -> Path:
        """agent.toml."""
        return self.config_dir / "agent.toml"

    def env(self) -> dict[str, str]:
        """The environment its commands run with."""
        env = base_env()
        env.update(self.extra_env)
        return env

    def cli(
        self, *args: str, hostname: str | None = None, netns: bool = False, timeout: float = 60
    ) -> Result:
        """``kluis agent ARGS --config-dir ...``."""
        cmd = ["agent", *args, "--config-dir", str(self.config_dir)]
        if args and args[0] in ("register", "run", "status"):
            cmd += ["--hostname", hostname or self.hostname]
        return kluis(*cmd, env=self.env(), netns=netns, timeout=timeout)

    def register(self, credentials: Path, passphrase: str = PASSPHRASE, *extra: str) -> Result:
        """``kluis agent register`` with a passphrase file."""
        pfile = self.root / "passphrase"
        self.root.mkdir(parents=True, exist_ok=True)
        pfile.write_text(passphrase + "\n")
        return self.cli(
            "register",
            "--vault-credentials",
            str(credentials),
            "--passphrase-file",
            str(pfile),
            "--scratch",
            str(self.scratch),
            "--json",
            *extra,
        )

    def tune(self, **agent: Any) -> None:
        """Change ``[agent]``/``[bandwidth]`` settings in agent.toml (faster heartbeats for tests)."""
        doc = tomllib.loads(self.config_file.read_text())
        for key, value in agent.items():
            section = "bandwidth" if key in ("work_hours_limit", "off_hours_limit") else "agent"
            doc.setdefault(section, {})[key] = value
        self.config_file.write_text(tomli_w.dumps(doc))

    def machine_id(self) -> str:
        """The id the vault gave this machine."""
        return str(tomllib.loads(self.config_file.read_text())["machine"]["id"])

    def start(self, hostname: str | None = None) -> None:
        """Start ``kluis agent run``; returns once it has sent a heartbeat or failed one."""
        args = [sys.executable, "-m", "kluis", "agent", "run", "--config-dir", str(self.config_dir)]
        args += ["--hostname", hostname or self.hostname]
        state = self.scratch / "agent-state.json"
        before = _mtime(state)
        self.process = spawn(args, log=self.log, env=self.env(), cwd=self.root)
        deadline = time.monotonic() + 20
        while _mtime(state) == before or "last_heartbeat" not in (
            state.read_text() if state.exists() else ""
        ):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"agent did not start:\n{log_tail(self.log)}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM the daemon."""
        if self.process is not None:
            stop(self.process, timeout=30)
            self.process = None

    def kill(self) -> None:
        """SIGKILL the daemon (a crash)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def state(self) -> dict[str, Any]:
        """The daemon's status file."""
        try:
            data: dict[str, Any] = json.loads((self.scratch / "agent-state.json").read_text())
        except (OSError, ValueError):
            return {}
        return data


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def rewrite_credentials(path: Path, out: Path, **changes: Any) -> Path:
    """A copy of a credentials file with fields changed and its checksum made to match again."""
    body = json.loads(path.read_text())
    body.update(changes)
    clean = {k: v for k, v in body.items() if k != "checksum"}
    body["checksum"] = hashlib.sha256(
        json.dumps(clean, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(body, indent=1) + "\n")
    return out


@contextlib.contextmanager
def loop_filesystem(workdir: Path, size_mib: int = 24) -> Iterator[Path]:
    """A small ext4 file system on a loop device, mounted; removed afterwards."""
    image = workdir / "scratch.img"
    mountpoint = workdir / "mnt"
    mountpoint.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    # -m 0: no blocks reserved for root, so "full" means full for the agent (which runs as root).
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True, capture_output=True)
    device = subprocess.run(
        ["losetup", "-f", "--show", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        subprocess.run(["mount", device, str(mountpoint)], check=True, capture_output=True)
        try:
            yield mountpoint
        finally:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False, capture_output=True)
    finally:
        subprocess.run(["losetup", "-d", device], check=False, capture_output=True)
        image.unlink(missing_ok=True)


def fill(path: Path) -> Path:
    """Fill the file system holding ``path`` until writes fail; returns the filler file."""
    filler = path / "filler"
    block = b"\0" * (1024 * 1024)
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(block)
                f.flush()
        except OSError:
            pass
    with contextlib.suppress(OSError), open(path / "filler-small", "wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()
    return filler


def make_tree(root: Path, files: int = 40, size: int = 64 * 1024, seed: int = 1) -> dict[str, bytes]:
    """Random files in a few directories; returns relative path -> content."""
    import random

    rng = random.Random(seed)
    content: dict[str, bytes] = {}
    for i in range(files):
        rel = f"d{i % 4}/sub{i % 3}/file{i:03d}.bin"
        data = rng.randbytes(size + rng.randrange(size))
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        content[rel] = data
    return content


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a tree with metadata."""
    shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)


def wait_for(predicate: Any, timeout: float = 20, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something true."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def environ_without_proxy() -> dict[str, str]:
    """For in-process use: a copy of os.environ without proxies."""
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def wait_port(port: int) -> None:
    """Block until a port accepts connections."""
    wait_for_tcp(port, 20)
