"""Registering a machine with a vault, vault credentials and the encryption passphrase (seed 003).

The IDs are the seeds' own. Windows-only parts of the seeds' advice (browser cache,
Internet Explorer trusted sites, the MMC console) have no counterpart; the checks that
remain are the credentials file, the network path, the machine name and the KEK file.
"""

from kluis.catalog.entry import CatalogEntry

ENTRIES = [
    CatalogEntry(
        code="34513",
        title="Vault credentials are not valid",
        message="The vault credentials file {path} cannot be used: {reason}.",
        causes=(
            "The file is older than 10 days, or a newer credentials file was made after it (only the"
            " newest one is valid).",
            "The file is damaged, or it was renamed and no longer ends in `.vaultCredentials`.",
            "The vault could not be reached to check the file (no network, or a proxy or firewall"
            " blocks it).",
            "Security software on the machine blocks the agent from reading the file or its scratch folder.",
        ),
        actions=(
            "Make a fresh credentials file on the vault with `kluis vault credentials --out FILE` and"
            " register within 10 days.",
            "Copy the file unchanged (keep the `.vaultCredentials` extension) and run `kluis agent"
            " register --vault-credentials FILE` again.",
            "If the vault cannot be reached, fix the connection first (`kluis doctor`).",
            "Allow the agent to read its files in the security policy (SELinux, AppArmor).",
        ),
        http_status=400,
        exit_code=3,
        seeds=("003",),
        area="registration",
    ),
    CatalogEntry(
        code="100110",
        title="The credentials belong to another vault",
        message="The vault credentials file {path} is for vault {file_vault}, but this machine is"
        " registered with vault {machine_vault}.",
        causes=("The credentials file was made on a different vault than the one this machine uses.",),
        actions=(
            "Use a credentials file made on the vault this machine is registered with.",
            "To move the machine to another vault, register it there on purpose with `kluis agent"
            " register --vault-credentials FILE`.",
        ),
        http_status=409,
        exit_code=3,
        seeds=("003",),
        area="registration",
    ),
    CatalogEntry(
        code="VaultCredentialsDownloadFailed",
        title="Vault credentials could not be made",
        message="The vault refused to make a credentials file for {user}: {reason}.",
        causes=(
            "The user's role does not allow registering machines (Operator or higher is needed).",
            "The vault already has as many machines as its limit allows (50 by default).",
            "The user's account is disabled or its token expired.",
            "A firewall or proxy between the CLI and the vault blocks the request.",
        ),
        actions=(
            "Ask an administrator for the Operator role, or to make the file for you.",
            "Remove machines that no longer exist from the vault, or raise its machine limit.",
            "Sign in again with a valid token.",
            "Check the path to the vault with `kluis doctor`.",
        ),
        http_status=403,
        exit_code=3,
        seeds=("003",),
        seed_codes=("403",),
        area="registration",
    ),
    CatalogEntry(
        code="EncryptionKeySetupFailed",
        title="The encryption key could not be set up",
        message="Registration stopped before the encryption key was stored in the vault; the"
        " passphrase was saved in {path}.",
        causes=(
            "The machine is already registered with another vault.",
            "The passphrase was damaged while it was set up, so the key cannot be unwrapped.",
        ),
        actions=(
            "Remove the machine's registration (`kluis agent unregister`) and register again with"
            " a new passphrase.",
            "Keep a copy of the passphrase somewhere safe: without it and the KEK file the data"
            " cannot be decrypted.",
        ),
        http_status=409,
        exit_code=3,
        seeds=("003",),
        area="registration",
    ),
    CatalogEntry(
        code="0x1FC07",
        title="Activation did not complete",
        message="Activation of the agent did not complete because the scratch folder {path} cannot be"
        " used: {reason}.",
        causes=(
            "The scratch folder's volume has too little free space.",
            "The scratch folder was moved by hand and the agent still uses the old location.",
            "The KEK file is missing from the scratch folder.",
        ),
        actions=(
            "Update the agent to the latest version.",
            "Put the scratch folder on a volume with free space of at least 5 to 10% of the data to"
            " back up, and move it with `kluis agent config set scratch DIR`, which moves its"
            " content too.",
            "Make sure the KEK file is present in the scratch folder (`kluis doctor` checks it).",
        ),
        http_status=500,
        exit_code=9,
        seeds=("003",),
        area="registration",
        doctor_check="scratch-folder",
    ),
    CatalogEntry(
        code="34506",
        title="The stored encryption passphrase is not set up correctly",
        message="The key-encryption file {path} on this machine is missing or does not unlock the"
        " key set stored in the vault.",
        causes=(
            "The scratch folder's volume has too little free space, so the KEK file could not be written.",
            "The scratch folder was moved by hand without its KEK file.",
            "The KEK file was deleted, or replaced by one from another machine.",
        ),
        actions=(
            "Update the agent to the latest version.",
            "Move the scratch folder only with `kluis agent config set scratch DIR`, to a volume with"
            " enough free space.",
            "Recreate the KEK file from the passphrase with `kluis agent unlock`; it asks for the"
            " passphrase set at registration.",
        ),
        http_status=500,
        exit_code=3,
        seeds=("003",),
        area="registration",
        doctor_check="kek-file",
    ),
    CatalogEntry(
        code="230006",
        title="The machine's name changed since registration",
        message="This machine registered as {registered} but now calls itself {current}; the vault"
        " does not know it under the new name.",
        causes=("The machine's host name was changed after it was registered.",),
        actions=(
            "Change the host name back to {registered} (`hostnamectl set-hostname {registered}`).",
            "Or register the machine again under its new name with `kluis agent register`, using"
            " the same passphrase.",
        ),
        http_status=409,
        exit_code=3,
        seeds=("003",),
        area="registration",
        doctor_check="registration",
    ),
]
