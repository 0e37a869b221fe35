"""Conditions of the vault's API itself: authentication, roles, limits, validation, internal errors."""

from kluis.catalog.entry import CatalogEntry

ENTRIES = [
    CatalogEntry(
        code="AuthTokenInvalid",
        title="Token not accepted",
        message="The vault did not accept the token: {reason}.",
        causes=(
            "No token was sent, or it was mistyped or cut off.",
            "The token was revoked, or the machine or user it belongs to was removed.",
            "The machine's credential was replaced by a later registration of the same machine.",
        ),
        actions=(
            "For a user: ask an administrator for a new token and set it in the CLI configuration.",
            "For a machine: run `kluis agent status`; if the vault no longer knows the machine,"
            " register it again with `kluis agent register`.",
        ),
        http_status=401,
        exit_code=3,
        area="service",
    ),
    CatalogEntry(
        code="RoleForbidden",
        title="Your role does not allow this",
        message="The role {role} may not {action}; it needs the role {needed} or higher.",
        causes=("The user or machine has a role with fewer rights than the action needs.",),
        actions=("Ask a vault administrator to give you the role {needed}, or to do the action for you.",),
        http_status=403,
        exit_code=3,
        seeds=("003",),
        area="service",
    ),
    CatalogEntry(
        code="MachineLimitReached",
        title="The vault has reached its machine limit",
        message="The vault already has {count} registered machines, its limit of {limit}; no more can"
        " register.",
        causes=(
            "The vault serves as many machines as its configuration allows (50 by default).",
            "Machines that no longer exist are still registered.",
        ),
        actions=(
            "Remove machines that no longer exist from the vault.",
            "Raise `max_machines` in the vault configuration, or register the machine with another vault.",
        ),
        http_status=409,
        exit_code=8,
        seeds=("003",),
        area="service",
    ),
    CatalogEntry(
        code="OnDemandBackupLimitReached",
        title="Too many on-demand backups today",
        message="Item {item} already had {count} on-demand backups today, the daily limit of {limit}.",
        causes=(
            "On-demand backups are limited per item and day to keep the instant recovery points"
            " under their limit.",
        ),
        actions=(
            "Wait until tomorrow, or rely on the scheduled backup.",
            "An administrator can raise `on_demand_daily_limit` in the vault configuration.",
        ),
        http_status=429,
        exit_code=8,
        area="service",
    ),
    CatalogEntry(
        code="ResourceNotFound",
        title="Not found",
        message="There is no {kind} named {name}.",
        causes=(
            "The name or id is mistyped.",
            "It was deleted, or it belongs to another vault.",
        ),
        actions=("List what exists (for example `kluis items list`) and use the exact name or id.",),
        http_status=404,
        exit_code=4,
        area="service",
    ),
    CatalogEntry(
        code="ValidationFailed",
        title="Request not valid",
        message="The request was refused: {reason}.",
        causes=(
            "A value is missing, has the wrong type or is outside its allowed range.",
            "The client is older or newer than the vault and sends a different request shape.",
        ),
        actions=(
            "Correct the value the message names and try again.",
            "Use the same Kluis version on the agent, the CLI and the vault.",
        ),
        http_status=422,
        exit_code=2,
        area="service",
    ),
    CatalogEntry(
        code="InternalError",
        title="Internal error in the vault",
        message="The vault met an unexpected error; reference {ref}.",
        causes=("A fault in Kluis itself, or in a component it uses, such as the database.",),
        actions=(
            "Try again in a few minutes.",
            "An administrator finds the details in the vault's log under the reference"
            " (`journalctl -u kluis-vault | grep REF`).",
            "If it keeps happening, report it with that log excerpt.",
        ),
        http_status=500,
        exit_code=1,
        area="service",
    ),
]
