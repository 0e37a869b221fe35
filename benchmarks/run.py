"""Side-by-side benchmark of Kluis, restic and borg (`make bench`); writes RESULTS.md and results.json.

    .venv/bin/python benchmarks/run.py                  # full run: 3 runs per tool, corpus + disk image
    .venv/bin/python benchmarks/run.py --quick --runs 1 # 500 MB subset, results under /work/bench-data
    .venv/bin/python benchmarks/run.py --only kluis,restic --skip-disk
    .venv/bin/python benchmarks/run.py --profile-only   # py-spy profile of Kluis, merged into RESULTS.md
    .venv/bin/python benchmarks/run.py --render         # re-render RESULTS.md from results.json

Per run and tool, on a fresh repository: first backup, no-change re-backup,
backup after appending 13 bytes to every 100th file (undone afterwards), full
restore of the first snapshot (checked), read-data verify. Then the disk image:
backup, rewrite 1% of its 4 KiB blocks, backup again. Runs are interleaved
(run 1 of every tool, then run 2, ...) so slow drift of the machine hits all
tools alike. results.json and RESULTS.md are rewritten after every run, so a
long run can be followed and an interrupted one still leaves its numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_corpus import (  # noqa: E402
    CorpusInfo,
    appended,
    check_restore,
    prepare_full,
    prepare_subset,
    restored_root,
    warm_up,
)
from bench_disk import build_image, fresh_copy, rewrite_blocks  # noqa: E402
from bench_measure import PRIORITY, QUIET_GATE, disk_usage, drop_page_cache, sync  # noqa: E402
from bench_report import evaluate_targets, machine, medians, render  # noqa: E402
from bench_tools import DISK_ONLY, TOOLS, Kluis, KluisDiskApi, Tool, freeze_kluis  # noqa: E402

ALL_TOOLS: dict[str, type[Tool]] = {**TOOLS, **DISK_ONLY}
SOURCES = ["/usr/lib", "/usr/share"]
PASSPHRASE = "kluis-benchmark-passphrase-not-secret"
FULL_IMAGE = (4 * 2**30, 3_500_000_000)
QUICK_IMAGE = (512 * 2**20, 440_000_000)
QUICK_BYTES = 500_000_000


def log(msg: str) -> None:
    """Progress line with a timestamp."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def tree_run(tool: Tool, corpus: CorpusInfo, i: int) -> dict[str, Any]:
    """One file-tree run of one tool on a fresh repository."""
    tool.reset()
    rec: dict[str, Any] = {"run": i}
    try:
        rec["init"] = tool.init().summary()
        _bytes, warm_s = warm_up([corpus.root])
        rec["warm_up_seconds"] = round(warm_s, 2)
        sync()
        first = tool.backup([corpus.root], f"first-{i}")
        rec["first"] = {
            **first.m.summary(),
            "mb_s": corpus.bytes / first.m.seconds / 1e6,
            "report": first.report,
        }
        rec["first_sync_after_seconds"] = round(sync(), 2)
        rec["repo_bytes"] = tool.repo_bytes()
        rec["cache_bytes_after_first"] = tool.cache_bytes()
        log(
            f"  {tool.name} run {i}: first backup {first.m.seconds:.1f} s "
            f"({rec['first']['mb_s']:.0f} MB/s, {first.m.cores:.2f} cores, "
            f"{first.m.max_rss_kib / 1024:.0f} MiB), repo {rec['repo_bytes'] / 1e6:.0f} MB"
        )

        again = tool.backup([corpus.root], f"nochange-{i}")
        rec["nochange"] = {**again.m.summary(), "report": again.report}
        sync()
        before = tool.repo_bytes()
        with appended(corpus) as change:
            sync()
            app = tool.backup([corpus.root], f"append-{i}")
        sync()
        after = tool.repo_bytes()
        rec["append"] = {
            **app.m.summary(),
            **{f"changed_{k}": v for k, v in change.items()},
            "bytes_added": after - before,
            "report": app.report,
        }
        log(
            f"  {tool.name} run {i}: no-change {again.m.seconds:.2f} s; append {app.m.seconds:.2f} s "
            f"+{(after - before) / 1e6:.1f} MB"
        )

        target = tool.run_dir / "restore"
        sync()
        cold = drop_page_cache()
        restore = tool.restore(first.snapshot, target)
        sync_after = sync()
        check = check_restore(corpus, restored_root(target, corpus.root))
        rec["restore"] = {
            **restore.summary(),
            "mb_s": corpus.bytes / restore.seconds / 1e6,
            "sync_after_seconds": round(sync_after, 2),
            "cold": cold,
            "check": check,
        }
        shutil.rmtree(target)
        sync()
        verify = tool.verify()
        rec["verify"] = verify.summary()
        log(
            f"  {tool.name} run {i}: restore {restore.seconds:.1f} s ({rec['restore']['mb_s']:.0f} MB/s, "
            f"complete={check['complete']}); verify {verify.seconds:.1f} s"
        )
        steps = [first.m, again.m, app.m, restore, verify]
        rec["peak_rss_mib"] = round(max(m.max_rss_kib for m in steps) / 1024, 1)
    finally:
        tool.remove()
    return rec


def disk_run(tool: Tool, pristine: Path, work: Path, i: int) -> dict[str, Any]:
    """One disk-image run of one tool: backup, rewrite 1% of the blocks, backup again."""
    tool.reset()
    rec: dict[str, Any] = {"run": i}
    try:
        tool.init()
        fresh_copy(pristine, work)
        size = work.stat().st_size

        def backup(name: str) -> Any:
            if isinstance(tool, Kluis):
                return tool.backup_disk(work, name)
            return tool.backup([work], name)

        warm_up([work])
        sync()
        first = backup(f"disk1-{i}")
        sync()
        rec["first"] = {**first.m.summary(), "mb_s": size / first.m.seconds / 1e6, "report": first.report}
        rec["repo_bytes"] = tool.repo_bytes()
        rec["rewrite"] = rewrite_blocks(work)
        warm_up([work])
        sync()
        second = backup(f"disk2-{i}")
        sync()
        rec["second"] = {**second.m.summary(), "report": second.report}
        rec["bytes_added"] = tool.repo_bytes() - rec["repo_bytes"]
        rec["peak_rss_mib"] = round(max(first.m.max_rss_kib, second.m.max_rss_kib) / 1024, 1)
        log(
            f"  {tool.name} disk run {i}: first {first.m.seconds:.1f} s, "
            f"repo {rec['repo_bytes'] / 1e6:.0f} MB; "
            f"after rewrite {second.m.seconds:.1f} s, +{rec['bytes_added'] / 1e6:.1f} MB"
        )
    finally:
        tool.remove()
        work.unlink(missing_ok=True)
    return rec


def kluis_settings() -> dict[str, Any]:
    """Engine defaults worth printing beside the numbers (read from the installed Kluis)."""
    out: dict[str, Any] = {}
    try:
        if Kluis.source is not None:
            sys.path.insert(0, str(Kluis.source))
        from kluis.engine.blobs import compression_level

        out["zstd_level"] = compression_level()
    except Exception as exc:  # the engine is under active development; the figure is informative only
        out["zstd_level_error"] = repr(exc)
    return out


def notes(args: argparse.Namespace, disk_mode: str | None, tools: list[str]) -> list[str]:
    """The method notes printed under 'Method'."""
    n = [
        "Every first backup starts from a warm page cache: the whole corpus (or image) is read once, "
        "cat-style with two threads, right before it. The machine's RAM holds corpus, repository and "
        "restore at once.",
        "Restores of runs whose results.json says `restore.cold: true` (from 2026-12-05 on) start after "
        "`sync` and a drop of the page cache (`/proc/sys/vm/drop_caches`), for every tool alike; older "
        "runs restored from whatever cache earlier steps left, and their times swung with it.",
        "`sync` runs before every timed step (not timed), so one step's write-back does not land in the "
        "next one. Restore times are the tools' own; the `sync` after each restore is recorded separately "
        "in results.json (`restore.sync_after_seconds`).",
        "Times are wall-clock of the tool's process; CPU time comes from `wait4()` on it, peak RSS "
        "from GNU time (`/usr/bin/time -f %M`), which starts the tool itself: Linux keeps a process's "
        "RSS high-water mark across fork and exec, so the harness's own RSS would otherwise leak in.",
        "Repository size and growth are `du -sB1` of the repository directory (caches, Kluis's scratch "
        "folder and borg's files cache are outside it).",
        "Append step: 13 bytes appended to every 100th regular file (sorted by path, one change per inode), "
        "backed up, then truncated back and the mtimes restored.",
        "Restore: the first backup's snapshot, restored whole into an empty folder and checked "
        "(file count, bytes, 100 seeded sample files by hash), then deleted.",
        "Verify: `kluis repo verify --read-data`, `restic check --read-data`, `borg check --verify-data`.",
        f"restic: repository format 2, compression {TOOLS['restic'].compression}. "
        f"borg: `--compression {TOOLS['borg'].compression}`, encryption `repokey` (HMAC-SHA256 + AES-CTR; "
        "the CPU has SHA-NI). Kluis: real argon2 KDF parameters (KLUIS_FAST_KDF unset), default threads.",
    ]
    if args.quiet_wait > 0:
        n.append(
            "The machine is shared with other engineers' test runs. Before each measured command the "
            f"harness waited (up to {args.quiet_wait:.0f} s) until the rest of the machine kept fewer than "
            f"{args.quiet_threshold} cores busy; what else ran during each command is recorded "
            "(`other_cores`, from /proc/stat minus the tool's own CPU time) and summarised below."
        )
    if args.nice and os.geteuid() == 0:
        n.append(
            f"Every measured command ran under `nice -n {args.nice}` in a session of its own whose "
            f"scheduler autogroup also had nice {args.nice} (all three tools alike), so that other "
            "processes on the shared machine got mostly the CPU the tool left idle."
        )
    if disk_mode:
        n.append(f"Disk image: Kluis (row `kluis`) backed the image up {disk_mode}.")
    if KluisDiskApi.name in tools:
        n.append(
            f"Disk image, row `{KluisDiskApi.name}` (supplementary): Kluis's disk-image engine "
            "(`kluis.engine.disk_backup.DiskBackup`, default block size, previous disk point passed on) "
            "driven through its Python API by `benchmarks/kluis_disk_driver.py`, because no CLI "
            "command reaches it yet. Same repository format, KDF and threads as the CLI."
        )
    if args.quick:
        n.append("QUICK MODE: a 500 MB subset and a small image; not the figures the issue asks for.")
    return n


def write_outputs(results: dict[str, Any], out: Path) -> None:
    """results.json and RESULTS.md, from the current state."""
    results["medians"] = medians(results)
    results["targets"] = evaluate_targets(results["medians"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    render_file(out)


def render_file(out: Path) -> None:
    """RESULTS.md from results.json, profile.json and profile_notes.md in ``out``."""
    results = json.loads((out / "results.json").read_text())
    prof_path = out / "profile.json"
    notes_path = out / "profile_notes.md"
    profile = json.loads(prof_path.read_text()) if prof_path.exists() else None
    text = render(results, profile, notes_path.read_text() if notes_path.exists() else None)
    (out / "RESULTS.md").write_text(text)


def write_profile(corpus: CorpusInfo, data: Path, out: Path) -> None:
    """Profile Kluis with py-spy into profile.json and re-render RESULTS.md."""
    from bench_profile import profile_kluis

    (out / "profile.json").write_text(json.dumps(profile_kluis(corpus, data, PASSPHRASE), indent=1) + "\n")
    if (out / "results.json").exists():
        render_file(out)


def new_results(args: argparse.Namespace, corpus: CorpusInfo, tools: list[str]) -> dict[str, Any]:
    """An empty results document for this invocation."""
    meta: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "finished": None,
        "runs": args.runs,
        "machine": machine(),
        "versions": {name: ALL_TOOLS[name].version() for name in tools},
        "compression": {name: ALL_TOOLS[name].compression for name in tools},
        "kluis_settings": kluis_settings() if "kluis" in tools else {},
        "corpus": corpus.describe(),
        "corpus_sources": SOURCES,
        "kluis_disk_mode": None,
        "notes": notes(args, None, tools),
    }
    for name in tools:
        if name.startswith("kluis"):
            level = meta["kluis_settings"].get("zstd_level", "?")
            meta["compression"][name] = f"zstd level {level} (engine default; raw when incompressible)"
    return {
        "meta": meta,
        "tools": [t for t in tools if t in TOOLS],
        "disk_tools": [],
        "tree_runs": {t: [] for t in tools if t in TOOLS},
        "disk_runs": {},
    }


def merge_into(old: dict[str, Any], new: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """--merge: keep an earlier results.json and replace only what this invocation measures."""
    merged = old
    merged.setdefault("disk_tools", list(old.get("disk_runs", {})))
    merged.setdefault("merges", []).append(
        {
            "time": new["meta"]["started"],
            "tools": list(new["meta"]["versions"]),
            "tree": not args.skip_tree,
            "disk": not args.skip_disk,
            "versions": new["meta"]["versions"],
        }
    )
    for t in new["tools"]:
        if t not in merged["tools"]:
            merged["tools"].append(t)
        merged["tree_runs"].setdefault(t, [])
    merged["meta"]["versions"].update(new["meta"]["versions"])
    merged["meta"]["compression"].update(new["meta"]["compression"])
    merged["meta"]["finished"] = None
    return merged


def main() -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="runs per tool (medians are reported)")
    p.add_argument("--only", default="kluis,restic,borg", help="comma-separated tools")
    p.add_argument("--skip-disk", action="store_true", help="leave out the disk-image benchmark")
    p.add_argument("--skip-tree", action="store_true", help="leave out the file-tree benchmark")
    p.add_argument("--quick", action="store_true", help="500 MB subset and a small image, for a fast check")
    p.add_argument("--data", type=Path, default=Path(os.environ.get("BENCH_DATA", "/work/bench-data")))
    p.add_argument(
        "--out", type=Path, help="where results go (default: benchmarks/, quick: DATA/quick-results)"
    )
    p.add_argument("--refresh-corpus", action="store_true", help="copy the corpus again")
    p.add_argument("--profile", action="store_true", help="after the runs, profile Kluis with py-spy")
    p.add_argument("--profile-only", action="store_true", help="only profile Kluis with py-spy")
    p.add_argument("--render", action="store_true", help="only re-render RESULTS.md from results.json")
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the existing results.json and replace only the tools and phases run now",
    )
    p.add_argument(
        "--no-disk-api",
        action="store_true",
        help="do not add the supplementary kluis-disk-api row while `kluis repo backup-disk` is missing",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=90.0,
        help="before each measured command, wait up to this many seconds for the rest of the machine "
        "to go quiet (it is shared); 0 disables",
    )
    p.add_argument(
        "--quiet-threshold", type=float, default=0.3, help="'quiet' means fewer busy cores than this"
    )
    p.add_argument(
        "--nice", type=int, default=-15, help="nice value for the measured commands (root only; 0: unchanged)"
    )
    p.add_argument(
        "--kluis-src",
        type=Path,
        default=HERE.parent / "src",
        help="source folder whose kluis package is frozen (copied) and measured",
    )
    args = p.parse_args()
    # `kill` (SIGTERM) unwinds like Ctrl-C, so finally blocks delete repositories, undo the
    # append step and unmount; a background job started by a shell ignores SIGINT.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    QUIET_GATE.update(threshold=args.quiet_threshold, max_wait=args.quiet_wait)
    PRIORITY.update(nice=args.nice)

    out: Path = args.out or (args.data / "quick-results" if args.quick else HERE)
    if args.render:
        render_file(out)
        return 0
    if os.geteuid() != 0 and not args.skip_disk:
        print(
            "the disk-image benchmark loop-mounts an image: run as root or pass --skip-disk", file=sys.stderr
        )
        return 2
    tools = [t.strip() for t in args.only.split(",") if t.strip()]
    unknown = set(tools) - set(ALL_TOOLS)
    if unknown:
        p.error(f"unknown tools: {', '.join(sorted(unknown))}")
    for name in tools:
        if name in ("restic", "borg") and not shutil.which(name):
            p.error(f"{name} is not installed (make bench installs it)")

    data: Path = args.data
    (data / "repos").mkdir(parents=True, exist_ok=True)
    if any(t.startswith("kluis") for t in tools) or args.profile_only:
        Kluis.source, Kluis.described = freeze_kluis(args.kluis_src, data / "frozen")
        log(f"measuring {Kluis.described}")
    full = prepare_full(data / "corpus", SOURCES, refresh=args.refresh_corpus)
    corpus = prepare_subset(full, data / "corpus-quick", QUICK_BYTES) if args.quick else full

    if args.profile_only:
        write_profile(corpus, data, out)
        return 0

    tree_tools = [t for t in tools if t in TOOLS]
    disk_tools = list(tools)
    results = new_results(args, corpus, tools)
    old_path = out / "results.json"
    if args.merge and old_path.exists():
        results = merge_into(json.loads(old_path.read_text()), results, args)

    def one(name: str, i: int, kind: str) -> None:
        tool = ALL_TOOLS[name](data / "repos" / f"{name}-{kind}-{i}", PASSPHRASE)
        try:
            if kind == "tree":
                results["tree_runs"][name].append(tree_run(tool, corpus, i))
            else:
                results["disk_runs"][name].append(disk_run(tool, pristine, work, i))
        except Exception:
            log(f"  {name} {kind} run {i} FAILED:\n{traceback.format_exc()}")
            results.setdefault("failures", []).append(
                {"tool": name, "kind": kind, "run": i, "error": traceback.format_exc()[-3000:]}
            )
        write_outputs(results, out)

    log(f"corpus {corpus.root}: {corpus.count} files, {corpus.bytes / 1e9:.2f} GB; tools {', '.join(tools)}")
    if not args.skip_tree:
        for name in tree_tools:
            results["tree_runs"][name] = []
        for i in range(1, args.runs + 1):
            for name in tree_tools:
                log(f"file tree, run {i}/{args.runs}: {name}")
                one(name, i, "tree")
    if not args.skip_disk:
        size, fill = QUICK_IMAGE if args.quick else FULL_IMAGE
        # Not data/"disk": benchmarks/disk_blocksize.py owns that folder and deletes it.
        pristine = data / "image" / ("pristine-quick.img" if args.quick else "pristine.img")
        work = data / "image" / "work.img"
        log(f"disk image {pristine} ({size / 2**30:.1f} GiB, fill {fill / 1e9:.2f} GB): preparing")
        results["meta"]["disk_image"] = build_image(pristine, full, size=size, fill=fill)
        if "kluis" in disk_tools:
            # Decided once, when the disk phase starts (the disk engine is being written meanwhile),
            # so every run of this phase takes the same path.
            use_disk = Kluis.disk_engine_available()
            os.environ.setdefault("KLUIS_BENCH_DISK_MODE", "disk" if use_disk else "file")
            wanted = not use_disk and KluisDiskApi.api_available() and not args.no_disk_api
            if wanted and KluisDiskApi.name not in disk_tools:
                disk_tools.insert(disk_tools.index("kluis") + 1, KluisDiskApi.name)
            results["meta"]["kluis_disk_mode"] = (
                "through its disk-image engine (`kluis repo backup-disk`)"
                if use_disk
                else "AS A SINGLE PLAIN FILE through the file-tree engine (the disk-image command "
                "`kluis repo backup-disk` did not exist yet when this phase started)"
            )
        fresh = notes(args, results["meta"].get("kluis_disk_mode"), disk_tools)
        if args.merge:  # keep the earlier run's notes, add what is new
            fresh = results["meta"]["notes"] + [n for n in fresh if n not in results["meta"]["notes"]]
        results["meta"]["notes"] = fresh
        for name in disk_tools:
            results["disk_runs"][name] = []
            results["meta"]["versions"].setdefault(name, ALL_TOOLS[name].version())
            results["meta"]["compression"].setdefault(name, results["meta"]["compression"].get("kluis", ""))
        results["disk_tools"] = sorted(
            set(results.get("disk_tools", [])) | set(disk_tools), key=lambda t: list(ALL_TOOLS).index(t)
        )
        for i in range(1, args.runs + 1):
            for name in disk_tools:
                log(f"disk image, run {i}/{args.runs}: {name}")
                one(name, i, "disk")
        if results["disk_runs"].get(disk_tools[0]):
            results["meta"]["disk_image"]["rewrite"] = results["disk_runs"][disk_tools[0]][0]["rewrite"]
    results["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    results["meta"]["repos_left_bytes"] = disk_usage(data / "repos")
    write_outputs(results, out)
    if args.profile and "kluis" in tools:
        write_profile(corpus, data, out)
    log(f"done: {out / 'RESULTS.md'}")
    return 1 if results.get("failures") else 0


if __name__ == "__main__":
    sys.exit(main())
