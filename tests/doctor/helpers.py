"""Running ``kluis doctor`` against real agents and vaults, and the conditions it must find.

Nothing stands in for Kluis code: the doctor runs as ``python -m kluis doctor`` in a
subprocess, the agents are registered with ``kluis agent register`` and run as
``kluis agent run`` daemons, the vault is ``kluis vault serve``. The clock-skew test
puts a small reverse proxy of its own between agent and vault that moves the vault's
``Date`` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import os
import signal
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from kluis.doctor.service import lock_holder
from tests.agent.helpers import AgentProc, Result, kluis, wait_for


@dataclass
class Report:
    """A finished ``kluis doctor --json`` run."""

    rc: int
    data: dict[str, Any]
    stderr: str

    def check(self, check_id: str) -> dict[str, Any]:
        """One check's entry."""
        for c in self.data["checks"]:
            if c["id"] == check_id:
                return dict(c)
        raise KeyError(check_id)

    def verdict(self, check_id: str) -> str:
        """One check's verdict."""
        return str(self.check(check_id)["verdict"])

    def code(self, check_id: str) -> str | None:
        """The catalog code of one check's finding."""
        error = self.check(check_id)["error"]
        return str(error["code"]) if error else None

    def verdicts(self) -> dict[str, str]:
        """Check id -> verdict."""
        return {c["id"]: c["verdict"] for c in self.data["checks"]}

    def not_passing(self) -> dict[str, str]:
        """Checks that did not pass, with their summaries (for assertion messages)."""
        return {
            c["id"]: f"{c['verdict']}: {c['summary']}" for c in self.data["checks"] if c["verdict"] != "pass"
        }


def doctor_env(agent: AgentProc) -> dict[str, str]:
    """The agent's environment, with its host name for the doctor (and any daemon it starts)."""
    env = agent.env()
    env["KLUIS_AGENT_HOSTNAME"] = agent.hostname
    return env


def run_doctor(agent: AgentProc, *args: str, timeout: float = 120) -> Report:
    """``kluis doctor --json --config-dir ...`` for an agent."""
    result = kluis(
        "doctor",
        "--json",
        "--config-dir",
        str(agent.config_dir),
        *args,
        env=doctor_env(agent),
        timeout=timeout,
    )
    return _report(result)


def run_vault_doctor(data: Path, *args: str, env: dict[str, str] | None = None) -> Report:
    """``kluis doctor --vault --json --data DATA``."""
    return _report(kluis("doctor", "--vault", "--json", "--data", str(data), *args, env=env, timeout=60))


def _report(result: Result) -> Report:
    try:
        data = json.loads(result.stdout)
    except ValueError:
        raise AssertionError(
            f"doctor printed no JSON (rc {result.rc}):\n{result.stdout}\n{result.stderr}"
        ) from None
    return Report(result.rc, data, result.stderr)


def edit_config(proc: AgentProc, /, **sections: dict[str, Any] | None) -> dict[str, Any]:
    """Set (or with None remove) whole sections of agent.toml; returns the document before."""
    before = tomllib.loads(proc.config_file.read_text())
    doc = tomllib.loads(proc.config_file.read_text())
    for name, value in sections.items():
        if value is None:
            doc.pop(name, None)
        else:
            doc[name] = value
    proc.config_file.write_text(tomli_w.dumps(doc))
    return before


def restore_config(agent: AgentProc, doc: dict[str, Any]) -> None:
    """Write agent.toml back as it was."""
    agent.config_file.write_text(tomli_w.dumps(doc))
    agent.config_file.chmod(0o600)


def daemon_of(agent: AgentProc) -> int | None:
    """The pid of whatever daemon holds the agent's lock (also one ``doctor --fix`` started)."""
    return lock_holder(agent.scratch / "agent.lock")


def stop_daemon(agent: AgentProc) -> None:
    """Stop the agent's daemon, whether the test or ``doctor --fix`` started it."""
    agent.stop()
    pid = daemon_of(agent)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: daemon_of(agent) is None, timeout=40, what=f"agent pid {pid} to stop")


def wait_heartbeat(agent: AgentProc, after: float) -> None:
    """Until the daemon has sent a heartbeat after ``after`` (time.time())."""
    wait_for(
        lambda: float(agent.state().get("last_heartbeat_at") or 0) > after,
        timeout=20,
        what="a fresh heartbeat",
    )


class DateShiftProxy:
    """A reverse proxy on 127.0.0.1 in front of the vault that moves its ``Date`` header by ``shift`` s.

    One request per connection (it asks the vault to close, and says so to the client),
    which is all the agent's probe and client need.
    """

    def __init__(self, upstream_port: int, shift: float) -> None:
        self.upstream_port = upstream_port
        self.shift = shift
        self.port = 0
        self.rewritten = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DateShiftProxy:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        """Where the agent should find "the vault"."""
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = [h for h in head[1:] if h and not h.lower().startswith("connection:")]
            length = next(
                (int(h.split(":", 1)[1]) for h in headers if h.lower().startswith("content-length:")), 0
            )
            body = await reader.readexactly(length) if length else b""
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            up_writer.write(
                ("\r\n".join([head[0], *headers, "Connection: close"]) + "\r\n\r\n").encode("latin-1")
            )
            up_writer.write(body)
            await up_writer.drain()
            answer = await up_reader.read()
            up_writer.close()
            resp_head, _, resp_body = answer.partition(b"\r\n\r\n")
            lines = resp_head.decode("latin-1").split("\r\n")
            out = [lines[0]]
            for line in lines[1:]:
                name = line.split(":", 1)[0].lower()
                if name == "date":
                    moved = email.utils.parsedate_to_datetime(line.split(":", 1)[1].strip()).timestamp()
                    line = "date: " + email.utils.formatdate(moved + self.shift, usegmt=True)
                    self.rewritten += 1
                elif name == "connection":
                    continue
                out.append(line)
            out.append("connection: close")
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + resp_body)
            await writer.drain()
        writer.close()
