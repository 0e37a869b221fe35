"""Running one command and measuring it: wall time, CPU time and peak RSS of that command alone.

``os.wait4`` returns the rusage of exactly the process we started (plus the
children it waited for), so CPU time belongs to one command, unlike
``getrusage(RUSAGE_CHILDREN)`` which sums every child ever. Peak RSS comes from
GNU time(1), see :func:`measure`.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
# Other engineers share this machine. Before each measured command, wait (up to max_wait seconds)
# until the rest of the machine uses less than `threshold` cores; run.py sets this.
QUIET_GATE = {"threshold": 0.3, "max_wait": 0.0}
# Measured commands run with this nice value (negative: ahead of the other engineers' tests),
# so a busy neighbour takes as little CPU from the tool as the scheduler allows. 0: unchanged.
PRIORITY = {"nice": 0}


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, steal) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq, steal


def _set_autogroup_nice(pid: int, nice: int) -> None:
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))
    except OSError:
        pass  # no autogroups (kernel option off): plain nice still applies


def busy_cores(interval: float = 1.0) -> float:
    """Cores the whole machine keeps busy over ``interval`` seconds."""
    b0, _ = _cpu_jiffies()
    time.sleep(interval)
    b1, _ = _cpu_jiffies()
    return (b1 - b0) / CLK_TCK / interval


def wait_quiet() -> float:
    """Wait until the machine is nearly idle (or the gate's time is up); returns seconds waited."""
    start = time.monotonic()
    limit = QUIET_GATE["max_wait"]
    while limit > 0 and time.monotonic() - start < limit:
        if busy_cores() < QUIET_GATE["threshold"]:
            break
        time.sleep(4)
    return time.monotonic() - start


TIME = "/usr/bin/time"


class CommandFailed(RuntimeError):
    """A benchmarked command exited non-zero."""


@dataclass
class Measurement:
    """One command's cost."""

    argv: list[str]
    seconds: float
    cpu_seconds: float
    max_rss_kib: int
    returncode: int
    stdout: str
    stderr: str
    other_cores: float = 0.0  # CPU used by everything else on the machine during the command
    steal_cores: float = 0.0  # CPU the hypervisor took from this VM during the command
    waited_for_quiet: float = 0.0

    @property
    def cores(self) -> float:
        """Average number of cores busy (CPU time over wall time)."""
        return self.cpu_seconds / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, float | int]:
        """The numbers, for results.json."""
        return {
            "seconds": round(self.seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "cores": round(self.cores, 2),
            "max_rss_mib": round(self.max_rss_kib / 1024, 1),
            "other_cores": round(self.other_cores, 2),
            "steal_cores": round(self.steal_cores, 2),
            "waited_for_quiet": round(self.waited_for_quiet, 1),
        }


def measure(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 4 * 3600,
    check: bool = True,
    gate: bool = True,
) -> Measurement:
    """Run ``argv`` to completion and return its wall time, CPU time and peak RSS.

    With ``gate``, first wait for the machine to go quiet (see QUIET_GATE).
    """
    waited = wait_quiet() if gate else 0.0
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        busy0, steal0 = _cpu_jiffies()
        start = time.monotonic()
        # Peak RSS comes from GNU time, not from our own wait4: Linux keeps a process's RSS
        # high-water mark across fork and exec, so a tool started straight from this (large)
        # Python process would report at least our own RSS. time is small, and it forks the tool.
        # `nice` execs the tool in place, so time waits for the tool itself.
        prefix = ["nice", "-n", str(PRIORITY["nice"])] if PRIORITY["nice"] and os.geteuid() == 0 else []
        rss_fd, rss_name = tempfile.mkstemp(prefix="bench-rss-")
        os.close(rss_fd)
        timed = [TIME, "-q", "-f", "%M", "-o", rss_name, *prefix, *argv]
        # Linux schedules sessions as "autogroups" and nice only ranks processes within one, so
        # the command gets a session of its own whose autogroup gets the nice value too.
        nice = PRIORITY["nice"] if os.geteuid() == 0 else 0
        proc = subprocess.Popen(
            timed,
            stdout=out,
            stderr=err,
            env=dict(env) if env else None,
            cwd=cwd,
            start_new_session=bool(nice),
        )
        if nice:
            _set_autogroup_nice(proc.pid, nice)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            # Interrupted (SIGTERM, Ctrl-C): the command runs in a session of its own, so nobody
            # else would stop it; time(1) and the tool share that session's process group.
            if nice:
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.terminate()
            proc.wait()
            raise
        finally:
            timer.cancel()
        seconds = time.monotonic() - start
        busy1, steal1 = _cpu_jiffies()
        # wait4 reaped the child: tell Popen so it does not wait again.
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        try:
            max_rss = int(Path(rss_name).read_text().split()[-1])
        except (OSError, ValueError, IndexError):
            max_rss = -1
        finally:
            os.unlink(rss_name)
        m = Measurement(
            argv=list(argv),
            seconds=seconds,
            # CPU time of time(1) includes the tool it waited for; time itself costs next to nothing.
            cpu_seconds=usage.ru_utime + usage.ru_stime,
            max_rss_kib=max_rss,
            returncode=proc.returncode,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            waited_for_quiet=waited,
        )
        if seconds > 0:
            cpu = usage.ru_utime + usage.ru_stime
            m.other_cores = max(0.0, ((busy1 - busy0) / CLK_TCK - cpu) / seconds)
            m.steal_cores = (steal1 - steal0) / CLK_TCK / seconds
    if check and m.returncode != 0:
        raise CommandFailed(
            f"{shlex.join(m.argv)} exited {m.returncode}\n--- stderr (tail) ---\n{m.stderr[-3000:]}"
            f"\n--- stdout (tail) ---\n{m.stdout[-2000:]}"
        )
    return m


def run(argv: Sequence[str], *, check: bool = True, **kwargs: object) -> str:
    """Run a helper command (not measured) and return its stdout."""
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if check and done.returncode != 0:
        raise CommandFailed(f"{shlex.join(argv)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return str(done.stdout)


def sync() -> float:
    """Flush dirty pages so one step's write-back does not land in the next step's time."""
    start = time.monotonic()
    os.sync()
    return time.monotonic() - start


def drop_page_cache() -> bool:
    """Forget clean cached pages (root only); whether it worked.

    Restore times swung from 22 to 57 s for the same work depending on what earlier steps
    left in the cache; every tool's restore starts from the same empty cache instead.
    """
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError:
        return False
    return True


def disk_usage(path: Path) -> int:
    """Bytes allocated on disk under ``path`` (``du -sB1``); 0 when it does not exist."""
    if not path.exists():
        return 0
    return int(run(["du", "-sB1", str(path)]).split()[0])
