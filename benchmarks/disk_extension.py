"""The disk-image benchmark through the agent and the snapshot extension, beside restic and borg.

    .venv/bin/python benchmarks/disk_extension.py            # 4 GiB image, 3 runs (root)
    .venv/bin/python benchmarks/disk_extension.py --quick    # 512 MiB image, for trying it out

The image is the engine benchmark's (benchmarks/bench_disk.py): an ext4 file system of
4 GiB filled with 3.5 GB of corpus files, then 1% of its 4 KiB blocks overwritten with
random bytes at seeded offsets. Here it lives as a stopped VM's disk on an XFS file system
made with reflink (a loop-mounted sparse file), as the issue's "VM" tests set it up.

Each run, on a fresh copy of the image and fresh repositories:

1. first backups: ``restic backup IMAGE``, ``borg create ... IMAGE``, and for Kluis a vault
   (``kluis vault serve``, SQLite, local store on loopback) with an agent daemon
   (``kluis agent run``), the image protected as a VM (``kluis protect disks IMAGE``) and an
   on-demand backup job: the agent installs the snapshot extension, takes a reflink
   snapshot (the instant recovery point), and sends the blocks to the vault;
2. the 1% rewrite of the image (once; every tool backs up the same bytes);
3. second backups, in a different tool order every run, each after a sync and with the
   image in the page cache. Kluis's second job reads only the extents the reflink snapshot
   comparison reports as changed.

Time: restic's and borg's command wall time; Kluis's job from ``dispatched_at`` (the agent
took the job) to ``ended_at``, snapshot phase included, and also the wall time the client
saw from queueing the job to seeing it end. Bytes added: growth of restic's and borg's
repository folder and of the vault's store folder (``du -sB1``). The kept local snapshot's
copy-on-write cost on the host file system is reported separately; it is not backup data.

Writes benchmarks/RESULTS-disk-extension.md and /work/bench-data/disk-ext/results.json;
deletes the image, the host file system and the repositories at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_corpus import scan, warm_up  # noqa: E402
from bench_disk import build_image, rewrite_blocks  # noqa: E402
from bench_measure import busy_cores, disk_usage, run, sync  # noqa: E402
from bench_tools import Borg, Restic, Tool, freeze_kluis  # noqa: E402
from vault_bench_support import KLUIS, CpuMonitor, VaultServer, log, machine  # noqa: E402

DATA = Path("/work/bench-data/disk-ext")
CORPUS = Path("/work/bench-data/corpus")
RESULTS_MD = HERE / "RESULTS-disk-extension.md"
FULL_IMAGE = (4 * 2**30, 3_500_000_000)
QUICK_IMAGE = (512 * 2**20, 440_000_000)
PASSPHRASE = "kluis-benchmark-passphrase-not-secret"
FINAL = ("Completed", "CompletedWithWarnings", "Failed", "Cancelled")
TARGET_BYTES = 0.2
TARGET_TIME = 0.5


def _check(resp: httpx.Response, what: str) -> Any:
    if resp.status_code >= 400:
        raise RuntimeError(f"{what}: HTTP {resp.status_code}: {resp.text[:2000]}")
    return resp.json() if resp.content else None


# -- the host: an XFS file system with reflink on a loop device ---------------------------------


class HostFs:
    """A sparse file formatted XFS (reflink on), loop-mounted at ``mountpoint``."""

    def __init__(self, base: Path, size: int) -> None:
        self.file = base / "host-xfs.img"
        self.mountpoint = base / "host"
        self.size = size
        self.loop = ""

    def make(self) -> None:
        """Create, format and mount (after cleaning up a previous, interrupted run)."""
        self.close()
        self.file.unlink(missing_ok=True)
        with open(self.file, "wb") as fh:
            fh.truncate(self.size)
        run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(self.file)])
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.loop = run(["losetup", "--find", "--show", str(self.file)]).strip()
        run(["mount", self.loop, str(self.mountpoint)])

    def used(self) -> int:
        """Bytes in use on the host file system."""
        st = os.statvfs(self.mountpoint)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def close(self) -> None:
        """Unmount and detach (whatever is left from this or an earlier run)."""
        if os.path.ismount(self.mountpoint):
            run(["umount", str(self.mountpoint)], check=False)
        for line in run(["losetup", "-j", str(self.file)], check=False).splitlines():
            run(["losetup", "-d", line.split(":", 1)[0]], check=False)
        self.loop = ""

    def remove(self) -> None:
        """Close and delete the backing file."""
        self.close()
        self.file.unlink(missing_ok=True)
        if self.mountpoint.exists():
            self.mountpoint.rmdir()


# -- Kluis: vault + agent + snapshot extension -------------------------------------------------


class ExtensionPath:
    """A vault process and an agent daemon protecting one image file as a VM's disk."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.server = VaultServer(base / "vault", name="diskext")
        self.agent_dir = base / "agent-etc"
        self.scratch = base / "scratch"
        self.agent: subprocess.Popen[bytes] | None = None
        self.agent_log: Any = None
        self.http: httpx.Client | None = None
        self.item_id = ""

    def start(self, image: Path) -> None:
        """Fresh vault, agent registration and daemon, a policy, and the VM item for ``image``."""
        shutil.rmtree(self.base, ignore_errors=True)
        self.base.mkdir(parents=True)
        (self.base / "vault-tmp").mkdir()
        self.server.init({"server.tmp_dir": str(self.base / "vault-tmp")})
        self.server.start(log_level="warning")
        self.http = httpx.Client(
            base_url=self.server.url + "/api/v1",
            headers={"Authorization": f"Bearer {self.server.token}"},
            timeout=60,
        )
        creds = _check(self.http.post("/credentials"), "credentials")
        creds_file = self.base / creds["file_name"]
        creds_file.write_text(creds["content"])
        passfile = self.base / "pass"
        passfile.write_text(PASSPHRASE + "\n")
        done = self._kluis(
            "agent",
            "register",
            *("--vault-credentials", str(creds_file), "--passphrase-file", str(passfile)),
            *("--scratch", str(self.scratch), "--config-dir", str(self.agent_dir), "--json"),
        )
        self.agent_log = (self.base / "agent.log").open("ab")
        self.agent = subprocess.Popen(
            [str(KLUIS), "agent", "run", "--config-dir", str(self.agent_dir), "--log-level", "info"],
            stdout=self.agent_log,
            stderr=subprocess.STDOUT,
        )
        policy = {
            "name": "vms",
            "schedule": {"kind": "daily", "timezone": "UTC", "times": ["23:59"]},
            "retention": {"daily": 7, "instant_days": 1},
        }
        _check(self.http.post("/policies", json=policy), "policy")
        done = self._kluis("protect", "disks", str(image), "--policy", "vms", "--name", "vm0", "--json")
        self.item_id = json.loads(done)["id"]

    def _kluis(self, *args: str) -> str:
        env = dict(os.environ)
        env.update(
            KLUIS_VAULT_URL=self.server.url,
            KLUIS_TOKEN=self.server.token,
            KLUIS_AGENT_CONFIG_DIR=str(self.agent_dir),
        )
        done = subprocess.run(
            [str(KLUIS), *args], capture_output=True, text=True, env=env, check=False, timeout=600
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"kluis {' '.join(args[:2])} failed: {done.stderr[-3000:]} {done.stdout[-2000:]}"
            )
        return done.stdout

    def backup(self) -> dict[str, Any]:
        """An on-demand backup job, waited for and timed from its own timestamps."""
        assert self.http is not None and self.agent is not None
        monitor = CpuMonitor({"agent": self.agent.pid, "vault": self.server.pid}, interval=0.5).start()
        before = disk_usage(self.server.data / "store")
        t0 = time.monotonic()
        job = _check(self.http.post(f"/items/{self.item_id}/backup", json={}), "backup")
        deadline = time.monotonic() + 3600
        while job["status"] not in FINAL:
            if self.agent.poll() is not None:
                raise RuntimeError(f"the agent exited {self.agent.returncode}; see {self.base / 'agent.log'}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"backup job {job['id']} did not end within an hour")
            time.sleep(0.1)
            job = _check(self.http.get(f"/jobs/{job['id']}"), "job")
        wall = time.monotonic() - t0
        cpu = monitor.stop()
        if job["status"] not in ("Completed", "CompletedWithWarnings"):
            raise RuntimeError(f"backup job ended {job['status']}: {json.dumps(job.get('error'))[:2000]}")
        sync()
        times = {k: dt.datetime.fromisoformat(job[k]) for k in ("created_at", "dispatched_at", "ended_at")}
        stats = (job.get("result") or {}).get("stats") or {}
        return {
            "seconds": round((times["ended_at"] - times["dispatched_at"]).total_seconds(), 3),
            "client_wall_seconds": round(wall, 3),
            "bytes_added": disk_usage(self.server.data / "store") - before,
            "other_cores": round(cpu.get("other", 0.0), 2),
            "cpu": cpu,
            "stats": {k: v for k, v in stats.items() if not isinstance(v, (dict, list))},
        }

    def stop(self) -> None:
        """Stop the agent and the vault; the folders stay until ``remove``."""
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            try:
                self.agent.wait(30)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait(10)
        self.agent = None
        if self.agent_log is not None:
            self.agent_log.close()
            self.agent_log = None
        if self.http is not None:
            self.http.close()
            self.http = None
        self.server.stop()

    def remove(self) -> None:
        """Stop and delete everything of this run."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


# -- restic and borg ----------------------------------------------------------------------------


def tool_backup(tool: Tool, image: Path, name: str) -> dict[str, Any]:
    """One ``restic backup`` / ``borg create`` of the image file, with the repository's growth."""
    before = tool.repo_bytes()
    b = tool.backup([image], name)
    sync()
    return {**b.m.summary(), "bytes_added": tool.repo_bytes() - before}


# -- one run ------------------------------------------------------------------------------------


def one_run(i: int, pristine: Path, host: HostFs, order: list[str]) -> dict[str, Any]:
    """Fresh image copy and repositories; first backups, the 1% rewrite, second backups."""
    host.make()
    vm_dir = host.mountpoint / "vms" / "vm0"
    vm_dir.mkdir(parents=True)
    image = vm_dir / "root.img"
    run(["cp", "--sparse=always", str(pristine), str(image)])
    sync()
    tools: dict[str, Tool] = {
        "restic": Restic(DATA / "restic", PASSPHRASE),
        "borg": Borg(DATA / "borg", PASSPHRASE),
    }
    kluis = ExtensionPath(DATA / "kluis")
    rec: dict[str, Any] = {"run": i, "order": order, "first": {}, "second": {}}
    try:
        for tool in tools.values():
            tool.reset()
            tool.init()
        kluis.start(image)

        def backup(name: str, label: str) -> dict[str, Any]:
            warm_up([image])
            sync()
            if name == "kluis":
                return kluis.backup()
            return tool_backup(tools[name], image, f"{label}-{i}")

        for name in order:
            rec["first"][name] = backup(name, "disk1")
            log(f"  run {i}: first {name}: {rec['first'][name]['seconds']:.1f} s")
        # The rewrite itself is where copy-on-write of blocks shared with the kept snapshot happens.
        host_before = host.used()
        rec["rewrite"] = rewrite_blocks(image)
        sync()
        for name in order[::-1]:
            rec["second"][name] = backup(name, "disk2")
            log(
                f"  run {i}: second {name}: {rec['second'][name]['seconds']:.2f} s, "
                f"+{rec['second'][name]['bytes_added'] / 1e6:.1f} MB"
            )
        rec["host_fs_growth_rewrite_and_second"] = host.used() - host_before
        rec["snapshots_kept"] = len(list((vm_dir / ".kluis-snapshots").glob("*")))
    finally:
        kluis.remove()
        for tool in tools.values():
            tool.remove()
        host.close()
        host.file.unlink(missing_ok=True)
    return rec


# -- report -------------------------------------------------------------------------------------


def _med(runs: list[dict[str, Any]], step: str, tool: str, key: str) -> float:
    return float(statistics.median(r[step][tool][key] for r in runs))


def render(results: dict[str, Any]) -> str:
    """RESULTS-disk-extension.md."""
    runs = results["runs"]
    meta = results["meta"]
    img = meta["image"]
    lines = [
        "# Disk image through the agent and the snapshot extension, against restic and borg",
        "",
        f"Run {meta['started']} to {meta['finished']} on {meta['machine'].get('cpu', '?')} "
        f"({meta['machine'].get('nproc', '?')} cores, shared with other engineers' test runs), "
        f"{meta['kluis_commit']}; {meta['versions']['restic']}; {meta['versions']['borg']}.",
        "Command: `.venv/bin/python benchmarks/disk_extension.py"
        + (" --quick" if meta["quick"] else "")
        + f" --runs {meta['runs']}` (as root).",
        "",
        f"Image: {img['size'] / 2**30:.1f} GiB ext4, {img['files_copied']:,} corpus files "
        f"({img['bytes_copied'] / 1e9:.2f} GB) copied in; the rewrite overwrote "
        f"{runs[0]['rewrite']['blocks']:,} of its {runs[0]['rewrite']['of_blocks']:,} 4 KiB blocks (1%) with "
        "random bytes at seeded offsets, the same blocks in every run. The image sits on an XFS file "
        "system with reflink (a loop-mounted sparse file) as the disk of a stopped VM.",
        "",
        "Kluis: `kluis vault serve` (SQLite, local store) and `kluis agent run` on this machine, the image "
        "protected with `kluis protect disks IMAGE` and backed up by on-demand jobs; the agent installs the "
        "snapshot extension, takes a reflink snapshot (kept as the instant recovery point) and sends "
        "the blocks; the second job reads only the extents that differ from the previous snapshot. "
        "Its time is the job's `dispatched_at` to `ended_at` (snapshot phase included); the client's "
        "wall time (queueing to seeing the end, polled every 0.1 s) is beside it. restic and borg back "
        "the image file up as a file (`restic backup IMAGE`, `borg create --compression zstd,3`). "
        "Bytes added: growth of each repository folder (`du -sB1`; for Kluis the vault's store).",
        "",
        f"## Backup after the 1% rewrite (medians of {len(runs)} run{'s' if len(runs) != 1 else ''})",
        "",
        "| tool | time (s) | runs | ÷ restic | bytes added (MB) | runs | ÷ restic |",
        "| --- | ---: | --- | ---: | ---: | --- | ---: |",
    ]
    rt = _med(runs, "second", "restic", "seconds")
    rb = _med(runs, "second", "restic", "bytes_added")
    for tool in ("kluis", "restic", "borg"):
        t = _med(runs, "second", tool, "seconds")
        b = _med(runs, "second", tool, "bytes_added")
        tr = ", ".join(f"{r['second'][tool]['seconds']:.2f}" for r in runs)
        br = ", ".join(f"{r['second'][tool]['bytes_added'] / 1e6:.1f}" for r in runs)
        ratio_t = f"{t / rt:.3f}×" if tool != "restic" else ""
        ratio_b = f"{b / rb:.3f}×" if tool != "restic" else ""
        lines.append(f"| {tool} | {t:.2f} | {tr} | {ratio_t} | {b / 1e6:,.1f} | {br} | {ratio_b} |")
    kt, kb = _med(runs, "second", "kluis", "seconds"), _med(runs, "second", "kluis", "bytes_added")
    kw = float(statistics.median(r["second"]["kluis"]["client_wall_seconds"] for r in runs))
    lines += [
        "",
        "| target | Kluis | restic | ratio | met? |",
        "| --- | ---: | ---: | ---: | --- |",
        f"| bytes added ≤ {TARGET_BYTES}× restic | {kb / 1e6:,.1f} MB | {rb / 1e6:,.1f} MB | {kb / rb:.3f} | "
        f"{'**met**' if kb <= TARGET_BYTES * rb else 'not met'} |",
        f"| time ≤ {TARGET_TIME}× restic (job time) | {kt:.2f} s | {rt:.2f} s | {kt / rt:.3f} | "
        f"{'**met**' if kt <= TARGET_TIME * rt else 'not met'} |",
        f"| time ≤ {TARGET_TIME}× restic (client wall time) | {kw:.2f} s | {rt:.2f} s | {kw / rt:.3f} | "
        f"{'**met**' if kw <= TARGET_TIME * rt else 'not met'} |",
        "",
        "## First (full) backup, for reference",
        "",
        "| tool | time (s) | runs | repository after (MB) |",
        "| --- | ---: | --- | ---: |",
    ]
    for tool in ("kluis", "restic", "borg"):
        t = _med(runs, "first", tool, "seconds")
        tr = ", ".join(f"{r['first'][tool]['seconds']:.2f}" for r in runs)
        b = _med(runs, "first", tool, "bytes_added")
        lines.append(f"| {tool} | {t:.2f} | {tr} | {b / 1e6:,.1f} |")
    second_stats = [r["second"]["kluis"]["stats"] for r in runs]
    s0 = second_stats[0]
    lines += [
        "",
        "## Kluis's second job in detail (run 1)",
        "",
        f"- provider {s0.get('provider')}, consistency {s0.get('consistency')}, changed extents used: "
        f"{s0.get('changed_extents_used')}; snapshot phase {s0.get('snapshot_seconds')} s",
        f"- blocks read {s0.get('blocks_read')}, bytes read {s0.get('bytes_read')}; "
        f"job stats: {json.dumps({k: v for k, v in s0.items() if k.startswith(('bytes', 'blocks', 'new'))})}",
        f"- the kept local snapshot made the host file system grow by "
        f"{statistics.median(r['host_fs_growth_rewrite_and_second'] for r in runs) / 1e6:.1f} MB (median) "
        "from the rewrite to the end of the second backups (copy-on-write of the rewritten blocks "
        "that the first snapshot still shares, plus the second snapshot's metadata); that stays on "
        "the host while the instant point is kept and is not in the vault.",
        "",
        "## Load and noise",
        "",
        f"- load average at the start: {meta['loadavg_start']}; busy cores of the machine before the "
        f"first run: {meta['busy_cores_start']:.2f}",
    ]
    for r in runs:
        parts = []
        for tool in ("kluis", "restic", "borg"):
            s = r["second"][tool]
            parts.append(f"{tool} {s.get('other_cores', 0):.2f}")
        lines.append(
            f"- run {r['run']} (order of second backups: {', '.join(r['order'][::-1])}): cores other "
            f"processes used during the second backups: {'; '.join(parts)}"
        )
    spread = [r["second"]["restic"]["seconds"] for r in runs]
    if len(spread) > 1:
        lines.append(
            f"- restic's second-backup times spread {min(spread):.2f}-{max(spread):.2f} s; Kluis's "
            f"{min(r['second']['kluis']['seconds'] for r in runs):.2f}-"
            f"{max(r['second']['kluis']['seconds'] for r in runs):.2f} s."
        )
    if results.get("failures"):
        lines += ["", "## Failures", ""]
        lines += [f"- run {f['run']}: `{f['error'].strip().splitlines()[-1]}`" for f in results["failures"]]
    return "\n".join(lines) + "\n"


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="512 MiB image")
    p.add_argument("--keep-image", action="store_true", help="keep the pristine image for a later run")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("run as root: the benchmark loop-mounts file systems", file=sys.stderr)
        return 2
    size, fill = QUICK_IMAGE if args.quick else FULL_IMAGE
    DATA.mkdir(parents=True, exist_ok=True)
    # Other engineers edit the package while this runs: every kluis process (vault, agent, CLI)
    # imports one frozen copy, found first on PYTHONPATH.
    frozen, frozen_about = freeze_kluis(HERE.parent / "src", DATA / "frozen")
    os.environ["PYTHONPATH"] = str(frozen)
    pristine = DATA / ("pristine-quick.img" if args.quick else "pristine.img")
    host = HostFs(DATA, size * 2 + 2 * 2**30)
    results: dict[str, Any] = {
        "meta": {
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "quick": args.quick,
            "runs": args.runs,
            "machine": machine(),
            "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "busy_cores_start": busy_cores(2.0),
            "kluis_commit": frozen_about,
            "versions": {
                "restic": run(["restic", "version"]).strip().split(" compiled")[0],
                "borg": run(["borg", "--version"]).strip(),
            },
        },
        "runs": [],
    }
    orders = [["restic", "borg", "kluis"], ["kluis", "restic", "borg"], ["borg", "kluis", "restic"]]
    try:
        log(f"image {pristine}: preparing ({size / 2**30:.1f} GiB, fill {fill / 1e9:.2f} GB)")
        results["meta"]["image"] = build_image(pristine, scan(CORPUS), size=size, fill=fill)
        for i in range(1, args.runs + 1):
            log(f"run {i}/{args.runs}")
            try:
                results["runs"].append(one_run(i, pristine, host, orders[(i - 1) % len(orders)]))
            except Exception:
                results.setdefault("failures", []).append({"run": i, "error": traceback.format_exc()[-3000:]})
                log(f"  run {i} failed:\n{traceback.format_exc()[-2000:]}")
            (DATA / "results.json").write_text(json.dumps(results, indent=1))
    finally:
        host.remove()
        if not args.keep_image:
            pristine.unlink(missing_ok=True)
            pristine.with_name(pristine.name + ".json").unlink(missing_ok=True)
    results["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    (DATA / "results.json").write_text(json.dumps(results, indent=1))
    if results["runs"]:
        text = render(results)
        RESULTS_MD.write_text(text)
        print(text)
    return 1 if results.get("failures") else 0


if __name__ == "__main__":
    sys.exit(main())
