"""Conditions of the storage backends (local directory, S3, Azure Blob)."""

from kluis.catalog.entry import CatalogEntry

ENTRIES = [
    CatalogEntry(
        code="StoreUnavailable",
        title="Storage cannot be reached",
        message="The store {store} could not be reached: {reason}.",
        causes=(
            "The object storage service is down or the address is wrong.",
            "Network, DNS or TLS problems between the vault and the storage.",
            "Credentials for the storage are missing or wrong.",
        ),
        actions=(
            "Check that the storage endpoint answers (`curl` its URL from the vault server).",
            "Check the store URL and credentials in the vault configuration.",
        ),
        http_status=503,
        exit_code=6,
        area="store",
    ),
    CatalogEntry(
        code="StoreObjectNotFound",
        title="Stored object missing",
        message="The object {name} does not exist in store {store}.",
        causes=("The object was deleted or never written.",),
        actions=("Run `kluis verify` to see which recovery points are affected.",),
        http_status=404,
        exit_code=4,
        area="store",
    ),
    CatalogEntry(
        code="StoreWriteFailed",
        title="Writing to storage failed",
        message="Writing {name} to store {store} failed: {reason}.",
        causes=(
            "The storage is full or read-only.",
            "Permissions on the store directory or bucket do not allow writes.",
        ),
        actions=("Free space or extend the storage; check its permissions.",),
        http_status=507,
        exit_code=6,
        area="store",
    ),
    CatalogEntry(
        code="StoreUrlInvalid",
        title="Store URL not understood",
        message="The store URL {url} is not valid: {reason}.",
        causes=("The URL scheme is not one of file://, s3://, azure://, or a part is missing.",),
        actions=(
            "Use file:///path, s3://bucket/prefix?endpoint=URL or azure://container/prefix"
            " (see docs/stores.md).",
        ),
        exit_code=2,
        area="store",
    ),
]
