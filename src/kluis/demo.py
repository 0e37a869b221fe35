"""``make demo``: a whole Kluis on this machine, from an empty folder to a verified restore.

Run as ``python -m kluis.demo`` (``make demo`` does, after creating the virtualenv). In
``./demo`` it sets up a vault (SQLite database, local store), starts it on 127.0.0.1,
makes vault credentials, registers this machine's agent and starts it, creates a
policy, protects a sample folder it creates, backs it up on demand, lists the recovery
point, restores it into ``./demo/restore`` and compares the two trees. Every step is
the ``kluis`` command a user would type, printed before it runs.

The vault and the agent keep running afterwards so you can try the other commands;
``python -m kluis.demo stop`` stops them. Running the demo again starts from scratch.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

DEFAULT_DIR = Path("demo")
DEFAULT_PORT = 8400
PIDS = "pids.json"
STARTUP_SECONDS = 30.0


class DemoError(Exception):
    """A step of the demo failed; the message says which and where its log is."""


class Demo:
    """The demo's folder layout, its processes and the commands it runs."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.vault_data = self.root / "vault"
        self.agent_config = self.root / "agent" / "etc"
        self.scratch = self.root / "agent" / "scratch"
        self.sample = self.root / "sample"
        self.restore = self.root / "restore"
        self.logs = self.root / "logs"
        self.cli_config = self.root / "cli.toml"
        self.token_file = self.root / "admin-token"
        self.passphrase_file = self.root / "passphrase"
        self.url = ""

    # -- output and commands -----------------------------------------------------------------

    def say(self, text: str) -> None:
        """A line of the demo's own narration."""
        print(text, flush=True)

    def env(self) -> dict[str, str]:
        """The environment every command runs with: the demo's CLI and agent configuration."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KLUIS_")}
        env["KLUIS_CLI_CONFIG"] = str(self.cli_config)
        env["KLUIS_AGENT_CONFIG_DIR"] = str(self.agent_config)
        # Loopback needs no proxy; a proxy set for the internet must not catch these requests.
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        for name in ("KLUIS_FAST_KDF", "KLUIS_LANG"):
            if name in os.environ:
                env[name] = os.environ[name]
        return env

    def kluis(self, *args: str, capture: bool = False, show: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``kluis ARGS``; print it first; stop the demo when it fails."""
        if show:
            self.say(f"\n$ kluis {' '.join(shlex.quote(a) for a in args)}")
        done = subprocess.run(
            [sys.executable, "-m", "kluis", *args],
            env=self.env(),
            cwd=self.root,
            text=True,
            capture_output=capture,
            check=False,
        )
        if done.returncode != 0:
            detail = (done.stdout or "") + (done.stderr or "")
            raise DemoError(f"`kluis {' '.join(args)}` failed with exit code {done.returncode}\n{detail}")
        return done

    def kluis_json(self, *args: str, show: bool = True) -> Any:
        """Run ``kluis ARGS --json`` and decode its answer."""
        return json.loads(self.kluis(*args, "--json", capture=True, show=show).stdout)

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """Start a long-running ``kluis`` process in its own session, logging to logs/NAME.log."""
        self.say(f"\n$ kluis {' '.join(shlex.quote(a) for a in args)} &   # log: {self.logs / name}.log")
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "kluis", *args],
                env=self.env(),
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # it outlives the demo, and Ctrl-C here does not reach it
            )
        finally:
            log.close()
        self._record(name, proc.pid)
        return proc

    def _record(self, name: str, pid: int) -> None:
        path = self.root / PIDS
        pids = json.loads(path.read_text()) if path.exists() else {}
        pids[name] = pid
        path.write_text(json.dumps(pids))

    # -- the steps ---------------------------------------------------------------------------

    def run(self, port: int | None) -> None:
        """The whole demo, step by step."""
        stop(self.root, quiet=True)
        if self.root.exists():
            shutil.rmtree(self.root)
        for d in (self.root, self.logs, self.scratch.parent):
            d.mkdir(parents=True, exist_ok=True)
        chosen = port or pick_port()
        self.url = f"http://127.0.0.1:{chosen}"

        self.say(f"Kluis demo in {self.root}")
        self.say("\n== 1. A vault: SQLite database and a local store in demo/vault")
        init = self.kluis_json(
            "vault",
            "init",
            "--data",
            str(self.vault_data),
            "--name",
            "demo",
            "--listen",
            f"127.0.0.1:{chosen}",
        )
        _write_secret(self.token_file, init["token"])
        self.say(f"Admin token saved in {self.token_file} (shown only once by `vault init`).")
        vault = self.spawn("vault", "vault", "serve", "--data", str(self.vault_data))
        self._wait_for_vault(vault)

        self.say("\n== 2. This machine joins the vault: credentials file, passphrase, agent")
        creds = self.kluis_json(
            "vault", "credentials", "--data", str(self.vault_data), "--out", str(self.root)
        )
        _write_secret(self.passphrase_file, secrets.token_urlsafe(24))
        self.say(
            f"A random encryption passphrase is in {self.passphrase_file}; keep it if you keep the data."
        )
        self.kluis(
            "agent", "register", "--vault-credentials", creds["file"], "--passphrase-file",
            str(self.passphrase_file), "--scratch", str(self.scratch), "--config-dir", str(self.agent_config),
        )  # fmt: skip
        agent = self.spawn("agent", "agent", "run", "--config-dir", str(self.agent_config))
        self._wait_for_agent(agent)

        self.say("\n== 3. You, as the vault's admin: log in, make a policy, protect a folder")
        self.kluis("login", "--vault", self.url, "--token", init["token"])
        self.kluis(
            "policy", "create", "demo-daily", "--at", "02:00", "--keep-daily", "7", "--keep-weekly", "4"
        )
        files = make_sample(self.sample)
        self.say(f"Created a sample folder {self.sample} with {files} files.")
        self.kluis("protect", "files", str(self.sample), "--policy", "demo-daily", "--name", "sample")

        self.say("\n== 4. Back it up now and wait for the result")
        self.kluis("backup", "now", "sample", "--wait")
        self.kluis("points", "list", "sample")
        point = self.kluis_json("points", "list", "sample", show=False)[0]["id"]

        self.say("\n== 5. Restore the recovery point into demo/restore and compare")
        self.kluis("restore", point, "--target", str(self.restore), "--wait")
        restored = self.restore / self.sample.relative_to(self.sample.anchor)
        problems, count = compare_trees(self.sample, restored)
        if problems:
            raise DemoError("the restored files differ from the originals:\n  " + "\n  ".join(problems[:20]))
        self.say(f"\nCompared {count} entries of {self.sample} and {restored}: identical.")
        self.summary(point)

    def _wait_for_vault(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=1, trust_env=False).status_code == 200:
                    self.say(f"The vault answers at {self.url}")
                    return
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log = self.logs / "vault.log"
                raise DemoError(f"the vault did not start; see {log}:\n{_tail(log)}")
            time.sleep(0.1)

    def _wait_for_agent(self, proc: subprocess.Popen[bytes]) -> None:
        state = self.scratch / "agent-state.json"
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                if json.loads(state.read_text()).get("last_heartbeat_at"):
                    self.say("The agent runs and has sent its first heartbeat.")
                    return
            except (OSError, ValueError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log = self.logs / "agent.log"
                raise DemoError(f"the agent did not start; see {log}:\n{_tail(log)}")
            time.sleep(0.1)

    def summary(self, point: str) -> None:
        """Where everything is, how to go on, how to stop."""
        env_file = self.root / "env.sh"
        env_file.write_text(
            f"export KLUIS_CLI_CONFIG={shlex.quote(str(self.cli_config))}\n"
            f"export KLUIS_AGENT_CONFIG_DIR={shlex.quote(str(self.agent_config))}\n"
            f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH\n"
        )
        rows = [
            ("Vault URL", self.url),
            ("Admin token", str(self.token_file)),
            ("CLI login", str(self.cli_config)),
            ("Vault data", f"{self.vault_data} (vault.toml, vault.db, store/)"),
            ("Agent config", str(self.agent_config / "agent.toml")),
            ("Scratch folder", f"{self.scratch} (KEK file, caches, failed-files logs)"),
            ("Passphrase", str(self.passphrase_file)),
            ("Sample folder", str(self.sample)),
            ("Restored copy", str(self.restore)),
            ("Logs", f"{self.logs / 'vault.log'}, {self.logs / 'agent.log'}"),
            ("Recovery point", point),
        ]
        width = max(len(k) for k, _ in rows)
        self.say("\n== Done. The vault and the agent keep running:\n")
        for key, value in rows:
            self.say(f"  {key.ljust(width)}  {value}")
        here = os.path.relpath(self.root)
        self.say("\nTry the other commands:")
        self.say(f"  . {os.path.join(here, 'env.sh')}")
        self.say("  kluis items list; kluis jobs list; kluis points list sample")
        self.say(
            f"  mkdir -p /tmp/kluis-mnt && kluis mount {point[:12]} /tmp/kluis-mnt   # needs the mount extra"
        )
        self.say("\nStop the vault and the agent:")
        self.say(f"  {shlex.quote(sys.executable)} -m kluis.demo stop --dir {shlex.quote(here)}")


# -- helpers -------------------------------------------------------------------------------------


def pick_port() -> int:
    """8400 when it is free, else any free loopback port."""
    for port in (DEFAULT_PORT, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise DemoError("no free TCP port on 127.0.0.1")


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def make_sample(root: Path) -> int:
    """A small folder worth backing up: text, binary data, nested folders, a symlink, an empty file."""
    rng = __import__("random").Random(2024)
    (root / "documents" / "2024").mkdir(parents=True)
    (root / "photos").mkdir()
    (root / "documents" / "readme.txt").write_text("Kluis keeps this safe.\n" * 200)
    for month in range(1, 13):
        (root / "documents" / "2024" / f"report-{month:02d}.md").write_text(
            f"# Report {month}\n\n" + "Numbers and notes.\n" * (50 * month)
        )
    for i in range(6):
        (root / "photos" / f"img_{i:04d}.raw").write_bytes(rng.randbytes(256 * 1024 + i * 4096))
    (root / "empty.txt").write_bytes(b"")
    os.symlink("documents/readme.txt", root / "readme-link")
    (root / "documents" / "private.txt").write_text("only for me\n")
    (root / "documents" / "private.txt").chmod(0o600)
    return sum(1 for p in root.rglob("*") if not p.is_dir())


def compare_trees(a: Path, b: Path) -> tuple[list[str], int]:
    """Differences in names, types, modes, contents and link targets between two trees."""
    problems: list[str] = []
    names_a = {str(p.relative_to(a)) for p in a.rglob("*")}
    names_b = {str(p.relative_to(b)) for p in b.rglob("*")} if b.is_dir() else set()
    problems += [f"missing in the restore: {n}" for n in sorted(names_a - names_b)]
    problems += [f"not in the original: {n}" for n in sorted(names_b - names_a)]
    for name in sorted(names_a & names_b):
        pa, pb = a / name, b / name
        sa, sb = pa.lstat(), pb.lstat()
        if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode) or stat.S_IMODE(sa.st_mode) != stat.S_IMODE(
            sb.st_mode
        ):
            problems.append(f"type or mode differs: {name}")
        elif stat.S_ISLNK(sa.st_mode) and os.readlink(pa) != os.readlink(pb):
            problems.append(f"link target differs: {name}")
        elif stat.S_ISREG(sa.st_mode) and (sa.st_size != sb.st_size or pa.read_bytes() != pb.read_bytes()):
            problems.append(f"content differs: {name}")
        elif stat.S_ISREG(sa.st_mode) and sa.st_mtime_ns != sb.st_mtime_ns:
            problems.append(f"modification time differs: {name}")
    return problems, len(names_a)


def _ours(pid: int) -> bool:
    """Whether ``pid`` still runs one of the demo's ``kluis`` processes (pids get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"kluis" in cmdline


def stop(root: Path, *, quiet: bool = False) -> list[str]:
    """Stop the demo's processes (agent first: its long poll would hold the vault's shutdown)."""
    path = root.absolute() / PIDS
    try:
        pids: dict[str, int] = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    stopped = []
    for name in ("agent", "vault"):
        pid = pids.get(name)
        if pid is None or not _ours(pid):
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _ours(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.1)
        if _ours(pid):
            os.kill(pid, signal.SIGKILL)
        _reap(pid)
        stopped.append(name)
        if not quiet:
            print(f"Stopped the demo {name} (pid {pid}).")
    path.unlink(missing_ok=True)
    return stopped


def _reap(pid: int) -> None:
    # A child of this very process (stop right after run) must be waited for to disappear.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def main(argv: list[str] | None = None) -> int:
    """``python -m kluis.demo [run|stop] [--dir DIR] [--port N]``."""
    parser = argparse.ArgumentParser(prog="python -m kluis.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", nargs="?", choices=("run", "stop"), default="run")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where the demo lives (default ./demo)")
    parser.add_argument(
        "--port", type=int, default=None, help="the vault's port (default 8400 or a free one)"
    )
    args = parser.parse_args(argv)
    if args.action == "stop":
        if not stop(args.dir):
            print("No demo processes are running.")
        return 0
    demo = Demo(args.dir)
    try:
        demo.run(args.port)
    except DemoError as exc:
        print(f"\nThe demo stopped: {exc}", file=sys.stderr)
        print(
            f"Logs are in {demo.logs}. Stop what runs with: python -m kluis.demo stop --dir {args.dir}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        stop(demo.root)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
