"""First backup and restore through an agent and a vault on loopback, against the engine writing locally.

    .venv/bin/python benchmarks/agent_vs_direct.py                 # the engine benchmark's corpus, 2 runs
    .venv/bin/python benchmarks/agent_vs_direct.py --quick         # /work/bench-data/corpus-quick (~0.5 GB)
    .venv/bin/python benchmarks/agent_vs_direct.py --profile       # py-spy the agent and the vault too

Direct: ``kluis repo init/backup/restore`` on a local repository (as benchmarks/run.py runs it),
timed as the command's wall time. Via the vault: ``kluis vault init/serve`` (SQLite, local
store), vault credentials, ``kluis agent register`` (credentials and passphrase files) and
``kluis agent run``; a files item for the corpus, an on-demand backup job and then a restore
job of its point, each timed from the job's ``dispatched_at`` (the agent took it) to its
``ended_at``. A backup starts from a warm page cache (the corpus is read first) and a restore
from an empty one (both sides read their packs from disk), each after a sync; each run uses
fresh repositories, scratch folders and restore targets. Runs alternate the order (direct
first, then vault first) so drift of the shared machine hits both.

CPU of the tool, agent and vault processes, and of everything else on the machine (other
engineers' test runs), is sampled from /proc during every step.

Results: /work/bench-data/agent-bench/results.json and markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_corpus import check_restore, restored_root, scan, warm_up  # noqa: E402
from vault_bench_support import (  # noqa: E402
    BENCH_DATA,
    KLUIS,
    REPO,
    CpuMonitor,
    VaultServer,
    log,
    machine,
    nice_prefix,
    summarize_profile,
    wait_quiet,
)

OUT = BENCH_DATA / "agent-bench"
PASSPHRASE = "kluis-benchmark-passphrase-not-secret"
API = "/api/v1"
FINAL = ("Completed", "CompletedWithWarnings", "Failed", "Cancelled")
PY_SPY = REPO / ".venv" / "bin" / "py-spy"
# The nice value of the measured processes (direct command, vault server, agent daemon alike).
NICE = {"value": 0}
# The vault server's own nice value, when an experiment sets it apart (None: as NICE).
VAULT_NICE: dict[str, int | None] = {"value": None}
# How long a step waits for the machine to go quiet (seconds); shorter on a machine that never does.
QUIET = {"max_wait": 90.0}
# With --idle: profiles keep samples of waiting threads (where a pipeline stalls).
PROFILE_IDLE = {"on": False}
# With --native: profiles include C frames (where the CPU outside Python goes: TLS, hashing, zstd).
PROFILE_NATIVE = {"on": False}


def _sync() -> None:
    os.sync()


def _drop_page_cache() -> None:
    """Forget cached file pages (root only), so a step neither finds nor has to evict an earlier
    step's 5 GB: restore times swung 22-54 s for the same work with whatever the cache held."""
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError:
        pass


def _settle(exclude: list[int] | None = None, *, cold: bool = False) -> float:
    """Before a measured step: flush dirty pages (and with ``cold`` the page cache), then wait
    (up to 90 s) for the machine to go quiet."""
    _sync()
    if cold:
        _drop_page_cache()
    return wait_quiet(max_wait=QUIET["max_wait"], exclude=exclude)


def _rm(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _check(resp: httpx.Response, what: str) -> Any:
    if resp.status_code >= 400:
        raise RuntimeError(f"{what}: HTTP {resp.status_code} {resp.text[:800]}")
    return resp.json() if resp.content else None


class Spy:
    """py-spy recording a process until stopped (SIGINT makes it write its file)."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        argv = [str(PY_SPY), "record", "--pid", str(pid), "--format", "raw", "--nolineno", "--rate", "50"]
        if PROFILE_IDLE["on"]:
            argv.append("--idle")  # waiting threads too: where the job's threads block
        if PROFILE_NATIVE["on"]:
            argv.append("--native")
        self.proc = subprocess.Popen(
            [*argv, "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def stop(self) -> dict[str, Any] | None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None
        return summarize_profile(self.out) if self.out.exists() else None


# -- direct -------------------------------------------------------------------------------------


class Direct:
    """The engine on a local repository through ``kluis repo``."""

    def __init__(self, base: Path, passfile: Path) -> None:
        self.base = base
        self.repo = base / "repo"
        self.cache = base / "cache"
        self.passfile = passfile
        self.scratch: Path | None = None

    def env(self) -> dict[str, str]:
        return {**os.environ, "XDG_CACHE_HOME": str(self.cache)}

    def common(self) -> list[str]:
        return ["--repo", str(self.repo), "--passphrase-file", str(self.passfile)]

    def run(
        self, argv: list[str], label: str, *, cold: bool = False
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run and time one command with the CPU monitor around it."""
        waited = _settle(cold=cold)
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [*nice_prefix(NICE["value"]), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env(),
        )
        monitor = CpuMonitor({"tool": proc.pid}).start()
        out, err = proc.communicate(timeout=4 * 3600)
        seconds = time.monotonic() - t0
        cpu = monitor.stop()
        if proc.returncode != 0:
            raise RuntimeError(f"{label} exited {proc.returncode}: {err.decode()[-3000:]}")
        return json.loads(out), {"seconds": round(seconds, 2), "cpu": cpu, "waited_for_quiet": waited}

    def backup(self, corpus: Path) -> dict[str, Any]:
        _rm(self.base)
        self.base.mkdir(parents=True)
        init, _ = self.run([str(KLUIS), "repo", "init", *self.common(), "--json"], "repo init")
        self.scratch = self.cache / "kluis" / init["repository"]
        argv = [
            str(KLUIS),
            "repo",
            "backup",
            str(corpus),
            *self.common(),
            "--scratch",
            str(self.scratch),
            "--json",
        ]
        report, m = self.run(argv, "repo backup")
        m["point_id"] = report["point_id"]
        m["report"] = {
            k: report[k] for k in report if k != "point_id" and not isinstance(report[k], (dict, list))
        }
        return m

    def restore(self, point: str, target: Path) -> dict[str, Any]:
        _rm(target)
        argv = [str(KLUIS), "repo", "restore", point, *self.common(), "--target", str(target), "--json"]
        _, m = self.run(argv, "repo restore", cold=True)
        return m


# -- via the vault --------------------------------------------------------------------------------


class ViaVault:
    """A vault process and a registered agent daemon on this machine."""

    def __init__(self, base: Path, passfile: Path, corpus: Path) -> None:
        self.base = base
        self.passfile = passfile
        self.corpus = corpus
        self.server = VaultServer(base / "vault", name="agentbench")
        self.agent_dir = base / "agent-etc"
        self.scratch = base / "scratch"
        self.agent: subprocess.Popen[bytes] | None = None
        self.agent_log: Any = None
        self.machine_id = ""
        self.item_id = ""
        self.http: httpx.Client | None = None

    def start(self) -> None:
        """Fresh vault, credentials, registration, the agent daemon, a policy and the item."""
        _rm(self.base)
        self.base.mkdir(parents=True)
        self.server.init({"server.tmp_dir": str(self.base / "vault-tmp")})
        (self.base / "vault-tmp").mkdir()
        vault_nice = VAULT_NICE["value"]
        self.server.start(log_level="warning", nice=NICE["value"] if vault_nice is None else vault_nice)
        self.http = httpx.Client(
            base_url=self.server.url + API,
            headers={"Authorization": f"Bearer {self.server.token}"},
            timeout=60,
        )
        creds = _check(self.http.post("/credentials"), "credentials")
        creds_file = self.base / creds["file_name"]
        creds_file.write_text(creds["content"])
        t0 = time.monotonic()
        done = subprocess.run(
            [
                *(str(KLUIS), "agent", "register", "--vault-credentials", str(creds_file)),
                *("--passphrase-file", str(self.passfile), "--scratch", str(self.scratch)),
                *("--config-dir", str(self.agent_dir), "--json"),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"agent register failed: {done.stderr[-3000:]} {done.stdout[-2000:]}")
        self.register_seconds = round(time.monotonic() - t0, 2)
        self.machine_id = json.loads(done.stdout)["machine_id"]
        self.agent_log = (self.base / "agent.log").open("ab")
        self.start_agent()
        policy = {
            "name": "bench",
            "schedule": {"kind": "daily", "timezone": "UTC", "times": ["23:59"]},
            "retention": {"daily": 7},
        }
        _check(self.http.post("/policies", json=policy), "policy")
        body = {
            "machine_id": self.machine_id,
            "name": "corpus",
            "kind": "files",
            "paths": [str(self.corpus)],
            "policy": "bench",
        }
        self.item_id = _check(self.http.post("/items", json=body), "protect")["id"]

    def start_agent(self, env: dict[str, str] | None = None) -> None:
        """The registered agent's daemon (``env``: its environment, default this one's)."""
        self.agent = subprocess.Popen(
            [
                *nice_prefix(NICE["value"]),
                *(str(KLUIS), "agent", "run", "--config-dir", str(self.agent_dir), "--log-level", "info"),
            ],
            stdout=self.agent_log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def wait_job(self, job_id: str, timeout: float) -> dict[str, Any]:
        assert self.http is not None and self.agent is not None
        deadline = time.monotonic() + timeout
        # Polled as `kluis backup now --wait` polls (0.1 s, growing to 1 s): the times come from
        # the job's own timestamps, and polling every 0.25 s cost the vault about 240 requests
        # per first backup, on the CPUs the agent needs.
        delay = 0.1
        while time.monotonic() < deadline:
            job = _check(self.http.get(f"/jobs/{job_id}"), "job")
            if job["status"] in FINAL:
                return dict(job)
            if self.agent.poll() is not None:
                raise RuntimeError(f"the agent exited {self.agent.returncode}; see {self.base / 'agent.log'}")
            time.sleep(delay)
            delay = min(1.0, delay * 1.5)
        raise TimeoutError(f"job {job_id} did not end within {timeout} s")

    def timed_job(
        self, start: Any, label: str, profile: Path | None, *, cold: bool = False
    ) -> dict[str, Any]:
        """Queue a job with ``start()``, wait for it, time it from its own timestamps."""
        assert self.agent is not None
        waited = _settle(exclude=[self.agent.pid, self.server.pid], cold=cold)
        monitor = CpuMonitor({"agent": self.agent.pid, "vault": self.server.pid}).start()
        spies = []
        if profile is not None:
            spies = [
                ("agent", Spy(self.agent.pid, profile.with_name(profile.name + "-agent.raw"))),
                ("vault", Spy(self.server.pid, profile.with_name(profile.name + "-vault.raw"))),
            ]
        t0 = time.monotonic()
        job = start()
        job = self.wait_job(job["id"], 4 * 3600)
        wall = time.monotonic() - t0
        cpu = monitor.stop()
        out: dict[str, Any] = {"status": job["status"], "waited_for_quiet": waited}
        if spies:
            out["profile"] = {name: spy.stop() for name, spy in spies}
        if job["status"] not in ("Completed", "CompletedWithWarnings"):
            raise RuntimeError(f"{label} job ended {job['status']}: {json.dumps(job.get('error'))[:2000]}")
        times = {k: dt.datetime.fromisoformat(job[k]) for k in ("created_at", "dispatched_at", "ended_at")}
        out.update(
            seconds=round((times["ended_at"] - times["dispatched_at"]).total_seconds(), 2),
            created_to_end_seconds=round((times["ended_at"] - times["created_at"]).total_seconds(), 2),
            wall_seconds_seen_by_client=round(wall, 2),
            cpu=cpu,
            job_id=job["id"],
            stats={
                k: v
                for k, v in ((job.get("result") or {}).get("stats") or {}).items()
                if not isinstance(v, (dict, list))
            },
        )
        return out

    def backup(self, profile: Path | None) -> dict[str, Any]:
        assert self.http is not None
        http = self.http
        return self.timed_job(
            lambda: _check(http.post(f"/items/{self.item_id}/backup", json={}), "backup"), "backup", profile
        )

    def point_of(self, job_id: str) -> str:
        assert self.http is not None
        points = _check(self.http.get("/points", params={"item_id": self.item_id}), "points")
        for p in points:
            if p.get("job_id") == job_id:
                return str(p["id"])
        if len(points) == 1:
            return str(points[0]["id"])
        raise RuntimeError(f"no recovery point for job {job_id}: {points}")

    def restore(self, point: str, target: Path, profile: Path | None) -> dict[str, Any]:
        assert self.http is not None
        _rm(target)
        target.mkdir(parents=True)
        http = self.http
        body = {"point_id": point, "target_path": str(target), "conflict": "overwrite"}
        return self.timed_job(
            lambda: _check(http.post(f"/items/{self.item_id}/restore", json=body), "restore"),
            "restore",
            profile,
            cold=True,
        )

    def stop_agent(self) -> None:
        """Stop the agent's daemon (SIGTERM, then SIGKILL after 30 s)."""
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            try:
                self.agent.wait(30)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait(10)
        self.agent = None

    def stop(self) -> None:
        self.stop_agent()
        if self.agent_log is not None:
            self.agent_log.close()
            self.agent_log = None
        if self.http is not None:
            self.http.close()
            self.http = None
        self.server.stop()

    def store_bytes(self) -> int:
        done = subprocess.run(
            ["du", "-sB1", str(self.server.data / "store")], capture_output=True, text=True, check=False
        )
        return int(done.stdout.split()[0]) if done.returncode == 0 else 0


# -- runs -----------------------------------------------------------------------------------------


def _complete(step: dict[str, Any]) -> str:
    return f"complete={step['check'].get('complete')}"


def direct_run(direct: Direct, corpus: Path, info: Any, restore_to: Path) -> dict[str, Any]:
    warm_up([corpus])
    b = direct.backup(corpus)
    b["mb_s"] = round(info.bytes / b["seconds"] / 1e6, 1)
    log(f"  direct backup {b['seconds']} s ({b['mb_s']} MB/s) cpu {b['cpu']}")
    r = direct.restore(b["point_id"], restore_to)
    r["mb_s"] = round(info.bytes / r["seconds"] / 1e6, 1)
    r["check"] = check_restore(info, restored_root(restore_to, corpus))
    log(f"  direct restore {r['seconds']} s ({r['mb_s']} MB/s) cpu {r['cpu']} {_complete(r)}")
    _rm(restore_to)
    return {"backup": b, "restore": r}


def vault_run(
    via: ViaVault, corpus: Path, info: Any, restore_to: Path, profile: Path | None
) -> dict[str, Any]:
    via.start()
    try:
        warm_up([corpus])
        b = via.backup(profile.with_name(profile.name + "-backup") if profile else None)
        b["mb_s"] = round(info.bytes / b["seconds"] / 1e6, 1)
        b["register_seconds"] = via.register_seconds
        b["store_bytes"] = via.store_bytes()
        log(f"  vault backup {b['seconds']} s ({b['mb_s']} MB/s) cpu {b['cpu']}")
        point = via.point_of(b["job_id"])
        r = via.restore(point, restore_to, profile.with_name(profile.name + "-restore") if profile else None)
        r["mb_s"] = round(info.bytes / r["seconds"] / 1e6, 1)
        r["check"] = check_restore(info, restored_root(restore_to, corpus))
        log(f"  vault restore {r['seconds']} s ({r['mb_s']} MB/s) cpu {r['cpu']} {_complete(r)}")
        _rm(restore_to)
        return {"backup": b, "restore": r}
    finally:
        via.stop()


def render(results: dict[str, Any]) -> str:
    """Markdown table: per run and step, direct vs vault and the ratio."""
    lines = [
        "| run | step | direct s | direct MB/s | via vault s | via vault MB/s | vault speed / direct "
        "| other load (cores, direct / vault) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in results["runs"]:
        for step in ("backup", "restore"):
            d = (run.get("direct") or {}).get(step)
            v = (run.get("vault") or {}).get(step)
            if not d or not v:
                continue
            other = f"{d['cpu'].get('other', '?')} / {v['cpu'].get('other', '?')}"
            lines.append(
                f"| {run['run']} | {step} | {d['seconds']} | {d['mb_s']} | {v['seconds']} | {v['mb_s']} "
                f"| {d['seconds'] / v['seconds']:.2f} | {other} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=BENCH_DATA / "corpus")
    parser.add_argument("--quick", action="store_true", help="use /work/bench-data/corpus-quick")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="py-spy the agent and the vault (last run)")
    parser.add_argument("--idle", action="store_true", help="with --profile: keep waiting threads' samples")
    parser.add_argument("--native", action="store_true", help="with --profile: include C frames")
    parser.add_argument("--results", type=Path, default=OUT / "results.json")
    parser.add_argument(
        "--nice", type=int, default=-15, help="nice value of every measured process (as run.py)"
    )
    parser.add_argument(
        "--vault-nice",
        type=int,
        default=None,
        help="nice value of the vault server alone (an experiment: how much its CPU costs the agent)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=90.0,
        help="seconds each step waits at most for the machine to go quiet (other load is recorded)",
    )
    args = parser.parse_args(argv)
    QUIET["max_wait"] = args.quiet_wait
    PROFILE_IDLE["on"] = args.idle
    PROFILE_NATIVE["on"] = args.native
    NICE["value"] = args.nice if os.geteuid() == 0 else max(0, args.nice)
    VAULT_NICE["value"] = args.vault_nice
    corpus = BENCH_DATA / "corpus-quick" if args.quick else args.corpus
    if not corpus.is_dir():
        parser.error(f"{corpus} does not exist (benchmarks/run.py makes it)")
    OUT.mkdir(parents=True, exist_ok=True)
    passfile = OUT / "passphrase"
    passfile.write_text(PASSPHRASE + "\n")
    passfile.chmod(0o600)
    info = scan(corpus)
    log(f"corpus {corpus}: {info.count} files, {info.bytes / 1e9:.2f} GB")
    results: dict[str, Any] = {
        "nice": NICE["value"],
        "vault_nice": VAULT_NICE["value"],
        "corpus": {"path": str(corpus), "files": info.count, "bytes": info.bytes},
        "machine": machine(),
        "runs": [],
    }
    direct = Direct(OUT / "direct", passfile)
    via = ViaVault(OUT / "vault", passfile, corpus)
    restore_to = OUT / "restore"
    status = 0
    try:
        for i in range(1, args.runs + 1):
            rec: dict[str, Any] = {"run": i}
            results["runs"].append(rec)
            profile = OUT / f"profile-run{i}" if args.profile and i == args.runs else None
            order = ["direct", "vault"] if i % 2 else ["vault", "direct"]
            log(f"run {i}/{args.runs}: {' then '.join(order)}")
            for which in order:
                try:
                    if which == "direct":
                        rec["direct"] = direct_run(direct, corpus, info, restore_to)
                    else:
                        rec["vault"] = vault_run(via, corpus, info, restore_to, profile)
                except Exception:
                    rec[f"{which}_failed"] = traceback.format_exc()
                    log(f"{which} failed:\n{rec[f'{which}_failed']}")
                    status = 1
                args.results.write_text(json.dumps(results, indent=1, default=str))
    finally:
        via.stop()
        for path in (OUT / "direct", OUT / "vault", restore_to):
            _rm(path)
    print(render(results))
    return status


if __name__ == "__main__":
    sys.exit(main())
