"""Shared parts of the vault benchmarks (vault_load.py, agent_vs_direct.py).

- ``PgCluster``: a throwaway PostgreSQL 15 cluster as user postgres on a private loopback
  port, its data under /work/bench-data (as tests/support/postgres.py does for the tests,
  but with PostgreSQL's default durability: fsync and synchronous_commit stay on).
- ``VaultServer``: ``kluis vault init`` + ``kluis vault serve`` as a child process, with
  settings changed in its vault.toml before the start, and an admin token.
- ``CpuMonitor``: busy cores of the whole machine versus the processes we started, sampled
  from /proc, so a result can say how much of the 2 cores other engineers' test runs took.
- ``machine()``: nproc, memory, CPU model, load average; ``pct()``: percentiles.
"""

from __future__ import annotations

import json
import os
import platform
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

REPO = Path(__file__).resolve().parent.parent
KLUIS = REPO / ".venv" / "bin" / "kluis"
PYTHON = REPO / ".venv" / "bin" / "python"
BENCH_DATA = Path("/work/bench-data")
PG_BIN = Path(os.environ.get("KLUIS_PG_BIN", "/usr/lib/postgresql/15/bin"))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    """A progress line with a timestamp."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def nice_prefix(nice: int) -> list[str]:
    """``nice -n N`` (it execs the program, so the pid stays the program's), or nothing for 0."""
    return ["nice", "-n", str(nice)] if nice else []


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_tcp(port: int, timeout: float) -> None:
    """Block until 127.0.0.1:port accepts connections; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s") from None
            time.sleep(0.1)


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def latency_summary(seconds: list[float]) -> dict[str, float | int]:
    """Count, p50, p90, p99 and max of latencies, in milliseconds."""
    return {
        "count": len(seconds),
        "p50_ms": round(pct(seconds, 50) * 1000, 1),
        "p90_ms": round(pct(seconds, 90) * 1000, 1),
        "p99_ms": round(pct(seconds, 99) * 1000, 1),
        "max_ms": round(max(seconds) * 1000, 1) if seconds else float("nan"),
    }


# -- machine and load ---------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    free = subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "free_h": free.strip(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


def _system_busy() -> float:
    """Busy CPU seconds of the whole machine since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / CLK_TCK


def wait_quiet(threshold: float = 0.3, max_wait: float = 90.0, exclude: list[int] | None = None) -> float:
    """Wait (at most ``max_wait`` s) until the machine, minus ``exclude``'s process trees, keeps fewer
    than ``threshold`` cores busy; returns the seconds waited (as benchmarks/run.py's quiet gate)."""
    start = time.monotonic()
    while time.monotonic() - start < max_wait:
        ours0 = sum(cpu_seconds(p) for root in exclude or [] for p in process_tree(root))
        busy0 = _system_busy()
        time.sleep(1.0)
        ours1 = sum(cpu_seconds(p) for root in exclude or [] for p in process_tree(root))
        if (_system_busy() - busy0) - (ours1 - ours0) < threshold:
            break
    return round(time.monotonic() - start, 1)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one live process (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class CpuMonitor:
    """Samples, once a second, the cores the machine is busy and the cores of our process trees.

    ``roots`` maps a label to a root pid (its descendants are included, found at every
    sample, so a PostgreSQL backend that starts later counts too). CPU of processes that
    ended between two samples is lost; our processes live for the whole measurement.
    """

    roots: dict[str, int]
    interval: float = 1.0
    samples: list[dict[str, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _ours(self) -> dict[str, float]:
        seen: dict[int, float] = {}
        out: dict[str, float] = {}
        for label, root in self.roots.items():
            total = 0.0
            for pid in process_tree(root):
                if pid not in seen:
                    seen[pid] = cpu_seconds(pid)
                    total += seen[pid]
            out[label] = total
        return out

    def _run(self) -> None:
        t0, busy0, ours0 = time.monotonic(), _system_busy(), self._ours()
        while not self._stop.wait(self.interval):
            t1, busy1, ours1 = time.monotonic(), _system_busy(), self._ours()
            dt = t1 - t0
            sample = {"t": t1, "machine": (busy1 - busy0) / dt}
            for label in ours1:
                # A process tree can lose a member between samples: never report negative CPU.
                sample[label] = max(0.0, (ours1[label] - ours0.get(label, 0.0)) / dt)
            sample["other"] = max(0.0, sample["machine"] - sum(sample[k] for k in ours1))
            self.samples.append(sample)
            t0, busy0, ours0 = t1, busy1, ours1

    def start(self) -> CpuMonitor:
        """Start sampling in a thread."""
        self._thread = threading.Thread(target=self._run, name="cpu-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        """Stop; mean cores per label (and 'machine', 'other') over the samples."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return self.mean()

    def mean(self, since: float | None = None, until: float | None = None) -> dict[str, float]:
        """Mean cores per label over the samples taken in [since, until] (monotonic time)."""
        rows = [
            s
            for s in self.samples
            if (since is None or s["t"] >= since) and (until is None or s["t"] <= until + self.interval)
        ]
        if not rows:
            return {}
        keys = [k for k in rows[0] if k != "t"]
        return {k: round(sum(r[k] for r in rows) / len(rows), 2) for k in keys}


# -- PostgreSQL ---------------------------------------------------------------------------------


class PgCluster:
    """A throwaway PostgreSQL cluster as user postgres, on a private port, data under ``base``."""

    def __init__(self, base: Path) -> None:
        self.user = pwd.getpwnam("postgres")
        self.base = base
        self.data = base / "data"
        self.port = free_port()
        self.log = base / "postgres.log"
        self.started = False

    def _run(self, *args: str) -> str:
        done = subprocess.run(
            list(args),
            user=self.user.pw_uid,
            group=self.user.pw_gid,
            cwd=self.base,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stderr or done.stdout}")
        return done.stdout

    def start(self) -> None:
        """initdb and start on 127.0.0.1 with default durability (trust auth: loopback only)."""
        shutil.rmtree(self.base, ignore_errors=True)
        self.base.mkdir(parents=True)
        os.chown(self.base, self.user.pw_uid, self.user.pw_gid)
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8")
        options = " ".join(
            [
                f"-p {self.port}",
                f"-k {self.base}",
                "-c listen_addresses=127.0.0.1",
                "-c max_connections=200",
            ]
        )
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start"
        )
        self.started = True
        wait_for_tcp(self.port, 10)

    def postmaster_pid(self) -> int:
        """The pid of the cluster's main process."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def create_database(self, name: str) -> str:
        """A new, empty database; its URL."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """Stop the cluster and remove its files."""
        if self.started:
            try:
                self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
            except RuntimeError as exc:
                log(f"pg_ctl stop: {exc}")
            self.started = False
        shutil.rmtree(self.base, ignore_errors=True)


# -- the vault ----------------------------------------------------------------------------------


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    section, key = dotted.split(".", 1)
    doc.setdefault(section, {})[key] = value


class VaultServer:
    """One ``kluis vault serve`` process on 127.0.0.1 with its data in ``data``."""

    def __init__(self, data: Path, *, db_url: str | None = None, name: str = "bench") -> None:
        self.data = data
        self.db_url = db_url
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = ""
        self.log_path = data.parent / f"{data.name}-serve.log"
        self._log_file: Any = None

    def init(self, settings: dict[str, Any]) -> None:
        """``kluis vault init`` (fresh data directory), then write ``settings`` into vault.toml."""
        shutil.rmtree(self.data, ignore_errors=True)
        self.data.parent.mkdir(parents=True, exist_ok=True)
        argv = [str(KLUIS), "vault", "init", "--data", str(self.data), "--name", self.name]
        argv += ["--listen", f"127.0.0.1:{self.port}", "--json"]
        if self.db_url:
            argv += ["--db", self.db_url]
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"vault init failed: {done.stderr or done.stdout}")
        self.token = json.loads(done.stdout)["token"]
        self.configure(settings)

    def configure(self, settings: dict[str, Any]) -> None:
        """Change keys (``"section.key": value``) in vault.toml; takes effect at the next start."""
        path = self.data / "vault.toml"
        doc = tomllib.loads(path.read_text())
        for dotted, value in settings.items():
            _set(doc, dotted, value)
        path.write_text(tomli_w.dumps(doc))

    def start(self, log_level: str = "info", nice: int = 0) -> None:
        """Start serving (under ``nice -n NICE`` when set); returns once the health endpoint answers."""
        import httpx

        self._log_file = self.log_path.open("ab")
        argv = [str(KLUIS)]
        prelude = os.environ.get("KLUIS_BENCH_SERVE_PRELUDE")
        if prelude:
            # A what-if experiment: Python run in the server process before the CLI starts,
            # e.g. "import kluis.vault.api.machines as m; m.DB_POLL_SECONDS = 30".
            argv = [str(PYTHON), "-c", f"{prelude}\nfrom kluis.cli.main import app\napp()"]
        self.proc = subprocess.Popen(
            [*nice_prefix(nice), *argv, "vault", "serve", "--data", str(self.data), "--log-level", log_level],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vault serve exited {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"vault did not answer within 120 s; see {self.log_path}")
            time.sleep(0.2)

    @property
    def pid(self) -> int:
        """The server process id."""
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        """SIGTERM (clean stop, lease released), SIGKILL after 30 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def config(self) -> Any:
        """The vault's configuration as the server reads it."""
        from kluis.vault.config import VaultConfig

        return VaultConfig.load(self.data / "vault.toml")


# -- profiles -----------------------------------------------------------------------------------


def py_spy(pid: int, seconds: float, out: Path, *, gil: bool = False) -> subprocess.Popen[bytes]:
    """Start py-spy recording ``pid`` for ``seconds`` into ``out`` (raw collapsed stacks)."""
    argv = [
        str(REPO / ".venv" / "bin" / "py-spy"),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
    ]
    argv += ["--format", "raw", "--output", str(out), "--nolineno", "--rate", "50"]
    if gil:
        argv.append("--gil")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Top functions of a py-spy raw profile: by own samples and by samples anywhere in the stack."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n

    def share(counts: Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(100 * n / max(total, 1), 1)) for f, n in counts.most_common(top)]

    return {"samples": total, "own": share(own), "inclusive": share(inclusive)}
