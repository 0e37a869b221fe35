"""The ``kluis`` command line as a client of a vault: where the vault is, and reaching it."""

from kluis.catalog.entry import CatalogEntry

ENTRIES = [
    CatalogEntry(
        code="CliNotLoggedIn",
        title="No vault to talk to",
        message="The command does not know which vault to use or who you are: {missing} is not set.",
        causes=(
            "`kluis login` was never run for this user, or its configuration file was removed.",
            "The command runs as another user (for example with sudo), whose configuration is elsewhere.",
        ),
        actions=(
            "Run `kluis login --vault URL --token TOKEN` once; the settings go to"
            " `~/.config/kluis/cli.toml`.",
            "Or give `--vault URL --token TOKEN` on the command line, or set `KLUIS_VAULT_URL` and"
            " `KLUIS_TOKEN`.",
            "Ask a vault administrator for a user token (`kluis vault users add NAME --role Operator`).",
        ),
        http_status=401,
        exit_code=3,
        area="cli",
    ),
    CatalogEntry(
        code="CliConfigInvalid",
        title="The CLI configuration cannot be read",
        message="The CLI configuration {path} cannot be used: {reason}.",
        causes=(
            "The file was edited by hand and is no longer valid TOML, or a value has the wrong type.",
            "The file is not readable by this user.",
        ),
        actions=(
            "Write it again with `kluis login --vault URL --token TOKEN`.",
            "Or correct the key the message names; `KLUIS_CLI_CONFIG` points the CLI at another file.",
        ),
        http_status=400,
        exit_code=2,
        area="cli",
    ),
    CatalogEntry(
        code="CliVaultUnreachable",
        title="The vault cannot be reached",
        message="The vault at {url} could not be reached: the {stage} step failed ({reason}).",
        causes=(
            "The vault server is not running, or listens on another address or port.",
            "The vault URL in the CLI configuration is wrong or out of date.",
            "A firewall or proxy between this computer and the vault blocks the connection.",
        ),
        actions=(
            "Check the URL with `curl -s URL/api/v1/health`; it answers with the vault's name when the"
            " vault runs.",
            "On the vault server, check the service: `systemctl status kluis-vault`.",
            "Correct the URL with `kluis login --vault URL`, or set `HTTPS_PROXY` if a proxy is needed.",
        ),
        http_status=503,
        exit_code=7,
        area="cli",
    ),
    CatalogEntry(
        code="CliMachineNotRegistered",
        title="This machine is not registered with the vault",
        message="This machine ({host}) is not registered with the vault at {url}.",
        causes=(
            "The agent was never registered on this machine, or it registered with another vault.",
            "The machine was registered under another host name.",
        ),
        actions=(
            "Register the agent: `kluis agent register --vault-credentials FILE`.",
            "Or name a registered machine with `--machine NAME` (see `kluis items list`).",
        ),
        http_status=404,
        exit_code=4,
        area="cli",
    ),
]
