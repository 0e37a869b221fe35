"""Conditions of the vault server: its repository object API, items, policies and its own setup.

The seed codes the vault raises (34513, 100110, 230006, UserErrorBackupOperationInProgress, the
job-cancel codes) and the general API conditions (AuthTokenInvalid, RoleForbidden,
ResourceNotFound, ValidationFailed, InternalError) live in ``registration``, ``jobs`` and
``service``; this module holds only what is particular to the vault.
"""

from kluis.catalog.entry import CatalogEntry

ENTRIES = [
    CatalogEntry(
        code="MachineKeySetMismatch",
        title="Re-registration with a different key set",
        message="Machine {machine} is already registered with another key set; the key set offered"
        " now (fingerprint {offered}) does not match the registered one.",
        causes=(
            "The passphrase given at re-registration is not the one set when the machine first"
            " registered, so it unlocked a different key set (or a new one was made).",
            "A different machine with the same host name tries to register.",
        ),
        actions=(
            "Register again with the passphrase that was set at the first registration.",
            "If this is really another machine, give it its own host name.",
            "If the old machine and its data are gone for good, an administrator can remove it"
            " (`DELETE /api/v1/machines/ID` after stopping protection) and register afresh.",
        ),
        http_status=403,
        exit_code=3,
        seeds=("003",),
        area="vault",
    ),
    CatalogEntry(
        code="MachineHasProtectedItems",
        title="The machine still has protected data",
        message="Machine {machine} cannot be removed: {count} of its items still hold recovery points.",
        causes=("Removing a machine would orphan the recovery points of its protected items.",),
        actions=(
            "Stop protection of each item with delete data first (`POST /api/v1/items/ID/stop`"
            " with `delete_data: true`), then remove the machine.",
        ),
        http_status=409,
        exit_code=8,
        area="vault",
    ),
    CatalogEntry(
        code="ResourceExists",
        title="Already exists",
        message="A {kind} named {name} already exists.",
        causes=("The name is taken by an existing object of the same kind.",),
        actions=("Choose another name, or change the existing one instead of creating a new one.",),
        http_status=409,
        exit_code=8,
        area="vault",
    ),
    CatalogEntry(
        code="ItemStateInvalid",
        title="Not possible in the item's protection state",
        message="Item {item} is {state}; it cannot be {action} in that state.",
        causes=(
            "Protection of the item was stopped, or its data is soft-deleted.",
            "The action was already done (for example resuming an item that is protected).",
        ),
        actions=(
            "Check the item's state with `GET /api/v1/items/ID`.",
            "Undelete soft-deleted data first, then resume protection with a policy.",
        ),
        http_status=409,
        exit_code=8,
        area="vault",
    ),
    CatalogEntry(
        code="PolicyInUse",
        title="Policy still in use",
        message="Policy {policy} cannot be deleted: {count} protected items use it.",
        causes=("Protected items still follow this policy.",),
        actions=("Move the items to another policy or stop their protection, then delete the policy.",),
        http_status=409,
        exit_code=8,
        area="vault",
    ),
    CatalogEntry(
        code="JobAgentTimeout",
        title="The agent did not run the job in time",
        message="Job {job} was given up: the agent on {machine} {reason}.",
        causes=(
            "The agent service is stopped, or the machine is off or cannot reach the vault.",
            "The agent stopped reporting progress, for example because it crashed or the machine"
            " rebooted during the job.",
        ),
        actions=(
            "Check the agent on the machine: `systemctl status kluis-agent` and `kluis doctor`.",
            "Run the backup again with `kluis backup now ITEM` once the agent reports in.",
        ),
        http_status=504,
        exit_code=7,
        area="vault",
    ),
    CatalogEntry(
        code="RepoUploadTooLarge",
        title="Upload larger than the vault accepts",
        message="The upload of {name} is larger than the vault's limit of {limit} bytes.",
        causes=("The agent packs more data into one object than the vault's `pack_size_limit` allows.",),
        actions=("Lower the agent's pack size, or raise `pack_size_limit` in the vault configuration.",),
        http_status=413,
        exit_code=6,
        area="vault",
    ),
    CatalogEntry(
        code="RepoUploadChecksumMismatch",
        title="Upload does not match its name",
        message="The upload of {name} was refused: its content hash is {actual}, not the hash its"
        " name promises.",
        causes=(
            "The data was damaged on its way to the vault (faulty memory, disk or network gear).",
            "The upload was cut short and the rest was lost.",
        ),
        actions=(
            "Nothing was stored; the agent retries the upload on the next backup.",
            "If it keeps happening, check the machine's memory and disks and the network path.",
        ),
        http_status=422,
        exit_code=5,
        area="vault",
    ),
    CatalogEntry(
        code="RepoUploadRejected",
        title="Upload refused by the vault",
        message="The upload of {name} was refused: {reason}.",
        causes=(
            "The object is not in the repository format this vault understands (damaged or written"
            " by an incompatible agent).",
            "The object refers to data the vault does not hold, for example an index naming a pack"
            " that was never uploaded.",
        ),
        actions=(
            "Nothing was stored; run the backup again so the agent uploads what is missing first.",
            "Use the same Kluis version on the agent and the vault.",
        ),
        http_status=422,
        exit_code=5,
        area="vault",
    ),
    CatalogEntry(
        code="RepoPointIncomplete",
        title="Recovery point refers to missing data",
        message="Recovery point {point} was refused: {count} of the blobs it references are not in"
        " the vault (for example {blob}).",
        causes=(
            "The packs or index files holding them were not uploaded, or their upload failed.",
            "The data was removed by garbage collection after an interrupted backup and the agent's"
            " local cache still lists it.",
        ),
        actions=(
            "Nothing was recorded. Run the backup again; the agent uploads what is missing.",
            "If it happens again, clear the agent's checksum store in the scratch folder so it"
            " asks the vault which data exists (`kluis agent cache clear`).",
        ),
        http_status=422,
        exit_code=5,
        area="vault",
    ),
    CatalogEntry(
        code="RepoObjectConflict",
        title="Object exists with other content",
        message="{name} already exists in the repository with different content; objects are written once.",
        causes=(
            "The repository of this machine was initialised before (a second `init`).",
            "Two agents share one machine registration.",
        ),
        actions=(
            "Open the existing repository instead of creating it again.",
            "Give every machine its own registration.",
        ),
        http_status=409,
        exit_code=5,
        area="vault",
    ),
    CatalogEntry(
        code="RepoDeleteNotAllowed",
        title="Machines cannot delete repository objects",
        message="Deleting {name} was refused: only the vault's retention and garbage collection delete data.",
        causes=("An agent or script tried to delete an object through the object API.",),
        actions=(
            "Let retention expire recovery points; stop protection with delete data to remove an"
            " item's data.",
        ),
        http_status=403,
        exit_code=3,
        area="vault",
    ),
    CatalogEntry(
        code="RepoMaintenanceInProgress",
        title="Repository maintenance is running",
        message="The repository of machine {machine} is being cleaned up by garbage collection; {what}"
        " has to wait until it finishes.",
        causes=("Garbage collection sweeps the machine's repository and must not race a new point.",),
        actions=("Try again in a few minutes; scheduled backups wait for the sweep by themselves.",),
        http_status=409,
        exit_code=8,
        area="vault",
    ),
    CatalogEntry(
        code="VaultConfigInvalid",
        title="Vault configuration not usable",
        message="The vault configuration {path} cannot be used: {reason}.",
        causes=(
            "The file is missing: the vault was not initialised in this data directory.",
            "A value in the file has the wrong type or is out of range.",
        ),
        actions=(
            "Create a vault with `kluis vault init --data DIR`, or point `--config` at its file.",
            "Correct the value named in the message (see docs/vault.md for every setting).",
        ),
        http_status=500,
        exit_code=2,
        area="vault",
    ),
    CatalogEntry(
        code="VaultListenFailed",
        title="Vault cannot listen on its address",
        message="The vault cannot listen on {listen}: {reason}.",
        causes=(
            "Another process (often another vault) already listens on that port.",
            "The address is not one of this machine's, or a port below 1024 needs root.",
        ),
        actions=(
            "See which process holds the port (`ss -ltnp 'sport = :PORT'`) and stop it, or choose"
            " another address with `--listen HOST:PORT` or `listen` in vault.toml.",
            "Use an address of this machine (`0.0.0.0` for all of them).",
        ),
        exit_code=7,
        area="vault",
    ),
    CatalogEntry(
        code="VaultDatabaseUnavailable",
        title="Vault database not reachable",
        message="The vault database {url} cannot be used: {reason}.",
        causes=(
            "The PostgreSQL server is down, or the URL, user or password is wrong.",
            "The SQLite file's directory is not writable.",
            "The database schema is newer than this Kluis version.",
        ),
        actions=(
            "Check the database URL in the vault configuration and that the server answers"
            " (`psql URL -c 'select 1'`).",
            "Make the data directory writable for the vault's user.",
            "Run the same or a newer Kluis version than the one that last migrated the database.",
        ),
        http_status=503,
        exit_code=6,
        area="vault",
    ),
]
