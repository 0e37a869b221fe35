"""``kluis protect disks``: enable protection of a machine's or VM's disks under a policy.

A target is a block device (``/dev/...``), the name of a VM the agent knows
(``<agent config dir>/vms/NAME.toml``), or disk image files of this host: these are
written into a VM file named ``--name`` (guest agent ``local``: the guest's file
systems are the loop mounts of the images on this host), which the agent then reads.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated

import tomli_w
import typer

from kluis.catalog import KluisError
from kluis.cli.client import VaultClient
from kluis.cli.common import JsonOpt, MachineOpt, TokenOpt, VaultOpt, with_client
from kluis.cli.output import out, print_json
from kluis.cli.protect import app, print_item

_VM_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")


def write_vm_file(config_dir: Path, name: str, images: list[str]) -> Path:
    """``vms/NAME.toml`` for image files of this host (root-owned, 0600)."""
    if not _VM_NAME.match(name):
        raise KluisError("ValidationFailed", reason=f"{name!r} is not a VM name (letters, digits, _.:-)")
    doc = {
        "vm": {"name": name, "guest_agent": "local"},
        "disks": [{"name": Path(p).name, "path": p} for p in images],
    }
    target = config_dir / "vms" / f"{name}.toml"
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(tomli_w.dumps(doc).encode())
    return target


def disk_spec(
    targets: list[str], *, name: str | None, config_dir: Path, local: bool
) -> tuple[list[str], str]:
    """The item's ``disks`` list and its default name, writing a VM file for image files."""
    devices = [t for t in targets if t.startswith("/dev/")]
    images = [
        os.path.abspath(t) for t in targets if not t.startswith("/dev/") and ("/" in t or os.path.isfile(t))
    ]
    vms = [t for t in targets if t not in devices and os.path.abspath(t) not in images and "/" not in t]
    if images:
        if not local:
            raise KluisError("ValidationFailed", reason="image files can only be protected on this machine")
        missing = [p for p in images if not os.path.isfile(p)]
        if missing:
            raise KluisError("BackupSourceMissing", path=missing[0], reason="no such file")
        vm = name or Path(images[0]).stem
        write_vm_file(config_dir, vm, images)
        vms.append(vm)
    if local:
        gone = [d for d in devices if not os.path.exists(d)]
        if gone:
            raise KluisError("BackupSourceMissing", path=gone[0], reason="no such device")
    if (devices and vms) or len(vms) > 1 or not (devices or vms):
        raise KluisError(
            "ValidationFailed",
            reason="give block devices, or one VM (a VM name or its image files), not both",
        )
    disks = devices or vms
    return disks, name or ", ".join(disks)


@app.command("disks")
def disks(
    targets: Annotated[list[str], typer.Argument(help="Block devices, a VM name, or disk image files.")],
    policy: Annotated[str, typer.Option("--policy", "-p", help="Policy name or id.")],
    machine: MachineOpt = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Item name (and the VM's name for images).")
    ] = None,
    config_dir: Annotated[
        Path | None,
        typer.Option(
            "--config-dir",
            help="Agent configuration directory (default /etc/kluis).",
            envvar="KLUIS_AGENT_CONFIG_DIR",
        ),
    ] = None,
    vault: VaultOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Protect the disks of a machine or VM (this machine by default) under a policy."""
    from kluis.agent.config import config_dir as resolve

    def body(client: VaultClient) -> None:
        target = client.target_machine(machine)
        spec, default_name = disk_spec(
            targets, name=name, config_dir=resolve(config_dir), local=machine is None
        )
        created = client.post(
            "/items",
            {
                "machine_id": target["id"],
                "name": default_name,
                "kind": "disks",
                "disks": spec,
                "policy": policy,
            },
        )
        if as_json:
            print_json(created)
            return
        out.print("Protection enabled:")
        print_item(created, target)
        out.print(f"  policy:  {policy}")
        out.print(f"Back it up now with: kluis backup now {created['id'][:12]} --wait")

    with_client(body, vault, token, as_json)
