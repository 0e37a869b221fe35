"""Reaching the vault from a machine: DNS, TCP, TLS, HTTP, proxy, clock (seeds 000, 001, 002, 003, 004).

The seeds' Windows-only network settings map here: .NET ``SchUseStrongCrypto`` (a
secure channel that cannot be set up) is a TLS handshake failure; Internet Explorer
proxy settings of the system account are the agent service's proxy settings.
"""

from kluis.catalog.entry import CatalogEntry

ENTRIES = [
    CatalogEntry(
        code="100050",
        title="The agent cannot connect to the vault",
        message="The agent could not connect to the vault at {url}: the {stage} step failed ({reason}).",
        causes=(
            "The machine has no network route to the vault, or a firewall blocks the vault's port.",
            "A proxy is needed but not configured for the agent, or the configured proxy is wrong.",
            "The vault server is not running or listens on another address or port.",
        ),
        actions=(
            "Run `kluis doctor`: it tests DNS, TCP, TLS and HTTP to the vault one after the other and"
            " names the step that fails.",
            "Allow outgoing connections from this machine to the vault's host and port"
            " (`nc -vz HOST PORT` shows whether the port is reachable).",
            "If a proxy is required, set it with `kluis agent register --proxy URL` or `HTTPS_PROXY`"
            " in the agent service's environment (`systemctl edit kluis-agent`); if no proxy is"
            " needed, remove stale proxy settings.",
            "On the vault server, check that the service runs: `systemctl status kluis-vault`.",
        ),
        http_status=503,
        exit_code=7,
        seeds=("000", "001", "002", "003", "004"),
        area="connectivity",
        doctor_check="vault-reachable",
    ),
    CatalogEntry(
        code="ProxyAuthenticationRequired",
        title="The proxy asks for authentication",
        message="The proxy {proxy} refused the connection to the vault with 407: proxy authentication"
        " required.",
        causes=(
            "The proxy needs a user name and password and the agent sent none.",
            "The proxy credentials the agent uses are wrong or expired.",
        ),
        actions=(
            "Put the credentials in the proxy URL (`http://USER:PASSWORD@HOST:PORT`) with"
            " `kluis agent register --proxy URL`, or in `HTTPS_PROXY` for the agent service.",
            "Ask the network team to allow the vault's address through the proxy without authentication.",
        ),
        http_status=502,
        exit_code=7,
        seeds=("003",),
        seed_codes=("407",),
        area="connectivity",
        doctor_check="vault-reachable",
    ),
    CatalogEntry(
        code="VaultDnsResolutionFailed",
        title="The vault's host name does not resolve",
        message="The host name {host} of the vault could not be resolved: {reason}.",
        causes=(
            "The machine's DNS servers are unreachable or do not know the name.",
            "The vault URL in the credentials file or agent configuration is mistyped.",
        ),
        actions=(
            "Check name resolution with `getent hosts HOST` and the resolver configuration"
            " (`resolvectl status` or `/etc/resolv.conf`).",
            "If the vault has no DNS name, add it to `/etc/hosts` or use its address in the URL.",
        ),
        http_status=503,
        exit_code=7,
        seeds=("000",),
        area="connectivity",
        doctor_check="vault-reachable",
    ),
    CatalogEntry(
        code="TlsHandshakeFailed",
        title="A secure connection to the vault could not be set up",
        message="The TLS handshake with {host} failed: {reason}.",
        causes=(
            "The vault's certificate does not match the fingerprint in the credentials file, or it expired.",
            "A proxy or firewall intercepts TLS and presents its own certificate.",
            "The two sides share no TLS version or cipher, for example because the system's crypto"
            " policy forbids the one the server offers.",
            "The machine's clock is far off, so a valid certificate looks expired or not yet valid.",
        ),
        actions=(
            "Show what the server presents with `openssl s_client -connect HOST:PORT`.",
            "If the vault's certificate changed on purpose, download new vault credentials"
            " (`kluis vault credentials`) and register again.",
            "Exempt the vault's address from TLS interception on the proxy.",
            "Set the clock right and keep it synchronised (`timedatectl set-ntp true`).",
        ),
        http_status=502,
        exit_code=7,
        seeds=("000",),
        area="connectivity",
        doctor_check="vault-reachable",
    ),
    CatalogEntry(
        code="VaultUnexpectedResponse",
        title="Something other than the vault answered",
        message="The request to {url} got HTTP status {status}, which is not an answer from a Kluis vault.",
        causes=(
            "A proxy, load balancer or web server in front of the vault answered instead.",
            "The URL points to the wrong service or path.",
        ),
        actions=(
            "Open the URL with `curl -sv URL/api/v1/health` and look at who answers.",
            "Correct the vault URL, or route the path to the vault in the proxy.",
        ),
        http_status=502,
        exit_code=7,
        area="connectivity",
        doctor_check="vault-reachable",
    ),
    CatalogEntry(
        code="ClockSkew",
        title="The machine's clock differs from the vault's",
        message="This machine's clock is {offset} seconds off the vault's clock; at most {limit} seconds"
        " are allowed.",
        causes=(
            "Time synchronisation (NTP) is off or cannot reach a time server.",
            "The time zone is set wrongly and the clock was set by hand to make the local time look right.",
        ),
        actions=(
            "Switch on time synchronisation: `timedatectl set-ntp true`, then check `timedatectl status`.",
            "Set the right time zone with `timedatectl set-timezone ZONE` instead of changing the clock.",
        ),
        http_status=400,
        exit_code=7,
        seeds=("003",),
        area="connectivity",
        doctor_check="clock-skew",
    ),
]
