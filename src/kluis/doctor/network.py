"""The path from the agent to its vault, one verdict per step: DNS, TCP, proxy, TLS, HTTP, authentication.

The steps come from the agent's own probe (``kluis.agent.net.probe``), which walks
them in order and names the step that failed (ID 100050, or ProxyAuthenticationRequired
for a proxy's 407). Run once, it gives every step its verdict: the steps before the
failed one passed, the failed one carries the error, and the ones after it are
skipped because they need it. Authentication then asks the vault who the machine's
token belongs to (``/me``).
"""

from __future__ import annotations

from collections.abc import Callable

from kluis.agent.net import redact
from kluis.catalog import KluisError
from kluis.doctor.context import MachineContext
from kluis.doctor.framework import Check, Result, catalog_checks, failed, passed, skipped

STAGES = ("DNS", "TCP", "proxy", "TLS", "HTTP")


def failed_stage(error: KluisError) -> str:
    """The probe step an error belongs to."""
    if error.code == "ProxyAuthenticationRequired":
        return "proxy"
    stage = str(error.params.get("stage", ""))
    return stage if stage in STAGES else "DNS"  # e.g. an unreadable pinned certificate: before any step


def _target(ctx: MachineContext) -> tuple[str, int, str]:
    """(host, port, what) of the first hop: the proxy when one is used, else the vault."""
    from urllib.parse import urlsplit

    ep = ctx.endpoint()
    proxy = ep.effective_proxy()
    if proxy:
        parts = urlsplit(proxy)
        return parts.hostname or "", parts.port or 3128, f"the proxy {redact(proxy)}"
    return ep.host, ep.port, "the vault"


def _fix(ctx: MachineContext, stage: str, error: KluisError) -> str:
    host, port, what = _target(ctx)
    config = ctx.config_path
    if error.code == "ProxyAuthenticationRequired":
        return (
            "set the proxy with its credentials: kluis agent config set proxy http://USER:PASSWORD@HOST:PORT"
        )
    return {
        "DNS": f"check the host name in [vault] url of {config} and the resolver: `getent hosts {host}`",
        "TCP": f"make {what} reachable on port {port}: `nc -vz {host} {port}`; start the vault"
        " (`systemctl start kluis-vault`) or open the firewall",
        "proxy": "check the proxy: kluis agent config set proxy URL (or '' for none)",
        "TLS": f"compare the vault's certificate with tls_fingerprint in {config}; if the vault's"
        " certificate changed, register again with a fresh credentials file",
        "HTTP": f"check that {ctx.cfg.vault_url} is a Kluis vault: `curl {ctx.cfg.vault_url}/api/v1/health`",
    }[stage]


def _passed(ctx: MachineContext, stage: str) -> Result:
    ep = ctx.endpoint()
    host, port, what = _target(ctx)
    if stage == "DNS":
        return passed(f"the name of {what}, {host}, resolves", host=host)
    if stage == "TCP":
        return passed(f"{what} accepts connections on {host}:{port}", host=host, port=port)
    if stage == "proxy":
        return passed(f"{what} lets the agent through to the vault")
    if stage == "TLS":
        pinned = " and is the pinned one" if ep.tls_fingerprint else ""
        return passed(f"the vault's certificate is trusted{pinned}", pinned=bool(ep.tls_fingerprint))
    answer, _ = ctx.probe()
    assert answer is not None
    return passed(
        f"{ep.url} answers as vault {answer.get('vault_name')} (Kluis {answer.get('version')})",
        vault_id=answer.get("vault_id"),
        vault_version=answer.get("version"),
    )


def step(stage: str) -> Callable[[MachineContext], Result]:
    """The check of one probe step."""

    def run(ctx: MachineContext) -> Result:
        ep = ctx.endpoint()
        if stage == "proxy" and not ep.effective_proxy():
            return passed("no proxy is configured: the agent connects to the vault directly")
        if stage == "TLS" and not ep.https:
            return passed(f"not used: the vault's URL {ep.url} is plain HTTP")
        _answer, error = ctx.probe()
        if error is None:
            return _passed(ctx, stage)
        where = failed_stage(error)
        if STAGES.index(stage) < STAGES.index(where):
            return _passed(ctx, stage)
        if stage == where:
            return failed(error, _fix(ctx, stage, error))
        return skipped(f"not reached: the {where} step failed")

    return run


def check_auth(ctx: MachineContext) -> Result:
    """The vault accepts the machine's token and says it belongs to this machine."""
    answer = ctx.ask("/me")
    cfg = ctx.cfg
    register = (
        f"kluis agent register --vault-credentials FILE --config-dir {ctx.config_dir}"
        " (with a fresh credentials file and the same passphrase)"
    )
    if answer.error is not None:
        if answer.error.code == "AuthTokenInvalid":
            return failed(answer.error, register)
        return failed(answer.error, answer.error.actions[0] if answer.error.actions else register)
    body = answer.body if isinstance(answer.body, dict) else {}
    if body.get("kind") != "machine" or body.get("machine_id") != cfg.machine_id:
        error = KluisError(
            "AuthTokenInvalid",
            reason=f"the token belongs to {body.get('kind')} {body.get('machine_id') or body.get('name')},"
            f" not to machine {cfg.machine_id}",
        )
        return failed(error, register)
    return passed(f"the vault accepts the token of machine {body.get('name')} ({cfg.machine_id})")


CHECKS: list[Check[MachineContext]] = [
    Check(
        "vault-dns",
        "Vault reachable: DNS",
        step("DNS"),
        ("100050", "AgentConfigInvalid"),
    ),
    Check("vault-tcp", "Vault reachable: TCP", step("TCP"), ("100050",), requires=("vault-dns",)),
    Check(
        "vault-proxy",
        "Vault reachable: proxy",
        step("proxy"),
        ("100050", "ProxyAuthenticationRequired"),
        requires=("vault-tcp",),
    ),
    Check("vault-tls", "Vault reachable: TLS", step("TLS"), ("100050",), requires=("vault-proxy",)),
    Check("vault-http", "Vault reachable: HTTP", step("HTTP"), ("100050",), requires=("vault-tls",)),
    Check(
        "vault-auth",
        "Vault accepts the machine",
        check_auth,
        ("AuthTokenInvalid",),
        requires=("vault-http",),
    ),
]
CATALOG_CHECKS = catalog_checks(CHECKS)
