"""Cold restores, alternating, from one local repository and one vault, with code variants.

    .venv/bin/python benchmarks/restore_ab.py 4 d:/tmp/base a:/tmp/base a:/tmp/variant

Each label is ``d:`` (``kluis repo restore`` on a local repository) or ``a:`` (a restore job
through ``kluis agent run`` and ``kluis vault serve`` on loopback), then a PYTHONPATH: a copy
of ``src/`` (``cp -r src /tmp/x && python -m compileall -q /tmp/x``) with the code to time.
Both repositories are backed up once from the engine benchmark's corpus; then every round
restores once per label, cold (synced, page cache dropped), starting at a different label
each round. The agent is restarted with the label's code when it changes; the vault keeps
running. Where agent_vs_direct.py times a fresh vault per run, this isolates one change to
the restore, and many restores fit in the time of a few of its runs.

Results: /work/bench-data/restore-ab/results-<time>.json and medians on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import agent_vs_direct as avd  # noqa: E402
from bench_corpus import scan, warm_up  # noqa: E402
from vault_bench_support import BENCH_DATA  # noqa: E402

OUT = BENCH_DATA / "restore-ab"


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print each label's median."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rounds", type=int)
    p.add_argument("labels", nargs="+", help="d:PYTHONPATH or a:PYTHONPATH")
    p.add_argument("--corpus", type=Path, default=BENCH_DATA / "corpus")
    args = p.parse_args(argv)
    labels: list[str] = args.labels
    directs = [label[2:] for label in labels if label.startswith("d:")]
    agents = [label[2:] for label in labels if label.startswith("a:")]
    if not directs or not agents or len(directs) + len(agents) != len(labels):
        p.error("give at least one d: and one a: label, and nothing else")
    avd.QUIET["max_wait"] = 10
    OUT.mkdir(parents=True, exist_ok=True)
    scan(args.corpus)
    passfile = OUT / "passphrase"
    passfile.write_text(avd.PASSPHRASE + "\n")
    passfile.chmod(0o600)
    target = OUT / "restore"

    os.environ["PYTHONPATH"] = directs[0]
    direct = avd.Direct(OUT / "direct", passfile)
    warm_up([args.corpus])
    backup = direct.backup(args.corpus)
    avd.log(f"direct backup {backup['seconds']} s")
    os.environ["PYTHONPATH"] = agents[0]
    via = avd.ViaVault(OUT / "vault", passfile, args.corpus)
    via.start()
    running = agents[0]
    seconds: dict[str, list[float]] = {label: [] for label in labels}
    try:
        job = via.backup(None)
        avd.log(f"vault backup {job['seconds']} s")
        point = via.point_of(job["job_id"])
        for r in range(args.rounds):
            order = labels[r % len(labels) :] + labels[: r % len(labels)]
            for label in order:
                kind, path = label[0], label[2:]
                if kind == "d":
                    os.environ["PYTHONPATH"] = path
                    m = direct.restore(backup["point_id"], target)
                else:
                    if path != running:
                        _restart_agent(via, path)
                        running = path
                    m = via.restore(point, target, None)
                seconds[label].append(m["seconds"])
                avd.log(f"round {r} {label}: {m['seconds']} s cpu {m['cpu']}")
            avd._rm(target)
    finally:
        via.stop()
    for label, values in seconds.items():
        print(f"{label}: median {statistics.median(values)} s {values}")
    out = OUT / f"results-{int(time.time())}.json"
    out.write_text(json.dumps({"labels": labels, "seconds": seconds}, indent=1) + "\n")
    print(f"results: {out}")
    return 0


def _restart_agent(via: avd.ViaVault, pythonpath: str) -> None:
    """The same registered agent, started again with other code."""
    via.stop_agent()
    via.start_agent({**os.environ, "PYTHONPATH": pythonpath})
    time.sleep(3)  # its first long poll: the job must not wait for the next one


if __name__ == "__main__":
    raise SystemExit(main())
