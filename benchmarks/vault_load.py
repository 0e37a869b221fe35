"""Load benchmark of one vault process: 1,000 simulated agents, and the scheduler with 10,000 items.

    .venv/bin/python benchmarks/vault_load.py                        # SQLite and PostgreSQL 15
    .venv/bin/python benchmarks/vault_load.py --backend sqlite --agents 200 --duration 30
    .venv/bin/python benchmarks/vault_load.py --profile              # py-spy of the server and tick

Per backend (data under /work/bench-data/vault-load/<backend>, removed afterwards):

1. ``kluis vault init`` + ``kluis vault serve`` on 127.0.0.1 (PostgreSQL: a throwaway cluster
   as user postgres on a private port, default durability). vault.toml is changed before the
   start: max_machines and the on-demand limit raised, heartbeat_interval set to the simulated
   one, scheduler spread 0 (see 4).
2. Setup through the API: vault credentials, ``--agents`` machines registered with them
   (``POST /machines/register``, timed), a daily policy, ``--items`` files items spread over the
   machines (``POST /items``, timed).
2b. Cost (``--cost N``): N heartbeats, then N empty polls (wait=0), four at a time; the vault
   process's CPU seconds per request, which the neighbours' load does not change.
3. Load: every simulated agent (its own httpx.AsyncClient, 2 connections) heartbeats every
   ``--heartbeat`` seconds and long-polls ``GET /work?wait=--poll-wait`` back to back, starting
   at a random moment in the first ``--ramp`` seconds. An operator task queues on-demand
   backups (``POST /items/{id}/backup``) at ``--trigger-rate`` per second for random waiting
   agents; the agent's poll returns with the job (measured: trigger sent -> poll returned),
   and the agent reports it Cancelled. After ``--duration`` s triggers and heartbeats stop,
   running polls finish, one last poll (wait=0) per agent collects anything left.
4. Scheduler, the server's own loop: the policy's daily time is set to the next whole minute
   (UTC); the database is watched until all items have a Scheduled backup job. Reported: policy
   time -> all jobs (includes up to one scheduler interval of waiting), and the tick itself
   (lease renewal that started it -> last job). spread is 0 here, or the jobs would be
   created over 30 minutes by design.
5. Scheduler, in process (server stopped): those jobs are marked Cancelled directly in the
   database (set-up, not measured), then ``Scheduler(ctx).tick(now)`` runs in a child process
   with the controllable clock one day later plus the default spread (1800 s), so every item is
   due in that one tick; the tick is timed (and profiled with ``--profile``).

Results: OUT/results.json (``--out``, default /work/bench-data/vault-load), a timeline per backend
beside it, and markdown tables on stdout. The scheduler phases are in vault_sched.py, the tables
in vault_report.py.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import ssl
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from vault_bench_support import (  # noqa: E402
    BENCH_DATA,
    CpuMonitor,
    PgCluster,
    VaultServer,
    cpu_seconds,
    latency_summary,
    log,
    machine,
    py_spy,
    summarize_profile,
)
from vault_report import render  # noqa: E402
from vault_sched import scheduler_loop_phase, scheduler_tick_phase, tick_child  # noqa: E402

API = "/api/v1"
OUT = BENCH_DATA / "vault-load"
POLICY = "bench-daily"
RETENTION = {"daily": 30}
# A shared TLS context: httpx would otherwise load the CA bundle once per client (1,000 times).
SSL_CTX = ssl.create_default_context()


@dataclass
class Agent:
    """One simulated machine."""

    machine_id: str
    token: str
    hostname: str
    items: list[str] = field(default_factory=list)
    polling: bool = False
    busy_items: set[str] = field(default_factory=set)


@dataclass
class LoadStats:
    """Everything the load phase measures (seconds; start times relative to the phase start)."""

    heartbeat: list[tuple[float, float]] = field(default_factory=list)
    poll_empty_overshoot: list[tuple[float, float]] = field(default_factory=list)
    poll_empty_wall: list[tuple[float, float]] = field(default_factory=list)
    delivery: list[tuple[float, float]] = field(default_factory=list)
    trigger_post: list[tuple[float, float]] = field(default_factory=list)
    result_post: list[tuple[float, float]] = field(default_factory=list)
    loop_lag: list[tuple[float, float]] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    pending: dict[str, float] = field(default_factory=dict)  # item id -> trigger sent
    triggers: int = 0
    delivered: int = 0
    late_jobs: int = 0

    def error(self, what: str, exc: BaseException | str) -> None:
        """Count a failure by kind (a few kinds are kept, not every message)."""
        key = f"{what}: {exc if isinstance(exc, str) else type(exc).__name__}"[:160]
        self.errors[key] = self.errors.get(key, 0) + 1


def _check(resp: httpx.Response, what: str) -> Any:
    if resp.status_code >= 400:
        raise RuntimeError(f"{what}: HTTP {resp.status_code} {resp.text[:500]}")
    return resp.json() if resp.content else None


# -- setup ----------------------------------------------------------------------------------------


async def _bounded(n: int, concurrency: int, fn: Any) -> tuple[list[Any], list[float]]:
    """Run ``fn(i)`` for i < n with at most ``concurrency`` at a time; results and latencies."""
    sem = asyncio.Semaphore(concurrency)
    lat: list[float] = [0.0] * n

    async def one(i: int) -> Any:
        async with sem:
            t0 = time.perf_counter()
            out = await fn(i)
            lat[i] = time.perf_counter() - t0
            return out

    return list(await asyncio.gather(*(one(i) for i in range(n)))), lat


async def setup(
    url: str, admin: str, n_agents: int, n_items: int, concurrency: int
) -> tuple[list[Agent], dict[str, Any]]:
    """Credentials, registrations, the policy and the items, all through the API."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    report: dict[str, Any] = {"concurrency": concurrency}
    async with httpx.AsyncClient(
        base_url=url + API,
        headers={"Authorization": f"Bearer {admin}"},
        limits=limits,
        timeout=120,
        verify=SSL_CTX,
    ) as client:
        creds = _check(await client.post("/credentials"), "credentials")
        plain = httpx.AsyncClient(base_url=url + API, limits=limits, timeout=120, verify=SSL_CTX)

        async def register(i: int) -> Agent:
            host = f"bench-{i:05d}"
            body = {
                "hostname": host,
                "os": "Debian 12",
                "agent_version": "0.1.0",
                "key_fingerprint": os.urandom(16).hex(),
                "key_proof": os.urandom(32).hex(),
                "key_set": {
                    "id": os.urandom(8).hex(),
                    "body": json.dumps({"kdf": "bench", "wrapped": "x" * 200}),
                },
                "credentials": creds["content"],
                "credentials_name": creds["file_name"],
            }
            for attempt in range(3):
                try:
                    # Registering again with the same fingerprint and proof is allowed: a retry
                    # after a dropped keep-alive connection is safe.
                    got = _check(await plain.post("/machines/register", json=body), f"register {host}")
                    break
                except (httpx.ReadError, httpx.RemoteProtocolError):
                    if attempt == 2:
                        raise
            return Agent(got["machine_id"], got["token"], host)

        t0 = time.perf_counter()
        agents, lat = await _bounded(n_agents, concurrency, register)
        await plain.aclose()
        report["register"] = {"seconds": round(time.perf_counter() - t0, 2), **latency_summary(lat)}
        log(f"registered {n_agents} machines in {report['register']['seconds']} s")

        policy = {
            "name": POLICY,
            "schedule": {"kind": "daily", "timezone": "UTC", "times": ["00:00"]},
            "retention": RETENTION,
        }
        _check(await client.post("/policies", json=policy), "policy")

        async def protect(i: int) -> None:
            agent = agents[i % n_agents]
            body = {
                "machine_id": agent.machine_id,
                "name": f"data-{i // n_agents}",
                "kind": "files",
                "paths": [f"/srv/data{i // n_agents}"],
                "policy": POLICY,
            }
            for attempt in range(3):
                try:
                    resp = await client.post("/items", json=body)
                    break
                except (httpx.ReadError, httpx.RemoteProtocolError):
                    # uvicorn closes keep-alive connections idle for 5 s; a request sent on one
                    # just then is lost. Try again; if the first one did arrive, look it up.
                    if attempt == 2:
                        raise
            if resp.status_code == 409 and resp.json().get("code") == "ResourceExists":
                listed = await client.get("/items", params={"machine_id": agent.machine_id})
                got = next(i for i in _check(listed, "list items") if i["name"] == body["name"])
            else:
                got = _check(resp, "enable protection")
            agent.items.append(got["id"])

        t0 = time.perf_counter()
        _, lat = await _bounded(n_items, concurrency, protect)
        report["items"] = {"seconds": round(time.perf_counter() - t0, 2), **latency_summary(lat)}
        log(f"protected {n_items} items in {report['items']['seconds']} s")
    return agents, report


# -- load -----------------------------------------------------------------------------------------


class LoadRun:
    """The load phase: agents heartbeating and polling, an operator queueing backups."""

    def __init__(self, url: str, admin: str, agents: list[Agent], args: argparse.Namespace) -> None:
        self.url = url + API
        self.admin = admin
        self.agents = agents
        self.args = args
        self.stats = LoadStats()
        self.t0 = 0.0
        self.stopping = asyncio.Event()
        self.stop_at = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.t0

    async def heartbeat_loop(self, agent: Agent, client: httpx.AsyncClient, start: float) -> None:
        body = {
            "hostname": agent.hostname,
            "agent_version": "0.1.0",
            "agent_status": "Ready",
            "extensions": [],
        }
        await asyncio.sleep(start + random.random() * self.args.heartbeat)
        while not self.stopping.is_set():
            t = self.now()
            try:
                resp = await client.post(f"/machines/{agent.machine_id}/heartbeat", json=body)
                if resp.status_code != 200:
                    self.stats.error("heartbeat", f"HTTP {resp.status_code}")
                else:
                    self.stats.heartbeat.append((t, self.now() - t))
            except httpx.HTTPError as exc:
                self.stats.error("heartbeat", exc)
            try:
                await asyncio.wait_for(self.stopping.wait(), self.args.heartbeat)
            except TimeoutError:
                pass

    async def handle_jobs(
        self, agent: Agent, client: httpx.AsyncClient, work: dict[str, Any], returned: float
    ) -> None:
        for job in work.get("jobs") or []:
            item_id = (job.get("item") or {}).get("id", "")
            sent = self.stats.pending.pop(item_id, None)
            if sent is not None:
                self.stats.delivery.append((sent, returned - sent))
                self.stats.delivered += 1
            else:
                self.stats.late_jobs += 1
            t = self.now()
            try:
                resp = await client.post(
                    f"/jobs/{job['id']}/result", json={"status": "Cancelled", "warnings": [], "stats": {}}
                )
                if resp.status_code != 200:
                    self.stats.error("result", f"HTTP {resp.status_code} {resp.text[:80]}")
                else:
                    self.stats.result_post.append((t, self.now() - t))
            except httpx.HTTPError as exc:
                self.stats.error("result", exc)
            agent.busy_items.discard(item_id)

    async def poll_loop(self, agent: Agent, client: httpx.AsyncClient, start: float) -> None:
        wait = self.args.poll_wait
        await asyncio.sleep(start)
        while not self.stopping.is_set():
            t = self.now()
            agent.polling = True
            try:
                resp = await client.get(f"/machines/{agent.machine_id}/work", params={"wait": wait})
            except httpx.HTTPError as exc:
                agent.polling = False
                self.stats.error("poll", exc)
                await asyncio.sleep(1)
                continue
            agent.polling = False
            returned = self.now()
            if resp.status_code != 200:
                self.stats.error("poll", f"HTTP {resp.status_code}")
                await asyncio.sleep(1)
                continue
            work = resp.json()
            if work.get("jobs") or work.get("cancel"):
                await self.handle_jobs(agent, client, work, returned)
            else:
                self.stats.poll_empty_wall.append((t, returned - t))
                self.stats.poll_empty_overshoot.append((t, returned - t - wait))
        # One last look, so jobs queued near the end are reported and leave nothing running.
        try:
            resp = await client.get(f"/machines/{agent.machine_id}/work", params={"wait": 0})
            if resp.status_code == 200:
                await self.handle_jobs(agent, client, resp.json(), self.now())
        except httpx.HTTPError as exc:
            self.stats.error("final poll", exc)

    async def agent_task(self, agent: Agent) -> None:
        limits = httpx.Limits(max_connections=2, max_keepalive_connections=2)
        timeout = httpx.Timeout(self.args.poll_wait + 60, connect=30)
        async with httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {agent.token}"},
            limits=limits,
            timeout=timeout,
            verify=SSL_CTX,
        ) as client:
            start = random.random() * self.args.ramp
            await asyncio.gather(
                self.heartbeat_loop(agent, client, start), self.poll_loop(agent, client, start)
            )

    async def trigger_loop(self) -> None:
        limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
        interval = 1.0 / self.args.trigger_rate if self.args.trigger_rate > 0 else 0.0
        if interval == 0:
            return
        async with httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.admin}"},
            limits=limits,
            timeout=60,
            verify=SSL_CTX,
        ) as client:
            await asyncio.sleep(self.args.ramp + self.args.poll_wait / 2)
            tasks: set[asyncio.Task[None]] = set()
            while not self.stopping.is_set():
                waiting = [a for a in random.sample(self.agents, min(50, len(self.agents))) if a.polling]
                for agent in waiting:
                    free = [i for i in agent.items if i not in agent.busy_items]
                    if free:
                        item = random.choice(free)
                        agent.busy_items.add(item)
                        task = asyncio.create_task(self.trigger(client, agent, item))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                        break
                try:
                    await asyncio.wait_for(self.stopping.wait(), interval)
                except TimeoutError:
                    pass
            if tasks:
                await asyncio.gather(*tasks)

    async def trigger(self, client: httpx.AsyncClient, agent: Agent, item: str) -> None:
        t = self.now()
        self.stats.pending[item] = t
        self.stats.triggers += 1
        try:
            resp = await client.post(f"/items/{item}/backup", json={})
        except httpx.HTTPError as exc:
            self.stats.pending.pop(item, None)
            agent.busy_items.discard(item)
            self.stats.error("trigger", exc)
            return
        if resp.status_code != 202:
            self.stats.pending.pop(item, None)
            agent.busy_items.discard(item)
            self.stats.error("trigger", f"HTTP {resp.status_code} {resp.json().get('code', '')}")
            return
        self.stats.trigger_post.append((t, self.now() - t))

    async def lag_probe(self) -> None:
        """How late this (load generator) event loop wakes up: client-side delay in every number."""
        while not self.stopping.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.1)
            self.stats.loop_lag.append((self.now(), time.perf_counter() - t - 0.1))

    async def run(self) -> LoadStats:
        self.t0 = time.perf_counter()
        tasks = [asyncio.create_task(self.agent_task(a)) for a in self.agents]
        extra = [asyncio.create_task(self.trigger_loop()), asyncio.create_task(self.lag_probe())]
        await asyncio.sleep(self.args.duration)
        log("load: stopping (triggers and heartbeats end, polls finish)")
        self.stopping.set()
        limit = self.args.poll_wait + 90
        done, pending = await asyncio.wait(tasks + extra, timeout=limit)
        for task in pending:
            task.cancel()
        if pending:
            self.stats.error("shutdown", f"{len(pending)} tasks still running after {limit} s, cancelled")
        for task in done:
            if task.exception() is not None:
                self.stats.error("task", task.exception())  # type: ignore[arg-type]
        return self.stats


async def cost_phase(url: str, agents: list[Agent], server_pid: int, count: int) -> dict[str, Any]:
    """The vault's CPU time per request, which the machine's other load does not change.

    ``count`` heartbeats, then ``count`` polls with wait=0 (nothing queued: the empty answer),
    four at a time from as many agents; the server process's user+system CPU seconds over
    each batch divided by its requests. Wall-clock latency on a shared 2-core machine says
    how busy the neighbours were; this says what a request costs.
    """
    out: dict[str, Any] = {"requests": count}
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    async with httpx.AsyncClient(base_url=url + API, limits=limits, timeout=120, verify=SSL_CTX) as client:

        async def heartbeat(i: int) -> None:
            agent = agents[i % len(agents)]
            body = {
                "hostname": agent.hostname,
                "agent_version": "0.1.0",
                "agent_status": "Ready",
                "extensions": [],
            }
            headers = {"Authorization": f"Bearer {agent.token}"}
            resp = await client.post(f"/machines/{agent.machine_id}/heartbeat", json=body, headers=headers)
            _check(resp, "heartbeat")

        async def poll(i: int) -> None:
            agent = agents[i % len(agents)]
            headers = {"Authorization": f"Bearer {agent.token}"}
            resp = await client.get(f"/machines/{agent.machine_id}/work", params={"wait": 0}, headers=headers)
            _check(resp, "poll")

        for name, fn in (("heartbeat", heartbeat), ("empty_poll", poll)):
            await _bounded(min(count, 50), 4, fn)  # warm up (connections, caches)
            cpu0, t0 = cpu_seconds(server_pid), time.perf_counter()
            _, lat = await _bounded(count, 4, fn)
            cpu, wall = cpu_seconds(server_pid) - cpu0, time.perf_counter() - t0
            out[name] = {
                "cpu_ms_per_request": round(1000 * cpu / count, 2),
                "wall_s": round(wall, 2),
                **latency_summary(lat),
            }
    return out


def load_report(stats: LoadStats, args: argparse.Namespace) -> dict[str, Any]:
    """Latency summaries of the steady part (samples started after the ramp)."""
    steady = args.ramp

    def part(rows: list[tuple[float, float]]) -> dict[str, Any]:
        return latency_summary([v for t, v in rows if t >= steady])

    return {
        "heartbeat": part(stats.heartbeat),
        "delivery": part(stats.delivery),
        "poll_empty_overshoot": part(stats.poll_empty_overshoot),
        "trigger_post": part(stats.trigger_post),
        "result_post": part(stats.result_post),
        "loadgen_loop_lag": part(stats.loop_lag),
        "triggers": stats.triggers,
        "delivered": stats.delivered,
        "undelivered": len(stats.pending),
        "late_jobs": stats.late_jobs,
        "errors": stats.errors,
    }


QUIET_CORES = 0.3
QUIET_BEFORE = 10.0


def quiet_report(stats: LoadStats, monitor: CpuMonitor, t0: float, ramp: float) -> dict[str, Any]:
    """The same summaries over requests that ran entirely while the rest of the machine was quiet.

    Other engineers' test runs share the 2 cores; a request counts here when every CPU sample
    from QUIET_BEFORE seconds before its start to just after its end saw fewer than QUIET_CORES
    cores used by processes other than the vault, the load generator and PostgreSQL.
    """
    busy = [(s["t"] - t0, s["other"]) for s in monitor.samples if s["t"] >= t0]

    def quiet(start: float, latency: float) -> bool:
        # From 10 s before (a backlog left by a busy spell still delays it) to just after its end.
        window = [o for t, o in busy if start - QUIET_BEFORE <= t <= start + latency + 2 * monitor.interval]
        return bool(window) and max(window) < QUIET_CORES

    out: dict[str, Any] = {}
    for name, rows in (("heartbeat", stats.heartbeat), ("delivery", stats.delivery)):
        out[name] = latency_summary([v for t, v in rows if t >= ramp and quiet(t, v)])
    seconds = [t for t, o in busy if t >= ramp and o < QUIET_CORES]
    out["quiet_seconds"] = len(seconds)
    return out


def save_timeline(stats: LoadStats, monitor: CpuMonitor, t0: float, path: Path) -> None:
    """Raw samples (start second, latency) and per-second CPU, to look for stalls over time."""
    series: dict[str, Any] = {
        name: [(round(t, 2), round(v, 4)) for t, v in getattr(stats, name)]
        for name in (
            "heartbeat",
            "delivery",
            "poll_empty_overshoot",
            "trigger_post",
            "result_post",
            "loop_lag",
        )
    }
    series["cpu"] = [
        {k: (round(v - t0, 1) if k == "t" else round(v, 2)) for k, v in s.items()}
        for s in monitor.samples
        if s["t"] >= t0
    ]
    path.write_text(json.dumps(series))


# -- one backend ----------------------------------------------------------------------------------


def run_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    """All phases on one database backend."""
    base = args.out / backend
    cluster: PgCluster | None = None
    server: VaultServer | None = None
    monitor: CpuMonitor | None = None
    rec: dict[str, Any] = {"backend": backend, "machine_at_start": machine()}
    try:
        db_url = None
        if backend == "postgres":
            cluster = PgCluster(base / "pg")
            cluster.start()
            db_url = cluster.create_database("kluis_bench")
        server = VaultServer(base / "vault", db_url=db_url)
        server.init(
            {
                "limits.max_machines": args.agents + 10,
                "limits.on_demand_daily_limit": 10_000,
                "agents.heartbeat_interval": int(args.heartbeat),
                "scheduler.spread": 0,
            }
        )
        server.start()
        roots = {"vault": server.pid, "loadgen": os.getpid()}
        if cluster is not None:
            roots["postgres"] = cluster.postmaster_pid()
        monitor = CpuMonitor(roots).start()
        t = time.monotonic()
        agents, rec["setup"] = asyncio.run(
            setup(server.url, server.token, args.agents, args.items, args.concurrency)
        )
        rec["setup"]["cpu"] = monitor.mean(since=t)
        if args.cost:
            rec["cost"] = asyncio.run(cost_phase(server.url, agents, server.pid, args.cost))
            log(f"cost: {json.dumps(rec['cost'])}")
        if not args.skip_load:
            spy = None
            if args.profile:
                spy = py_spy(
                    server.pid, args.duration, base.parent / f"{backend}-serve-load.raw", gil=args.gil
                )
            log(f"load: {len(agents)} agents for {args.duration} s")
            t = time.monotonic()
            # The generator's own full collections (1,000 clients: 100-140 ms each) delayed
            # the responses it timed and showed up as the vault's tail; for the length of
            # the load its garbage may pile up instead.
            gc.collect()
            gc.freeze()
            gc.disable()
            try:
                stats = asyncio.run(LoadRun(server.url, server.token, agents, args).run())
            finally:
                gc.enable()
                gc.unfreeze()
            rec["load"] = load_report(stats, args)
            rec["load"]["cpu"] = monitor.mean(since=t + args.ramp, until=t + args.duration)
            rec["load"]["quiet"] = quiet_report(stats, monitor, t, args.ramp)
            save_timeline(stats, monitor, t, args.out / f"timeline-{backend}.json")
            if spy is not None:
                spy.wait(timeout=args.duration + 60)
                rec["load"]["profile"] = summarize_profile(base.parent / f"{backend}-serve-load.raw")
            log(f"load: {json.dumps({k: rec['load'][k] for k in ('heartbeat', 'delivery')})}")
        if not args.skip_scheduler:
            t = time.monotonic()
            rec["scheduler_loop"] = scheduler_loop_phase(
                server, server.token, args.items, args.scheduler_timeout
            )
            rec["scheduler_loop"]["cpu"] = monitor.mean(since=t)
            log(f"scheduler (server loop): {rec['scheduler_loop']}")
            server.stop()
            profile = base.parent / f"{backend}-tick.raw" if args.profile else None
            t = time.monotonic()
            rec["scheduler_tick"] = scheduler_tick_phase(
                server, rec["scheduler_loop"]["policy_time"], args.items, profile
            )
            rec["scheduler_tick"]["cpu"] = monitor.mean(since=t)
            if profile is not None and profile.exists():
                rec["scheduler_tick"]["profile"] = summarize_profile(profile)
            log(f"scheduler (in process): {rec['scheduler_tick']}")
    except Exception:
        rec["failed"] = traceback.format_exc()
        log(f"{backend} failed:\n{rec['failed']}")
    finally:
        if monitor is not None:
            rec["cpu_whole_run"] = monitor.stop()
        if server is not None:
            server.stop()
        if cluster is not None:
            cluster.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(base, ignore_errors=True)
    return rec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd")
    tick = sub.add_parser("tick", help="(internal) one in-process scheduler tick")
    tick.add_argument("--data", type=Path, required=True)
    tick.add_argument("--at", required=True)
    tick.add_argument("--spread", type=int, default=1800)
    parser.add_argument("--backend", default="sqlite,postgres", help="sqlite, postgres or both (comma)")
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--duration", type=float, default=150.0, help="seconds of load, ramp included")
    parser.add_argument(
        "--ramp", type=float, default=None, help="agents start within this many s (default: poll wait)"
    )
    parser.add_argument(
        "--heartbeat", type=float, default=60.0, help="s between heartbeats (vault default 60)"
    )
    parser.add_argument(
        "--poll-wait", type=float, default=30.0, help="long-poll wait (the agent's default 30)"
    )
    parser.add_argument("--trigger-rate", type=float, default=5.0, help="on-demand backups queued per second")
    parser.add_argument("--concurrency", type=int, default=16, help="parallel requests while setting up")
    parser.add_argument("--scheduler-timeout", type=float, default=600.0)
    parser.add_argument(
        "--cost", type=int, default=2000, help="requests for the CPU-per-request phase (0: skip it)"
    )
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--skip-scheduler", action="store_true")
    parser.add_argument("--profile", action="store_true", help="py-spy the server under load and the tick")
    parser.add_argument("--gil", action="store_true", help="with --profile: only samples holding the GIL")
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    parser.add_argument(
        "--out",
        type=Path,
        default=OUT,
        help="working data, profiles and timelines (one run at a time per dir)",
    )
    parser.add_argument("--results", type=Path, default=None, help="default: OUT/results.json")
    args = parser.parse_args(argv)
    if args.ramp is None:
        args.ramp = args.poll_wait  # polls spread over their wait, as agents that started at random times
    if args.cmd == "tick":
        tick_child(args.data, args.at, args.spread)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    if args.results is None:
        args.results = args.out / "results.json"
    results: dict[str, Any] = {
        "args": vars(args) | {"results": str(args.results)},
        "machine": machine(),
        "backends": [],
    }
    for backend in [b.strip() for b in args.backend.split(",") if b.strip()]:
        if backend not in ("sqlite", "postgres"):
            parser.error(f"unknown backend {backend!r}")
        results["backends"].append(run_backend(backend, args))
        args.results.write_text(json.dumps(results, indent=1, default=str))
    print(render(results))
    return 0 if all("failed" not in r for r in results["backends"]) else 1


if __name__ == "__main__":
    sys.exit(main())
