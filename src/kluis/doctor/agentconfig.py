"""The agent's configuration: it loads, its options allow backups, and its secrets are private.

Seed 004 asks for the guest agent's options (``Extensions.Enable=y``,
``Provisioning.Agent=auto``); Kluis's counterparts are a configuration that loads
(the machine is provisioned: registered, with a vault, token and scratch folder) and
``[extensions] enable`` left on (a boolean). Seed 000's MachineKeys permissions become the modes of the
configuration directory (it holds the machine's token) and of the KEK file.
"""

from __future__ import annotations

import os
import pwd
import stat

from kluis.catalog import KluisError
from kluis.doctor.context import MachineContext
from kluis.doctor.framework import Check, Result, catalog_checks, failed, passed


def check_agent_config(ctx: MachineContext) -> Result:
    """The configuration loads, and ``[extensions]`` allows extensions to run."""
    error = ctx.config_error
    if error is not None:
        if error.code == "AgentNotRegistered":
            fix = f"kluis agent register --vault-credentials FILE --config-dir {ctx.config_dir}"
        else:
            fix = f"correct {error.params.get('reason', 'the named setting')} in {ctx.config_path}"
        return failed(error, fix)
    ext = ctx.section("extensions")
    enable = ext.get("enable", True)
    path = str(ctx.config_path)
    if not isinstance(enable, bool):
        return failed(
            KluisError("AgentConfigInvalid", path=path, reason="extensions.enable must be true or false"),
            f"set `enable = true` under `[extensions]` in {path}",
        )
    if not enable:
        return failed(
            KluisError(
                "AgentConfigOptionInvalid",
                option="extensions.enable",
                config=path,
                value="false",
                expected="true",
            ),
            f"set `enable = true` under `[extensions]` in {path}, then restart the agent",
        )
    cfg = ctx.cfg
    return passed(
        f"machine {cfg.hostname} of vault {cfg.vault_name or cfg.vault_id}; extensions enabled",
        config=path,
        vault_url=cfg.vault_url,
        scratch=str(cfg.scratch),
        extensions_dir=str(ctx.extensions_dir),
    )


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def check_key_permissions(ctx: MachineContext) -> Result:
    """The configuration directory, agent.toml and the KEK file give no access to group or others."""
    cfg = ctx.cfg
    paths = [(ctx.config_dir, True), (ctx.config_path, False), (ctx.layout.kek, False)]
    want_root = os.geteuid() == 0
    for path, is_dir in paths:
        try:
            st = path.stat()
        except FileNotFoundError:
            continue  # a missing KEK file is the kek-file check's finding
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077 or (want_root and st.st_uid != 0):
            error = KluisError(
                "AgentKeyPermissionsWrong",
                path=str(path),
                mode=f"{mode:04o}",
                owner=_owner(st.st_uid),
            )
            fix = f"chown root:root {path} && chmod {'0700' if is_dir else '0600'} {path}"
            return failed(error, fix)
    return passed(
        f"{ctx.config_dir}, {ctx.config_path.name} and the KEK file are private",
        scratch=str(cfg.scratch),
    )


CHECKS: list[Check[MachineContext]] = [
    Check(
        "agent-config",
        "Agent configuration",
        check_agent_config,
        ("AgentNotRegistered", "AgentConfigInvalid", "AgentConfigOptionInvalid"),
    ),
    Check(
        "agent-key-permissions",
        "Agent key permissions",
        check_key_permissions,
        ("AgentKeyPermissionsWrong",),
    ),
]
CATALOG_CHECKS = catalog_checks(CHECKS)
