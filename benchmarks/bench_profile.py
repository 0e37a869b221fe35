"""Profiling Kluis's first backup, no-change re-backup and restore with py-spy; where the time goes.

Each phase is recorded three times on a fresh repository: with every non-idle
sample (what all threads spend their time on), with ``--gil`` (only samples
where a thread holds the GIL: their count over wall time tells how close the
Python side is to one saturated interpreter) and with ``--idle`` (blocked
threads too, by source line: where threads wait).
"""

from __future__ import annotations

import json
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_corpus import CorpusInfo, warm_up
from bench_measure import measure, run, sync
from bench_tools import KLUIS, Kluis

PY_SPY = KLUIS.parent / "py-spy"
RATE = 100
TOP = 15


def _frame_name(frame: dict[str, Any]) -> str:
    path = str(frame.get("file", ""))
    at = path.rfind("/kluis/")
    if at >= 0:  # the frozen copy's folder says nothing: keep kluis/...
        path = path[at + 1 :]
    for cut in ("site-packages/", "/src/", "lib/python3.11/"):
        if cut in path:
            path = path.split(cut, 1)[1]
            break
    return f"{frame.get('name', '?')} ({path})" if path else str(frame.get("name", "?"))


def summarise(speedscope: Path, seconds: float, *, by_line: bool = False) -> dict[str, Any]:
    """Self and inclusive time per function, and per-thread activity, from a py-spy speedscope file.

    With ``by_line``, self time is per source line (tells a blocking fsync from a write).
    """
    doc = json.loads(speedscope.read_text())
    names = [_frame_name(f) for f in doc["shared"]["frames"]]
    leaf_names = [
        f"{_frame_name(f)[:-1]}:{f.get('line')})" if by_line and _frame_name(f).endswith(")") else n
        for f, n in zip(doc["shared"]["frames"], names, strict=True)
    ]
    # py-spy's speedscope weights are seconds of samples (1 / rate each).
    self_c: dict[str, float] = defaultdict(float)
    incl_c: dict[str, float] = defaultdict(float)
    threads: list[dict[str, Any]] = []
    total = 0.0
    for prof in doc["profiles"]:
        n = 0.0
        for stack, weight in zip(prof["samples"], prof["weights"], strict=True):
            w = float(weight)
            n += w
            if not stack:
                continue
            # speedscope "sampled" stacks run from the root to the leaf.
            self_c[leaf_names[stack[-1]]] += w
            for name in {names[i] for i in stack}:
                incl_c[name] += w
        total += n
        threads.append({"name": prof.get("name", "?"), "seconds": n, "share": n / seconds})
    threads.sort(key=lambda t: -t["seconds"])

    def top(c: dict[str, float], keep: Callable[[str], bool] = lambda _n: True) -> list[dict[str, Any]]:
        best = sorted(((v, k) for k, v in c.items() if keep(k)), reverse=True)[:TOP]
        return [{"name": k, "share": v / total if total else 0.0} for v, k in best]

    return {
        "sampled_seconds": total,
        "threads": threads,
        "top_self": top(self_c),
        # Inclusive time only for Kluis's own functions: thread and CLI plumbing would fill the list.
        "top_inclusive": top(incl_c, lambda n: "(kluis/" in n),
    }


MODES = {
    "active": ([], "all non-idle samples"),
    "gil": (["--gil"], "only samples where the thread holds the GIL"),
    "idle": (["--idle"], "every sample, idle (blocked) threads included"),
}


def _record(out: Path, argv: list[str], env: dict[str, str], mode: str) -> tuple[float, dict[str, Any]]:
    spy = [str(PY_SPY), "record", "--rate", str(RATE), "--format", "speedscope", "-o", str(out)]
    m = measure([*spy, *MODES[mode][0], "--", *argv], env=env)
    text = m.stdout
    start = text.find("{\n")
    report: dict[str, Any] = json.JSONDecoder().raw_decode(text[start:])[0] if start >= 0 else {}
    return m.seconds, report


def profile_kluis(corpus: CorpusInfo, data: Path, passphrase: str) -> dict[str, Any]:
    """Record each phase three times (active samples, GIL-only, idle included) and summarise them."""
    phases: dict[str, dict[str, Any]] = {}
    files: list[str] = []
    for mode in MODES:
        tool = Kluis(data / "repos" / "profile", passphrase)
        try:
            tool.reset()
            tool.init()
            env = tool.env()
            assert tool.scratch is not None
            backup = [str(KLUIS), "repo", "backup", str(corpus.root), *tool._common()]
            backup += ["--scratch", str(tool.scratch), "--json"]
            target = tool.run_dir / "restore"
            restore = [str(KLUIS), "repo", "restore", "latest", *tool._common(), "--target", str(target)]
            steps = (
                ("first", "First backup", backup),
                ("nochange", "No-change re-backup", backup),
                ("restore", "Full restore", [*restore, "--json"]),
            )
            for key, title, argv in steps:
                warm_up([corpus.root])
                sync()
                out = data / f"profile-{key}-{mode}.speedscope.json"
                seconds, report = _record(out, argv, env, mode)
                if key == "restore":
                    shutil.rmtree(target)
                files.append(str(out))
                summary = summarise(out, seconds, by_line=mode == "idle")
                phase = phases.setdefault(key, {"title": title})
                if mode == "gil":
                    phase["gil_share"] = summary["sampled_seconds"] / seconds
                    phase["top_gil"] = summary["top_self"]
                    phase["gil_seconds"] = seconds
                elif mode == "idle":
                    phase["idle_seconds"] = seconds
                    phase["top_wall_lines"] = summary["top_self"]
                    phase["threads_wall"] = summary["threads"]
                else:
                    phase.update(summary)
                    phase["seconds"] = seconds
                    phase["kluis_report"] = report
                print(f"profile: {title} ({MODES[mode][1]}): {seconds:.1f} s", flush=True)
        finally:
            tool.remove()
    version: Callable[[], str] = Kluis.version
    return {
        "recorded": time.strftime("%Y-%m-%d %H:%M"),
        "rate": RATE,
        "py_spy": run([str(PY_SPY), "--version"]).strip(),
        "kluis": version(),
        "corpus": str(corpus.root),
        "files": files,
        "phases": [phases["first"], phases["nochange"], phases["restore"]],
    }
