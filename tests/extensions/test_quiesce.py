"""Quiesce: the configuration file's rules, each script failure's code, freeze and thaw."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kluis.agent.extensions.snapshot import Consistency, QuiesceConfig, quiesced
from kluis.agent.extensions.snapshot.quiesce import ScriptSpec, run_script
from kluis.catalog import KluisError
from tests.extensions.conftest import Guest
from tests.extensions.helpers import Mounts, root_script, write_finishes


def _config_file(tmp_path: Path, text: str, mode: int = 0o600, uid: int = 0) -> Path:
    path = tmp_path / "quiesce.toml"
    path.write_text(text)
    os.chown(path, uid, 0)
    path.chmod(mode)
    return path


def test_config_file_must_be_root_0600(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to own files as root and as another user")
    good = _config_file(tmp_path, 'safe_freeze_wait_seconds = 5\nskip_mounts = ["/boot"]\n')
    cfg = QuiesceConfig.load(good)
    assert cfg.safe_freeze_wait_seconds == 5 and cfg.skip_mounts == ("/boot",) and cfg.freeze

    for mode, uid in ((0o644, 0), (0o600, 65534)):
        bad = _config_file(tmp_path, "freeze = true\n", mode=mode, uid=uid)
        with pytest.raises(KluisError) as exc:
            QuiesceConfig.load(bad)
        assert exc.value.code == "QuiesceConfigUnsafe"
        assert f"{mode:04o}" in exc.value.message

    for text in ("freeze = 'yes'\n", "safe_freeze_wait_seconds = 0\n", "colour = 1\n", "[pre]\nscript='x'\n"):
        with pytest.raises(KluisError) as exc:
            QuiesceConfig.load(_config_file(tmp_path, text))
        assert exc.value.code == "QuiesceConfigInvalid", text


def test_each_script_failure_has_its_own_code(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to own scripts as root")
    ok = root_script(tmp_path / "ok.sh", "exit 0")
    missing = tmp_path / "missing.sh"
    group_writable = root_script(tmp_path / "gw.sh", "exit 0", mode=0o770)
    not_root = root_script(tmp_path / "user.sh", "exit 0")
    os.chown(not_root, 65534, 0)
    failing = root_script(tmp_path / "fail.sh", "echo 'database not running' >&2\nexit 3")
    slow = root_script(tmp_path / "slow.sh", "sleep 30")

    run_script("pre", ScriptSpec(ok))
    cases = [
        (missing, "QuiesceScriptMissing"),
        (group_writable, "QuiesceScriptUnsafe"),
        (not_root, "QuiesceScriptUnsafe"),
        (failing, "QuiesceScriptFailed"),
        (slow, "QuiesceScriptTimeout"),
    ]
    for script, code in cases:
        with pytest.raises(KluisError) as exc:
            run_script("pre", ScriptSpec(script, timeout=0.5))
        assert exc.value.code == code, script
    with pytest.raises(KluisError) as exc:
        run_script("post", ScriptSpec(failing))
    assert exc.value.params["exit_code"] == 3 and "database not running" in exc.value.message


def test_consistency_levels_and_continue_on_failure(guest: Guest, tmp_path: Path) -> None:
    log = tmp_path / "log"
    pre = root_script(tmp_path / "pre.sh", f"echo pre >> {log}")
    post = root_script(tmp_path / "post.sh", f'echo "post $KLUIS_ITEM" >> {log}')
    failing = root_script(tmp_path / "fail.sh", "exit 1")
    mp = str(guest.mountpoint)

    with quiesced(QuiesceConfig(ScriptSpec(pre), ScriptSpec(post)), [mp], item="vm1") as out:
        assert out.frozen_mounts == [os.path.realpath(mp)]
        assert write_finishes(guest.mountpoint / "blocked", within=0.3) is None  # really frozen
    assert out.consistency is Consistency.APPLICATION
    assert log.read_text().split("\n")[:2] == ["pre", "post vm1"]
    assert write_finishes(guest.mountpoint / "after", within=5) is not None

    with quiesced(QuiesceConfig(), [mp]) as out:
        pass
    assert out.consistency is Consistency.FILE_SYSTEM

    with quiesced(QuiesceConfig(freeze=False), [mp]) as out:
        assert out.frozen_mounts == []
    assert out.consistency is Consistency.CRASH

    with quiesced(QuiesceConfig(skip_mounts=(mp,)), [mp]) as out:
        assert out.frozen_mounts == []
    assert out.consistency is Consistency.CRASH

    # A failing pre-script fails the quiesce, before anything is frozen ...
    with pytest.raises(KluisError) as exc, quiesced(QuiesceConfig(ScriptSpec(failing)), [mp]):
        raise AssertionError("the body must not run")
    assert exc.value.code == "QuiesceScriptFailed"
    # ... unless continue_on_failure: then the point is file-system-consistent, with a warning.
    cfg = QuiesceConfig(ScriptSpec(failing), ScriptSpec(post), continue_on_failure=True)
    with quiesced(cfg, [mp]) as out:
        pass
    assert out.consistency is Consistency.FILE_SYSTEM
    assert [w.code for w in out.warnings] == ["QuiesceScriptFailed"]


def test_post_script_runs_when_the_snapshot_fails(guest: Guest, tmp_path: Path) -> None:
    log = tmp_path / "log"
    pre = root_script(tmp_path / "pre.sh", f"echo pre >> {log}")
    post = root_script(tmp_path / "post.sh", f"echo post >> {log}")
    cfg = QuiesceConfig(ScriptSpec(pre), ScriptSpec(post))
    with pytest.raises(RuntimeError), quiesced(cfg, [str(guest.mountpoint)]):
        raise RuntimeError("snapshot tool crashed")
    assert log.read_text().split() == ["pre", "post"]
    assert write_finishes(guest.mountpoint / "after", within=5) is not None


def test_freeze_failure_is_coded_with_the_fsck_fix(guest: Guest, mounts: Mounts, tmp_path: Path) -> None:
    # A file system without freeze support: tmpfs.
    tmp = mounts.mount("tmpfs", tmp_path / "tmpfs", "size=4m", fstype="tmpfs")
    with pytest.raises(KluisError) as exc, quiesced(QuiesceConfig(), [str(guest.mountpoint), str(tmp)]):
        raise AssertionError("the body must not run")
    err = exc.value
    assert err.code == "UserErrorFsFreezeFailed"
    assert err.params["mountpoint"] == str(tmp)
    assert any("fsck" in a for a in err.actions) and any("tune2fs" in a for a in err.actions)
    # The mount frozen before the failing one was thawed at once.
    assert write_finishes(guest.mountpoint / "after", within=5) is not None

    # A file system someone else froze: ours is refused and theirs is left alone.
    subprocess.run(["fsfreeze", "-f", str(guest.mountpoint)], check=True)
    try:
        with pytest.raises(KluisError) as exc, quiesced(QuiesceConfig(), [str(guest.mountpoint)]):
            raise AssertionError("the body must not run")
        assert exc.value.code == "UserErrorFsFreezeFailed"
        assert "already frozen" in exc.value.message
    finally:
        subprocess.run(["fsfreeze", "-u", str(guest.mountpoint)], check=False)


def test_a_snapshot_slower_than_the_freeze_window_is_crash_consistent(guest: Guest, tmp_path: Path) -> None:
    import time

    status = tmp_path / "watchdog.json"
    cfg = QuiesceConfig(safe_freeze_wait_seconds=0.5)
    with quiesced(cfg, [str(guest.mountpoint)], item="vm1", watchdog_status=str(status)) as out:
        time.sleep(1.0)  # the snapshot tool is slow; the watchdog thaws at 0.5 s
        assert write_finishes(guest.mountpoint / "thawed-early", within=2) is not None
    assert out.window_exceeded and out.consistency is Consistency.CRASH
    assert [w.code for w in out.warnings] == ["FreezeWindowExceeded"]
    assert out.watchdog_status is not None and out.watchdog_status["reason"] == "deadline"


def test_no_freeze_without_a_watchdog(guest: Guest, monkeypatch: pytest.MonkeyPatch) -> None:
    from kluis.agent.extensions.snapshot import freeze

    # A damaged installation: the watchdog's file is gone.
    monkeypatch.setattr(freeze, "WATCHDOG_SCRIPT", "/nonexistent/kluis/watchdog.py")
    with pytest.raises(KluisError) as exc, quiesced(QuiesceConfig(), [str(guest.mountpoint)]):
        raise AssertionError("the body must not run")
    assert exc.value.code == "FreezeWatchdogFailed"
    assert write_finishes(guest.mountpoint / "never-frozen", within=5) is not None
