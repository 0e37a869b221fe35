"""Role matrix: every endpoint x every kind of caller.

The table below is the access rule of each endpoint, written out by hand; the test
first checks it covers every route the server's OpenAPI schema lists, so a new
endpoint without a rule fails here. A refusal must be 403 RoleForbidden (401
AuthTokenInvalid without a token); an allowed call must get past the check (any
status but 401/403: 404 for made-up ids and 422 for empty bodies are fine).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.vault.helpers import Agent, VaultServer

ROLES = ["Reader", "Operator", "Contributor", "Admin"]
CALLERS = ["none", "machine", "other-machine", *ROLES]
RANK = {r: i for i, r in enumerate(ROLES)}
NOBODY = "0" * 32

# (method, path) -> (rule, body). Rules: a role name = that role or higher; "public";
# "any" = any valid token; "self" = the machine in the path only; "machine" = any machine
# (the job check comes after); "Operator+self" = Operator or higher, or the machine itself;
# "register" = Operator or higher (or vault credentials); "credentials" = vault credentials
# only (tokens do not matter); "nobody" = refused to everyone with a token.
MATRIX: dict[tuple[str, str], tuple[str, Any]] = {
    ("GET", "/api/v1/health"): ("public", None),
    ("GET", "/api/v1/vault"): ("Reader", None),
    ("GET", "/api/v1/me"): ("any", None),
    ("POST", "/api/v1/credentials"): ("Operator", None),
    ("GET", "/api/v1/users"): ("Admin", None),
    ("POST", "/api/v1/users"): ("Admin", {}),
    ("PATCH", "/api/v1/users/{user_ref}"): ("Admin", {}),
    ("POST", "/api/v1/users/{user_ref}/tokens"): ("Admin", {}),
    ("POST", "/api/v1/machines/register"): (
        "register",
        {"hostname": "matrix-host", "key_fingerprint": "ab" * 8},
    ),
    ("POST", "/api/v1/machines/register/keys"): ("credentials", {"credentials": "{}", "hostname": "x"}),
    ("GET", "/api/v1/machines"): ("Reader", None),
    ("GET", "/api/v1/machines/{machine_id}"): ("Reader", None),
    ("DELETE", "/api/v1/machines/{machine_id}"): ("Contributor", None),
    ("GET", "/api/v1/machines/{machine_id}/keys"): ("Operator+self", None),
    ("POST", "/api/v1/machines/{machine_id}/heartbeat"): ("self", {}),
    ("GET", "/api/v1/machines/{machine_id}/work"): ("self", None),
    ("GET", "/api/v1/machines/{machine_id}/repo/objects"): ("Operator+self", None),
    ("HEAD", "/api/v1/machines/{machine_id}/repo/objects/{name}"): ("Operator+self", None),
    ("GET", "/api/v1/machines/{machine_id}/repo/objects/{name}"): ("Operator+self", None),
    ("PUT", "/api/v1/machines/{machine_id}/repo/objects/{name}"): ("self", b"x"),
    ("DELETE", "/api/v1/machines/{machine_id}/repo/objects/{name}"): ("nobody", None),
    ("POST", "/api/v1/machines/{machine_id}/repo/have"): ("Operator+self", {"ids": []}),
    ("GET", "/api/v1/items"): ("Reader", None),
    ("POST", "/api/v1/items"): ("Contributor", {}),
    ("GET", "/api/v1/items/{item_id}"): ("Reader", None),
    ("PATCH", "/api/v1/items/{item_id}"): ("Contributor", {}),
    ("POST", "/api/v1/items/{item_id}/stop"): ("Contributor", {}),
    ("POST", "/api/v1/items/{item_id}/undelete"): ("Contributor", None),
    ("POST", "/api/v1/items/{item_id}/resume"): ("Contributor", {}),
    ("POST", "/api/v1/items/{item_id}/backup"): ("Operator", {}),
    ("POST", "/api/v1/items/{item_id}/restore"): ("Operator", {}),
    ("GET", "/api/v1/policies"): ("Reader", None),
    ("POST", "/api/v1/policies"): ("Contributor", {}),
    ("GET", "/api/v1/policies/{policy_ref}"): ("Reader", None),
    ("PUT", "/api/v1/policies/{policy_ref}"): ("Contributor", {}),
    ("DELETE", "/api/v1/policies/{policy_ref}"): ("Contributor", None),
    ("GET", "/api/v1/jobs"): ("Reader", None),
    ("GET", "/api/v1/jobs/{job_id}"): ("Reader", None),
    ("POST", "/api/v1/jobs/{job_id}/cancel"): ("Operator", None),
    ("POST", "/api/v1/jobs/{job_id}/progress"): ("machine", {}),
    ("POST", "/api/v1/jobs/{job_id}/result"): ("machine", {}),
    ("POST", "/api/v1/maintenance/gc"): ("Contributor", {"machine_id": NOBODY}),
    ("POST", "/api/v1/maintenance/retention"): ("Contributor", None),
    ("GET", "/api/v1/points"): ("Reader", None),
    ("GET", "/api/v1/points/{point_id}"): ("Reader", None),
    ("GET", "/api/v1/alerts"): ("Reader", None),
    ("POST", "/api/v1/alerts/{alert_id}/resolve"): ("Operator", None),
    # Agents fetch the snapshot extension; any valid token may (the package holds no secrets).
    ("GET", "/api/v1/extensions/{name}"): ("any", None),
    ("GET", "/api/v1/extensions/{name}/package"): ("any", None),
}


def allowed(rule: str, caller: str) -> bool:
    """Whether ``caller`` may pass the check of ``rule``."""
    if rule in ("public", "credentials"):
        return True
    if caller == "none" or rule == "nobody":
        return False
    if rule == "any":
        return True
    if rule == "self":
        return caller == "machine"
    if rule == "machine":
        return caller in ("machine", "other-machine")
    if rule == "Operator+self":
        return caller == "machine" or (caller in RANK and RANK[caller] >= RANK["Operator"])
    if rule == "register":
        return caller in RANK and RANK[caller] >= RANK["Operator"]
    return caller in RANK and RANK[caller] >= RANK[rule]


@pytest.fixture(scope="module")
def callers(vault: VaultServer) -> dict[str, Any]:
    """Tokens of every kind of caller, and the machine the paths name."""
    me = Agent(vault).registered()
    other = Agent(vault).registered()
    tokens = {role: vault.token_for(role) for role in ROLES}
    tokens.update({"none": "", "machine": me.token, "other-machine": other.token})
    return {"tokens": tokens, "machine_id": me.machine_id}


def test_matrix_covers_every_route(vault: VaultServer) -> None:
    schema = vault.ok("GET", "/openapi.json", token="")
    routes = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
    assert routes == set(MATRIX), (sorted(routes - set(MATRIX)), sorted(set(MATRIX) - routes))


def _path(template: str, machine_id: str) -> str:
    method_path = template
    # Removing a machine is tried on a made-up one: allowed callers get 404, nothing is removed.
    destructive = template.endswith("{machine_id}")
    values = {
        "machine_id": NOBODY if destructive else machine_id,
        "name": "config",
        "user_ref": "nobody",
        "item_id": NOBODY,
        "policy_ref": NOBODY,
        "job_id": NOBODY,
        "point_id": NOBODY,
        "alert_id": NOBODY,
    }
    for key, value in values.items():
        method_path = method_path.replace("{" + key + "}", value)
    return method_path


@pytest.mark.parametrize("caller", CALLERS)
def test_every_endpoint_for(caller: str, vault: VaultServer, callers: dict[str, Any]) -> None:
    token = callers["tokens"][caller]
    failures = []
    for (method, template), (rule, body) in MATRIX.items():
        path = _path(template, callers["machine_id"])
        kwargs: dict[str, Any] = {}
        if isinstance(body, bytes):
            kwargs["content"] = body
            path = path.replace("/objects/config", "/objects/not-a-repo-name")
        elif body is not None:
            kwargs["json"] = body
        if template.endswith("/work"):
            kwargs["params"] = {"wait": 0}
        response = vault.request(method, path, token=token, **kwargs)
        payload = response.json() if response.content and method != "HEAD" else None
        code = payload.get("code") if isinstance(payload, dict) else None
        if allowed(rule, caller):
            if response.status_code in (401, 403):
                failures.append(f"{method} {template}: refused {response.status_code} {code}")
        elif caller == "none":
            if response.status_code != 401 or (method != "HEAD" and code != "AuthTokenInvalid"):
                failures.append(f"{method} {template}: expected 401, got {response.status_code} {code}")
        elif rule == "register" and caller in ("machine", "other-machine"):
            if response.status_code != 401:
                failures.append(
                    f"{method} {template}: machine token must not register, got {response.status_code}"
                )
        elif rule == "nobody":
            if response.status_code != 403 or code != "RepoDeleteNotAllowed":
                failures.append(f"{method} {template}: expected 403 RepoDeleteNotAllowed, got {code}")
        elif response.status_code != 403 or (method != "HEAD" and code != "RoleForbidden"):
            failures.append(
                f"{method} {template}: expected 403 RoleForbidden, got {response.status_code} {code}"
            )
    assert not failures, "\n".join(failures)
