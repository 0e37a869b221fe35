"""The machine's registration and keys: the right vault, the same host name, a KEK that unlocks.

``registration`` compares the vault that answers at the configured URL with the one
the machine registered with (ID 100110) and the host name now with the registered
one (ID 230006). ``kek-file`` reads the KEK file the agent unlocks its repository
with (ID 34506 when it is missing, damaged or of another key set); ``kek-vault``
unwraps the key sets the vault holds for this machine with it, which is what every
backup does first.
"""

from __future__ import annotations

from kluis.agent.keys import own_kek
from kluis.catalog import KluisError
from kluis.doctor.context import MachineContext
from kluis.doctor.framework import Check, Result, catalog_checks, failed, passed
from kluis.engine.keys import WrappedKeys


def check_registration(ctx: MachineContext) -> Result:
    """The host name is the registered one and the vault at the URL is the machine's vault."""
    cfg = ctx.cfg
    current = ctx.current_hostname
    if current != cfg.hostname:
        return failed(
            KluisError("230006", registered=cfg.hostname, current=current),
            f"hostnamectl set-hostname {cfg.hostname} (or register again under the new name with"
            " `kluis agent register`, same passphrase)",
        )
    answer, _error = ctx.probe()
    if answer is None:
        return passed(
            f"host name {current} as registered (the vault's identity is not known: it cannot be reached)"
        )
    if answer.get("vault_id") != cfg.vault_id:
        error = KluisError(
            "100110",
            path=str(ctx.config_path),
            file_vault=f"{answer.get('vault_name', '?')} ({answer.get('vault_id', '?')}) at {cfg.vault_url}",
            machine_vault=f"{cfg.vault_name} ({cfg.vault_id})",
        )
        return failed(
            error,
            f"point [vault] url in {ctx.config_path} back at vault {cfg.vault_name}, or register with"
            " the new vault's credentials file",
        )
    return passed(f"host name {current} as registered, with vault {cfg.vault_name} ({cfg.vault_id})")


def _unlock_fix(ctx: MachineContext) -> str:
    return f"kluis agent unlock --config-dir {ctx.config_dir} (asks for the passphrase, writes the KEK file)"


def check_kek_file(ctx: MachineContext) -> Result:
    """The KEK file is present, readable, and of the key set the machine registered."""
    try:
        own_kek(ctx.cfg)
    except KluisError as exc:
        return failed(exc, _unlock_fix(ctx))
    return passed(
        f"{ctx.layout.kek} is of the registered key set (fingerprint {ctx.cfg.key_fingerprint[:16]})"
    )


def check_kek_vault(ctx: MachineContext) -> Result:
    """The KEK unwraps one of the key sets the vault holds for this machine."""
    cfg = ctx.cfg
    kek = own_kek(cfg)
    answer = ctx.ask(f"/machines/{cfg.machine_id}/keys")
    if answer.error is not None:
        return failed(answer.error, answer.error.actions[0] if answer.error.actions else _unlock_fix(ctx))
    key_sets = answer.body if isinstance(answer.body, list) else []
    for entry in key_sets:
        try:
            wrapped = WrappedKeys.from_json(f"keys/{entry['id']}", str(entry["body"]).encode())
            wrapped.unwrap(kek, repo=f"machine {cfg.hostname}")
        except (KluisError, KeyError, TypeError, ValueError):
            continue
        return passed(f"the KEK file unlocks key set {entry['id']} stored in the vault")
    error = KluisError(
        "34506",
        path=str(ctx.layout.kek),
        detail=f"it unlocks none of the {len(key_sets)} key sets the vault holds for this machine",
    )
    return failed(error, _unlock_fix(ctx))


CHECKS: list[Check[MachineContext]] = [
    Check("registration", "Registration (credentials valid)", check_registration, ("230006", "100110")),
    Check("kek-file", "KEK file present", check_kek_file, ("34506",)),
    Check(
        "kek-vault",
        "KEK matches the vault's keys",
        check_kek_vault,
        ("34506",),
        requires=("kek-file", "vault-auth"),
    ),
]
CATALOG_CHECKS = catalog_checks(CHECKS)
