"""Figures, medians, targets, the machine description, and RESULTS.md."""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_measure import run

Run = dict[str, Any]


@dataclass(frozen=True)
class Figure:
    """One measured quantity, read from a run record."""

    key: str
    label: str
    unit: str
    get: Callable[[Run], float]
    kind: str  # "tree" or "disk"
    digits: int = 1


def _mb(n: float) -> float:
    return n / 1e6


FIGURES = [
    Figure("first_seconds", "First backup: time", "s", lambda r: r["first"]["seconds"], "tree"),
    Figure("first_mb_s", "First backup: throughput", "MB/s", lambda r: r["first"]["mb_s"], "tree"),
    Figure(
        "first_cores",
        "First backup: cores busy (CPU time / wall time)",
        "cores",
        lambda r: r["first"]["cores"],
        "tree",
        2,
    ),
    Figure("first_rss", "First backup: peak RSS", "MiB", lambda r: r["first"]["max_rss_mib"], "tree"),
    Figure("peak_rss", "Peak RSS over all steps", "MiB", lambda r: r["peak_rss_mib"], "tree"),
    Figure(
        "repo_mb", "Repository size after the first backup (du)", "MB", lambda r: _mb(r["repo_bytes"]), "tree"
    ),
    Figure(
        "nochange_seconds", "No-change re-backup: time", "s", lambda r: r["nochange"]["seconds"], "tree", 2
    ),
    Figure(
        "append_seconds",
        "Every 100th file appended, backup: time",
        "s",
        lambda r: r["append"]["seconds"],
        "tree",
        2,
    ),
    Figure(
        "append_added_mb",
        "Every 100th file appended, backup: repository growth (du)",
        "MB",
        lambda r: _mb(r["append"]["bytes_added"]),
        "tree",
        2,
    ),
    Figure("restore_seconds", "Full restore: time", "s", lambda r: r["restore"]["seconds"], "tree"),
    Figure("restore_mb_s", "Full restore: throughput", "MB/s", lambda r: r["restore"]["mb_s"], "tree"),
    Figure("verify_seconds", "Read-data verify: time", "s", lambda r: r["verify"]["seconds"], "tree"),
    Figure(
        "disk_first_seconds", "Disk image, first backup: time", "s", lambda r: r["first"]["seconds"], "disk"
    ),
    Figure(
        "disk_repo_mb",
        "Disk image, repository size after the first backup",
        "MB",
        lambda r: _mb(r["repo_bytes"]),
        "disk",
    ),
    Figure(
        "disk_second_seconds",
        "Disk image, backup after the 1% rewrite: time",
        "s",
        lambda r: r["second"]["seconds"],
        "disk",
        2,
    ),
    Figure(
        "disk_added_mb",
        "Disk image, backup after the 1% rewrite: repository growth",
        "MB",
        lambda r: _mb(r["bytes_added"]),
        "disk",
    ),
    Figure("disk_rss", "Disk image: peak RSS", "MiB", lambda r: r["peak_rss_mib"], "disk"),
]
BY_KEY = {f.key: f for f in FIGURES}


@dataclass(frozen=True)
class Target:
    """An issue target: Kluis's figure against restic's, as a ratio with a bound."""

    label: str
    key: str
    inverse: bool  # ratio is restic/kluis (speed from times) instead of kluis/restic
    op: str  # ">=" or "<="
    bound: float
    tool: str = "kluis"  # the Kluis row compared (the disk engine has a row of its own for now)

    def ratio(self, kluis: float, restic: float) -> float | None:
        """Kluis's ratio to restic as the target states it."""
        num, den = (restic, kluis) if self.inverse else (kluis, restic)
        return num / den if den else None

    def met(self, ratio: float) -> bool:
        """Whether the ratio meets the bound."""
        return ratio >= self.bound if self.op == ">=" else ratio <= self.bound


TARGETS = [
    Target("First backup throughput, × restic", "first_mb_s", False, ">=", 3.0),
    Target("No-change re-backup time, × restic", "nochange_seconds", False, "<=", 0.25),
    Target("Restore throughput, × restic", "restore_mb_s", False, ">=", 2.0),
    Target("Verify speed (restic time / Kluis time)", "verify_seconds", True, ">=", 2.0),
    Target("Repository size, × restic", "repo_mb", False, "<=", 1.0),
    Target("Peak RSS (all steps), × restic", "peak_rss", False, "<=", 1.0),
    Target("Disk image: bytes added after 1% rewrite, × restic", "disk_added_mb", False, "<=", 0.2),
    Target(
        "Disk image, disk engine via its Python API (supplementary): bytes added, × restic",
        "disk_added_mb",
        False,
        "<=",
        0.2,
        tool="kluis-disk-api",
    ),
]


def all_tools(results: dict[str, Any]) -> list[str]:
    """Tree tools, then disk-only ones, each once."""
    out = list(results["tools"])
    out += [t for t in results.get("disk_tools", []) if t not in out]
    return out


def medians(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Median of every figure per tool (over the runs that have it)."""
    out: dict[str, dict[str, float]] = {}
    for tool in all_tools(results):
        row: dict[str, float] = {}
        for f in FIGURES:
            runs = results["tree_runs" if f.kind == "tree" else "disk_runs"].get(tool, [])
            values = [f.get(r) for r in runs]
            if values:
                row[f.key] = statistics.median(values)
        out[tool] = row
    return out


def evaluate_targets(med: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Each target with Kluis's ratio and met / missed."""
    rows = []
    for t in TARGETS:
        if t.tool not in med:
            continue
        k = med.get(t.tool, {}).get(t.key)
        r = med.get("restic", {}).get(t.key)
        ratio = t.ratio(k, r) if k is not None and r is not None else None
        rows.append(
            {
                "target": t.label,
                "figure": t.key,
                "bound": f"{t.op} {t.bound:g}",
                "kluis": k,
                "restic": r,
                "ratio": ratio,
                "met": None if ratio is None else t.met(ratio),
            }
        )
    return rows


def machine() -> dict[str, str]:
    """What this machine is, for the results file."""
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    data = Path(os.environ.get("BENCH_DATA", "/work/bench-data"))
    fs = run(["findmnt", "-no", "FSTYPE,SOURCE", "-T", str(data if data.exists() else "/")], check=False)
    return {
        "nproc": run(["nproc"]).strip(),
        "cpu": cpu,
        "free_h": run(["free", "-h"]).rstrip(),
        "kernel": platform.release(),
        "os": platform.freedesktop_os_release().get("PRETTY_NAME", "")
        if hasattr(platform, "freedesktop_os_release")
        else "",
        "python": platform.python_version(),
        "bench_fs": fs.strip(),
    }


def _fmt(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def _ratio_text(key: str, med: dict[str, dict[str, float]], tool: str = "kluis") -> str:
    k = med.get(tool, {}).get(key)
    r = med.get("restic", {}).get(key)
    if k is None or r is None or r == 0:
        return "–"
    return f"{k / r:.2f}×"


def render(results: dict[str, Any], profile: dict[str, Any] | None, notes: str | None) -> str:
    """RESULTS.md from results.json (+ the py-spy profile summary and hand-written notes)."""
    meta = results["meta"]
    med = results["medians"]
    tools = results["tools"]
    lines: list[str] = []
    add = lines.append
    add("# Kluis benchmarks: side by side with restic and borg")
    add("")
    add(f"Generated by `benchmarks/run.py` ({meta['mode']} mode); raw numbers in `results.json` beside it.")
    state = "complete" if meta.get("finished") else "PARTIAL (still running or interrupted)"
    add(
        f"Run started {meta['started']}, {state}"
        + (f", finished {meta['finished']}." if meta.get("finished") else ".")
    )
    add(f"Medians of {meta['runs']} runs per tool; each run uses a fresh repository and fresh caches.")
    add("")
    add("## Machine")
    add("")
    m = meta["machine"]
    add(f"- CPU: {m['nproc']} cores ({m['cpu']}); kernel {m['kernel']}; {m['os']}; Python {m['python']}")
    add(f"- File system holding corpus, repositories and restores: {m['bench_fs']}")
    add("- Memory (`free -h`):")
    add("")
    add("```")
    add(m["free_h"])
    add("```")
    add("")
    add("Tools:")
    add("")
    for name, v in meta["versions"].items():
        add(f"- {name}: {v}; compression: {meta['compression'][name]}")
    add("")
    c = meta["corpus"]
    add("## Method")
    add("")
    add(
        f"- Corpus: copy of {', '.join(meta['corpus_sources'])} at `{c['path']}`: "
        f"{c['files']:,} regular files, "
        f"{c['bytes'] / 1e9:.2f} GB, {c['dirs']:,} directories, {c['symlinks']:,} symlinks. MB = 10⁶ bytes."
    )
    for n in meta["notes"]:
        add(f"- {n}")
    for mg in results.get("merges", []):
        phases = " and ".join(p for p, on in (("file-tree", mg["tree"]), ("disk-image", mg["disk"])) if on)
        add(
            f"- Added later by a second invocation (`--merge`, {mg['time']}): {', '.join(mg['tools'])}, "
            f"{phases} phase, same harness and settings ({'; '.join(sorted(set(mg['versions'].values())))})."
        )
    add("")
    add("## Targets (issue 2), Kluis ÷ restic, medians")
    add("")
    add("| target | bound | Kluis | restic | ratio | result |")
    add("| --- | --- | ---: | ---: | ---: | --- |")
    for t in results["targets"]:
        f = BY_KEY[t["figure"]]
        res = "–" if t["met"] is None else ("**met**" if t["met"] else "**missed**")
        ratio = "–" if t["ratio"] is None else f"{t['ratio']:.2f}"
        add(
            f"| {t['target']} | {t['bound']} | {_fmt(t['kluis'], f.digits)} {f.unit} | "
            f"{_fmt(t['restic'], f.digits)} {f.unit} | {ratio} | {res} |"
        )
    add("")
    add("## Figures")
    add("")
    for kind, title in (("tree", "File tree (corpus)"), ("disk", "Disk image")):
        figs = [f for f in FIGURES if f.kind == kind]
        runs_key = "tree_runs" if kind == "tree" else "disk_runs"
        kind_tools = tools if kind == "tree" else results.get("disk_tools") or tools
        if not any(results[runs_key].get(t) for t in kind_tools):
            continue
        add(f"### {title}")
        add("")
        if kind == "disk":
            d = meta.get("disk_image", {})
            rw = d.get("rewrite", {})
            add(
                f"Image: {d.get('size', 0) / 2**30:.1f} GiB ext4 with "
                f"{d.get('files_copied', 0):,} corpus files "
                f"({d.get('bytes_copied', 0) / 1e9:.2f} GB) copied in through a loop mount; then "
                f"{rw.get('blocks', 0):,} of its {rw.get('of_blocks', 0):,} 4 KiB blocks (1%) "
                "overwritten with random bytes at seeded random offsets (same blocks every run)."
            )
            add(f"Kluis backed the image up {meta.get('kluis_disk_mode', 'n/a')}.")
            add("")
        for f in figs:
            target = next((t for t in TARGETS if t.key == f.key), None)
            tline = f" — target: Kluis {target.op} {target.bound:g}× restic" if target else ""
            if target and target.inverse:
                tline = f" — target: restic's time ÷ Kluis's time {target.op} {target.bound:g}"
            add(f"**{f.label}** ({f.unit}){tline}")
            add("")
            add("| tool | median | runs | ÷ restic |")
            add("| --- | ---: | --- | ---: |")
            for tool in kind_tools:
                runs = results[runs_key].get(tool, [])
                if not runs:
                    continue
                vals = ", ".join(_fmt(f.get(r), f.digits) for r in runs)
                add(
                    f"| {tool} | {_fmt(med[tool].get(f.key), f.digits)} | {vals} | "
                    f"{_ratio_text(f.key, med, tool) if tool.startswith('kluis') else ''} |"
                )
            add("")
    checks = [(tool, r["restore"]["check"]) for tool in tools for r in results["tree_runs"].get(tool, [])]
    if checks:
        add("### Restore checks")
        add("")
        bad = [(t, c) for t, c in checks if not c.get("complete")]
        add(
            f"{len(checks) - len(bad)} of {len(checks)} restores complete "
            "(regular-file count and bytes equal to the corpus, "
            "100 seeded sample files identical by BLAKE2b)."
        )
        for t, c in bad:
            add(f"- INCOMPLETE {t}: {json.dumps(c)}")
        add("")
    lines.extend(render_background(results))
    if profile:
        lines.extend(render_profile(profile))
    if notes:
        add(notes.rstrip())
        add("")
    return "\n".join(lines) + "\n"


def render_profile(profile: dict[str, Any]) -> list[str]:
    """The py-spy section."""
    lines = ["## Profile of Kluis (py-spy)", ""]
    add = lines.append
    add(
        f"Recorded {profile['recorded']} at {profile['rate']} samples/s with {profile['py_spy']}, "
        f"Kluis {profile['kluis']}, on `{profile['corpus']}`. Speedscope files: "
        + ", ".join(f"`{p}`" for p in profile["files"])
        + "."
    )
    add("")
    for phase in profile["phases"]:
        add(f"### {phase['title']}: {phase['seconds']:.1f} s wall")
        add("")
        add(
            f"- Samples with the GIL held (`--gil`): {phase['gil_share']:.0%} of wall time "
            f"(1.0 = one thread held the GIL all the time; 2 cores available)."
        )
        add(
            "- Active (not idle) samples per thread, as a share of wall time: "
            + "; ".join(f"{t['name']} {t['share']:.0%}" for t in phase["threads"])
        )
        add("")
        add("| function (self time, all threads) | share of active samples |")
        add("| --- | ---: |")
        for fn in phase["top_self"]:
            add(f"| `{fn['name']}` | {fn['share']:.1%} |")
        add("")
        add("| Kluis function (inclusive, all threads) | share of active samples |")
        add("| --- | ---: |")
        for fn in phase["top_inclusive"]:
            add(f"| `{fn['name']}` | {fn['share']:.1%} |")
        add("")
        if phase.get("top_wall_lines"):
            add(
                "Wall time including waiting (`--idle`: blocked threads sampled too), by the line each "
                "thread was on; shares of all thread-samples ("
                + ", ".join(t["name"] for t in phase.get("threads_wall", []))
                + "):"
            )
            add("")
            add("| line (self, idle included) | share of all samples |")
            add("| --- | ---: |")
            for fn in phase["top_wall_lines"]:
                add(f"| `{fn['name']}` | {fn['share']:.1%} |")
            add("")
        add("| function holding the GIL (self) | share of GIL-held samples |")
        add("| --- | ---: |")
        for fn in phase["top_gil"]:
            add(f"| `{fn['name']}` | {fn['share']:.1%} |")
        add("")
    return lines


STEPS = [
    ("tree", "first", "first backup"),
    ("tree", "nochange", "no-change"),
    ("tree", "append", "append"),
    ("tree", "restore", "restore"),
    ("tree", "verify", "verify"),
    ("disk", "first", "disk 1st"),
    ("disk", "second", "disk 2nd"),
]


def render_background(results: dict[str, Any]) -> list[str]:
    """How busy the rest of the machine was while each step ran (max over runs, in cores)."""
    tools = all_tools(results)
    cols = [
        (kind, step, title)
        for kind, step, title in STEPS
        if any(results[f"{kind}_runs"].get(t) for t in tools)
    ]
    if not cols:
        return []
    lines = [
        "### Background load",
        "",
        "Cores kept busy by everything else on the machine while each step ran (highest over the runs; "
        "the VM has 2). Steps with a high figure were measured on a busy machine.",
        "",
        "| tool | " + " | ".join(c[2] for c in cols) + " |",
        "| --- |" + " ---: |" * len(cols),
    ]
    for tool in tools:
        cells = []
        for kind, step, _title in cols:
            vals = [
                r[step].get("other_cores", 0.0) for r in results[f"{kind}_runs"].get(tool, []) if step in r
            ]
            cells.append(f"{max(vals):.2f}" if vals else "–")
        lines.append(f"| {tool} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines
