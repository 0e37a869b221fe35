"""vault_load.py's markdown tables."""

from __future__ import annotations

from typing import Any

# -- report ---------------------------------------------------------------------------------------


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def render(results: dict[str, Any]) -> str:
    """Markdown tables of the results."""
    lines = [
        _row("backend", "what", "count", "p50 ms", "p90 ms", "p99 ms", "max ms"),
        _row(*["---"] * 7),
    ]
    names = {
        "heartbeat": "heartbeat",
        "delivery": "long-poll return with a job (trigger sent -> poll returned)",
        "poll_empty_overshoot": "empty long-poll, time past its wait",
        "trigger_post": "on-demand backup POST",
        "result_post": "job result POST",
        "loadgen_loop_lag": "load generator event-loop lag",
    }
    for rec in results["backends"]:
        load = rec.get("load") or {}
        for key, label in names.items():
            s = load.get(key)
            if s:
                lines.append(
                    _row(
                        rec["backend"], label, s["count"], s["p50_ms"], s["p90_ms"], s["p99_ms"], s["max_ms"]
                    )
                )
    lines += [
        "",
        "Requests during which (and 10 s before) the rest of the machine kept < 0.3 cores busy:",
        "",
    ]
    lines += [
        _row("backend", "what", "count", "p50 ms", "p90 ms", "p99 ms", "max ms", "quiet s"),
        _row(*["---"] * 8),
    ]
    for rec in results["backends"]:
        quiet = (rec.get("load") or {}).get("quiet") or {}
        for key in ("heartbeat", "delivery"):
            s = quiet.get(key)
            if s:
                cells = (
                    s["count"],
                    s["p50_ms"],
                    s["p90_ms"],
                    s["p99_ms"],
                    s["max_ms"],
                    quiet["quiet_seconds"],
                )
                lines.append(_row(rec["backend"], names[key], *cells))
    lines += ["", _row("backend", "request", "vault CPU ms each", "p50 ms", "p99 ms"), _row(*["---"] * 5)]
    for rec in results["backends"]:
        cost = rec.get("cost") or {}
        for key in ("heartbeat", "empty_poll"):
            c = cost.get(key)
            if c:
                lines.append(_row(rec["backend"], key, c["cpu_ms_per_request"], c["p50_ms"], c["p99_ms"]))
    lines += ["", _row("backend", "step", "seconds", "notes"), _row(*["---"] * 4)]
    for rec in results["backends"]:
        name = rec["backend"]
        setup_rec = rec.get("setup") or {}
        for key in ("register", "items"):
            s = setup_rec.get(key)
            if s:
                each = f"p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms each"
                lines.append(_row(name, f"{key} ({s['count']})", s["seconds"], each))
        loop = rec.get("scheduler_loop") or {}
        if loop:
            what = f"scheduler, server loop: policy time -> all {loop.get('jobs')} jobs"
            notes = (
                f"tick start -> all jobs {loop.get('tick_start_to_all_jobs_s')} s, "
                f"interval {loop.get('interval_s')} s"
            )
            lines.append(_row(name, what, loop.get("policy_time_to_all_jobs_s"), notes))
        tick = rec.get("scheduler_tick") or {}
        if tick:
            what = f"scheduler, in-process tick ({tick.get('created')} created)"
            notes = f"due_items alone {tick.get('due_items_seconds')} s, spread 1800 s"
            lines.append(_row(name, what, tick.get("seconds"), notes))
    return "\n".join(lines)
