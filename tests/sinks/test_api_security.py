"""The API secured as an aggregated API server, over real HTTPS: TLS with certificates made here,
the three identity paths, SubjectAccessReviews and their cache, against a stand-in kube-apiserver."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict

from schemas.vmi import VMIRecord
from sinks.authz import Attributes, request_attributes
from sinks.security import SecurityConfig, SecurityError, check, open_guard
from sinks.serve import start_api
from sinks.store import Store, open_store
from tests import tools
from tests.sinks.pki import CA, Pair, serial_of
from tests.sinks.records import full_record
from tests.sinks.review_standin import ReviewStandIn, Rule, serve_standin
from tests.sinks.stores import upsert

DATA = Path(__file__).parent / "data" / "security"
SUBRESOURCES = "/apis/subresources.kubevirt.io/v1"
GUESTOSINFO = f"{SUBRESOURCES}/namespaces/allowed/virtualmachineinstances/full/guestosinfo"
USERLIST = f"{SUBRESOURCES}/namespaces/allowed/virtualmachineinstances/full/userlist"
CASES = json.loads((DATA / "identity-cases.json").read_text())
ATTRIBUTES = json.loads((DATA / "request-attributes.json").read_text())


@pytest.fixture(autouse=True)
def outside_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests give every setting themselves: a pod's service account must not turn authentication on."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


@pytest.mark.parametrize("case", ATTRIBUTES, ids=[f"{c['method']} {c['path']} {c.get('query', '')}"
                                                  for c in ATTRIBUTES])
def test_request_attributes(case: dict[str, Any]) -> None:
    attributes = request_attributes(case["method"], case["path"], case.get("query", {}))
    path = case["attributes"].get("path", unquote(case["path"]))
    assert attributes == Attributes(**{**case["attributes"], "path": path}), case.get("why", "")


@dataclass
class PKI:
    server_ca: CA
    server: Pair
    client_ca: CA
    proxy_ca: CA
    certs: dict[str, Pair]


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    folder = tmp_path / "pki"
    server_ca, client_ca, proxy_ca, other_ca = (CA(folder, n) for n in ("server", "client", "proxy", "other"))
    return PKI(
        server_ca,
        server_ca.issue("127.0.0.1", server=True, file_name="apiserver"),
        client_ca,
        proxy_ca,
        {
            "proxy": proxy_ca.issue("front-proxy-client"),
            "intruder": proxy_ca.issue("intruder"),
            "alice": client_ca.issue("alice", ("viewers",)),
            "dave": client_ca.issue("dave"),
            "stranger": other_ca.issue("alice", ("viewers",)),
        },
    )


#: What RBAC's `system:discovery` grants every authenticated user, as far as kubectl asks for it here.
DISCOVERY = ("/api", "/apis", "/apis/guestinfo.kubevirt.io/v1alpha1", "/apis/subresources.kubevirt.io/v1",
             "/apis/subresources.kubevirt.io/v1alpha3", "/version")


def rbac() -> list[Rule]:
    """As `kubevirt.io:view` bound in namespace `allowed` to group viewers and user bob; guestinfos readable
    by viewers everywhere and by bob in `allowed`; discovery to everyone authenticated."""
    subresources = {"group": "subresources.kubevirt.io", "resource": "virtualmachineinstances", "namespace": "allowed"}
    guestinfos = {"group": "guestinfo.kubevirt.io", "resource": "guestinfos"}
    return [
        Rule("group:viewers", **subresources),
        Rule("user:bob", **subresources),
        Rule("group:viewers", path="/apis/subresources.kubevirt.io/v1"),
        *(Rule("group:system:authenticated", path=path) for path in DISCOVERY),
        *(Rule("group:viewers", verb=verb, **guestinfos) for verb in ("get", "list", "watch")),
        *(Rule("user:bob", verb=verb, namespace="allowed", **guestinfos) for verb in ("get", "list", "watch")),
    ]


@pytest.fixture
async def standin() -> AsyncIterator[ReviewStandIn]:
    tokens = {"bob-token": {"username": "bob", "uid": "uid-bob", "groups": ["developers", "system:authenticated"]}}
    async for served in serve_standin(ReviewStandIn(tokens=tokens, rules=rbac())):
        yield served


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(f"sqlite://{tmp_path / 'store.db'}")
    for namespace in ("allowed", "secret"):
        await upsert(opened, full_record(namespace, "full"))
    await upsert(opened, rhel_record("allowed", "rhel"))
    try:
        yield opened
    finally:
        await opened.close()


def secured(pki: PKI, standin: ReviewStandIn, tmp_path: Path, **overrides: Any) -> SecurityConfig:
    kubeconfig = str(standin.kubeconfig(tmp_path))
    settings: dict[str, Any] = {
        "tls_cert_file": str(pki.server.cert), "tls_private_key_file": str(pki.server.key),
        "client_ca_file": str(pki.client_ca.cert_file),
        "requestheader_client_ca_file": str(pki.proxy_ca.cert_file),
        "requestheader_allowed_names": ("front-proxy-client",),
        "authentication_kubeconfig": kubeconfig, "authorization_kubeconfig": kubeconfig,
        "cert_dir": str(tmp_path / "certificates"),
    }
    return SecurityConfig.model_validate({**settings, **overrides})


@contextlib.asynccontextmanager
async def serving(store: Store, config: SecurityConfig, host: str = "127.0.0.1") -> AsyncIterator[str]:
    async with open_guard(config, host) as guard:
        runner, port = await start_api(store, host, 0, guard)
        try:
            yield f"{'https' if guard.tls else 'http'}://127.0.0.1:{port}"
        finally:
            await runner.cleanup()


def client_context(pki: PKI, cert: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.server_ca.cert_file))
    if cert is not None:
        pair = pki.certs[cert]
        context.load_cert_chain(pair.cert, pair.key)
    return context


async def call(
    base: str, path: str, context: ssl.SSLContext | None = None, token: str | None = None,
    headers: list[list[str]] | None = None,
) -> tuple[int, bytes]:
    sent = CIMultiDict((name, value) for name, value in headers or [])
    if token:
        sent["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as session,
        session.get(base + path, ssl=context or True, headers=sent) as response,
    ):
        return response.status, await response.read()


@pytest.fixture
async def api(store: Store, pki: PKI, standin: ReviewStandIn, tmp_path: Path) -> AsyncIterator[str]:
    async with serving(store, secured(pki, standin, tmp_path)) as base:
        yield base


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
async def test_identity_paths(api: str, pki: PKI, standin: ReviewStandIn, case: dict[str, Any]) -> None:
    status, body = await call(
        api, case["path"], client_context(pki, case.get("cert")), case.get("token"), case.get("headers")
    )
    assert status == case["status"], body
    if "body" in case:
        assert body == (DATA / case["body"]).read_bytes()
    if "review" in case:
        assert [review["spec"] for review in standin.access_reviews] == [case["review"]]
    if case["status"] == 401 or case["path"] == "/healthz":
        assert standin.access_reviews == [], "a caller nobody identified is never reviewed"


async def test_a_certificate_of_an_unknown_ca_fails_the_handshake(api: str, pki: PKI) -> None:
    with pytest.raises(aiohttp.ClientError):
        await call(api, GUESTOSINFO, client_context(pki, "stranger"))


async def test_a_named_read_with_watch_in_the_query_is_reviewed_as_get(
    api: str, pki: PKI, standin: ReviewStandIn
) -> None:
    standin.rules.append(Rule("user:bob", verb="watch"))  # bob may watch everything, as informer roles do
    secret = GUESTOSINFO.replace("/allowed/", "/secret/") + "?watch=true"
    status, _ = await call(api, secret, client_context(pki, None), "bob-token")
    assert status == 403
    assert standin.access_reviews[-1]["spec"]["resourceAttributes"]["verb"] == "get"


async def test_plain_http_to_the_tls_port_gets_no_answer(api: str) -> None:
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call(api.replace("https://", "http://"), GUESTOSINFO)


async def test_one_review_per_distinct_request_per_ttl(
    store: Store, pki: PKI, standin: ReviewStandIn, tmp_path: Path
) -> None:
    config = secured(pki, standin, tmp_path, authentication_token_webhook_cache_ttl=0.5,
                     authorization_webhook_cache_authorized_ttl=0.5, authorization_webhook_cache_unauthorized_ttl=0.5)
    async with serving(store, config) as base:
        context = client_context(pki, None)
        for _ in range(5):
            assert (await call(base, GUESTOSINFO, context, "bob-token"))[0] == 200
        assert (len(standin.token_reviews), len(standin.access_reviews)) == (1, 1)
        assert (await call(base, USERLIST, context, "bob-token"))[0] == 200  # another request: another review
        assert (len(standin.token_reviews), len(standin.access_reviews)) == (1, 2)
        denied = GUESTOSINFO.replace("/allowed/", "/secret/")
        results = await asyncio.gather(*(call(base, denied, context, "bob-token") for _ in range(20)))
        assert {status for status, _ in results} == {403}
        assert len(standin.access_reviews) == 3, "concurrent asks of one decision share one review"
        await asyncio.sleep(0.6)  # every answer has expired
        assert (await call(base, GUESTOSINFO, context, "bob-token"))[0] == 200
        assert (await call(base, denied, context, "bob-token"))[0] == 403
        assert (len(standin.token_reviews), len(standin.access_reviews)) == (2, 5)


async def test_allowed_and_denied_have_their_own_ttl(
    store: Store, pki: PKI, standin: ReviewStandIn, tmp_path: Path
) -> None:
    config = secured(pki, standin, tmp_path, authorization_webhook_cache_unauthorized_ttl=0)
    async with serving(store, config) as base:
        context = client_context(pki, "dave")
        for _ in range(3):
            assert (await call(base, GUESTOSINFO, context))[0] == 403
        assert len(standin.access_reviews) == 3, "denials kept for 0s are asked again"
        standin.rules.append(Rule("user:dave", group="subresources.kubevirt.io", namespace="allowed"))
        for _ in range(3):
            assert (await call(base, GUESTOSINFO, context))[0] == 200
        assert len(standin.access_reviews) == 4, "the allow is kept for the authorized TTL"


async def test_a_failed_review_is_500_and_never_an_allow(api: str, pki: PKI, standin: ReviewStandIn) -> None:
    standin.failing = True
    status, body = await call(api, GUESTOSINFO, client_context(pki, "alice"))
    assert status == 500
    doc = orjson.loads(body)
    assert (doc["kind"], doc["reason"], doc["code"]) == ("Status", "InternalError", 500)
    assert doc["message"].startswith("Internal error occurred: the authorization review failed: ")
    assert doc["details"]["causes"][0]["message"] in doc["message"]
    assert b"fedora" not in body.lower()
    status, body = await call(api, GUESTOSINFO, client_context(pki, None), "bob-token")
    assert (status, body) == (401, (DATA / "status-unauthorized.json").read_bytes()), "a failed TokenReview"
    standin.failing = False
    assert (await call(api, GUESTOSINFO, client_context(pki, "alice")))[0] == 200, "failures are not kept"


async def test_the_cluster_configmap_supplies_the_cas(
    store: Store, pki: PKI, standin: ReviewStandIn, tmp_path: Path
) -> None:
    standin.configmap = {
        "client-ca-file": pki.client_ca.cert_file.read_text(),
        "requestheader-client-ca-file": pki.proxy_ca.cert_file.read_text(),
        "requestheader-allowed-names": '["front-proxy-client"]',
        "requestheader-username-headers": '["X-Proxied-User"]',
        "requestheader-group-headers": '["X-Proxied-Group"]',
        "requestheader-extra-headers-prefix": '["X-Proxied-Extra-"]',
    }
    config = secured(pki, standin, tmp_path, client_ca_file=None, requestheader_client_ca_file=None,
                     requestheader_allowed_names=())
    async with serving(store, config) as base:
        headers = [["X-Proxied-User", "carol"], ["X-Proxied-Group", "viewers"], ["X-Remote-User", "root"]]
        assert (await call(base, GUESTOSINFO, client_context(pki, "proxy"), headers=headers))[0] == 200
        assert standin.access_reviews[-1]["spec"]["user"] == "carol"
        assert (await call(base, GUESTOSINFO, client_context(pki, "intruder"), headers=headers))[0] == 401
        assert (await call(base, GUESTOSINFO, client_context(pki, "alice")))[0] == 200
    skipped = config.model_copy(update={"authentication_skip_lookup": True})
    async with serving(store, skipped) as base:
        assert (await call(base, GUESTOSINFO, client_context(pki, "proxy"), headers=headers))[0] == 401
        assert (await call(base, GUESTOSINFO, client_context(pki, None), "bob-token"))[0] == 200


def served_serial(port: int, pki: PKI) -> int:
    return serial_of(ssl.get_server_certificate(("127.0.0.1", port), ca_certs=str(pki.server_ca.cert_file)).encode())


async def test_a_rotated_certificate_is_served_without_a_restart(
    store: Store, pki: PKI, standin: ReviewStandIn, tmp_path: Path
) -> None:
    config = secured(pki, standin, tmp_path, cert_reload_interval=0.1)
    async with serving(store, config) as base:
        port = int(base.rsplit(":", 1)[1])
        before = await asyncio.to_thread(served_serial, port, pki)
        assert before == serial_of(pki.server.cert.read_bytes())
        rotated = pki.server_ca.issue("127.0.0.1", server=True, file_name="rotated")
        os.replace(rotated.cert, pki.server.cert)  # the certificate first: new certificate, old key
        await asyncio.sleep(0.5)  # several checks see the half-rotated pair
        assert await asyncio.to_thread(served_serial, port, pki) == before, "the old pair is kept meanwhile"
        assert (await call(base, GUESTOSINFO, client_context(pki, "alice")))[0] == 200
        os.replace(rotated.key, pki.server.key)
        new = serial_of(pki.server.cert.read_bytes())
        for _ in range(50):
            if await asyncio.to_thread(served_serial, port, pki) == new:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the rotated certificate was never served")
        assert (await call(base, GUESTOSINFO, client_context(pki, "alice")))[0] == 200


async def test_without_a_pair_a_self_signed_one_is_made_once(
    store: Store, pki: PKI, standin: ReviewStandIn, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = secured(pki, standin, tmp_path, tls_cert_file=None, tls_private_key_file=None)
    caplog.set_level(logging.INFO, logger="sinks.tls")
    serials = []
    for _ in range(2):
        async with serving(store, config) as base:
            port = int(base.rsplit(":", 1)[1])
            pem = await asyncio.to_thread(ssl.get_server_certificate, ("127.0.0.1", port))
            serials.append(serial_of(pem.encode()))
            status, _ = await call(base, "/healthz", ssl.create_default_context(cafile=str(
                tmp_path / "certificates" / "apiserver.crt")))
            assert status == 200, "the self-signed pair is valid for 127.0.0.1"
    assert serials[0] == serials[1] == serial_of((tmp_path / "certificates" / "apiserver.crt").read_bytes())
    made = [r for r in caplog.records if "generated a self-signed serving certificate" in r.getMessage()]
    assert len(made) == 1


OPEN_RULES = [
    ("127.0.0.1", {}, None),
    ("localhost", {}, None),
    ("::1", {}, None),
    ("0.0.0.0", {}, "with no authentication"),
    ("10.1.2.3", {}, "with no authentication"),
    ("0.0.0.0", {"insecure_no_auth": True}, None),
    ("0.0.0.0", {"authentication_kubeconfig": "KUBECONFIG"}, "nothing can authorize"),
    ("0.0.0.0", {"authentication_kubeconfig": "KUBECONFIG", "authorization_kubeconfig": "KUBECONFIG"}, None),
    ("0.0.0.0", {"insecure_no_auth": True, "authentication_kubeconfig": "KUBECONFIG",
                 "authorization_kubeconfig": "KUBECONFIG"}, "contradicts"),
    ("127.0.0.1", {"tls_cert_file": "CERT"}, "go together"),
    ("127.0.0.1", {"authentication_kubeconfig": "/nonexistent", "authorization_kubeconfig": "KUBECONFIG"},
     "no such file"),
]


@pytest.mark.parametrize(("host", "settings", "error"), OPEN_RULES)
def test_open_only_on_purpose(
    host: str, settings: dict[str, Any], error: str | None, pki: PKI, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    values = {k: {"KUBECONFIG": str(kubeconfig), "CERT": str(pki.server.cert)}.get(v, v) if isinstance(v, str) else v
              for k, v in settings.items()}
    config = SecurityConfig.model_validate(values)
    if error is None:
        check(config, host)
    else:
        with pytest.raises(SecurityError, match=error):
            check(config, host)


async def test_insecure_no_auth_is_a_warning_and_serves_tls(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = SecurityConfig(insecure_no_auth=True, cert_dir=str(tmp_path / "certificates"))
    with caplog.at_level(logging.INFO, logger="sinks.security"):
        async with serving(store, config, host="0.0.0.0") as base:
            assert base.startswith("https://")
            status, _ = await call(base, GUESTOSINFO, ssl.create_default_context(
                cafile=str(tmp_path / "certificates" / "apiserver.crt")))
            assert status == 200
    assert any(r.levelno == logging.WARNING and "--insecure-no-auth" in r.getMessage() for r in caplog.records)


def kubeconfig_for(base: str, pki: PKI, folder: Path, token: str | None = None, cert: str | None = None) -> Path:
    user: dict[str, str] = {"token": token} if token else {
        "client-certificate": str(pki.certs[str(cert)].cert), "client-key": str(pki.certs[str(cert)].key)
    }
    path = folder / f"kubeconfig-{token or cert}"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "guestinfo",
        "clusters": [{"name": "guestinfo",
                      "cluster": {"server": base, "certificate-authority": str(pki.server_ca.cert_file)}}],
        "users": [{"name": "caller", "user": user}],
        "contexts": [{"name": "guestinfo", "context": {"cluster": "guestinfo", "user": "caller"}}],
    }))
    return path


async def kubectl(kubeconfig: Path, *args: str) -> tuple[int, bytes, bytes]:
    process = await asyncio.create_subprocess_exec(
        tools.kubectl(), "--kubeconfig", str(kubeconfig), "--cache-dir", str(kubeconfig.parent / "cache"), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HOME": str(kubeconfig.parent)},
    )
    stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout, stderr


async def test_kubectl_with_a_token_and_with_a_client_certificate(api: str, pki: PKI, tmp_path: Path) -> None:
    direct = (await call(api, GUESTOSINFO, client_context(pki, "alice")))[1]
    for credentials in ({"token": "bob-token"}, {"cert": "alice"}):
        rc, out, err = await kubectl(kubeconfig_for(api, pki, tmp_path, **credentials), "get", "--raw", GUESTOSINFO)
        assert (rc, out) == (0, direct), err
    rc, out, err = await kubectl(kubeconfig_for(api, pki, tmp_path, token="bob-token"), "get", "--raw",
                                 GUESTOSINFO.replace("/allowed/", "/secret/"))
    assert rc == 1 and out == b""
    assert err.decode().strip() == (
        'Error from server (Forbidden): virtualmachineinstances.subresources.kubevirt.io "full" is forbidden: '
        'User "bob" cannot get resource "virtualmachineinstances/guestosinfo" in API group '
        '"subresources.kubevirt.io" in the namespace "secret"'
    )
    rc, _, err = await kubectl(kubeconfig_for(api, pki, tmp_path, token="forged-token"), "get", "--raw", GUESTOSINFO)
    assert rc == 1 and "Unauthorized" in err.decode()


def rhel_record(namespace: str, name: str, hostname: str = "rhel.example", revision: int = 1) -> VMIRecord:
    record = full_record(namespace, name, revision)
    os_info = record.status.guest_os_info.model_copy(update={"id": "rhel", "pretty_name": "RHEL 9.4"})
    return record.model_copy(update={
        "status": record.status.model_copy(update={"guest_os_info": os_info}),
        "guest_agent_info": record.guest_agent_info.model_copy(update={"hostname": hostname}),
    })


def table_lines(out: bytes) -> list[list[str]]:
    return [line.split() for line in out.decode().splitlines()]


async def test_kubectl_get_gi_lists_and_filters_what_rbac_allows(api: str, pki: PKI, tmp_path: Path) -> None:
    alice = kubeconfig_for(api, pki, tmp_path, cert="alice")
    rc, out, err = await kubectl(alice, "get", "gi", "-A")
    assert rc == 0, err
    lines = table_lines(out)
    assert lines[0][:5] == ["NAMESPACE", "NAME", "NODE", "AGENT", "OS"]
    assert [line[:3] for line in lines[1:]] == [
        ["allowed", "full", "node-a"], ["allowed", "rhel", "node-a"], ["secret", "full", "node-a"]]
    rc, out, err = await kubectl(alice, "get", "gi", "-A", "--field-selector", "status.guestOSInfo.id=fedora")
    assert rc == 0, err
    assert [line[:2] for line in table_lines(out)[1:]] == [["allowed", "full"], ["secret", "full"]]
    rc, out, err = await kubectl(alice, "get", "guestinfos.guestinfo.kubevirt.io", "rhel", "-n", "allowed", "-o",
                                 "jsonpath={.status.guestOSInfo.prettyName}")
    assert (rc, out) == (0, b"RHEL 9.4"), err
    bob = kubeconfig_for(api, pki, tmp_path, token="bob-token")
    rc, out, err = await kubectl(bob, "get", "gi", "-n", "allowed", "-o", "name")
    assert (rc, out.decode().split()) == (0, ["guestinfo.guestinfo.kubevirt.io/full",
                                              "guestinfo.guestinfo.kubevirt.io/rhel"]), err
    rc, _, err = await kubectl(bob, "get", "gi", "-A")
    assert rc == 1 and (
        'guestinfos.guestinfo.kubevirt.io is forbidden: User "bob" cannot list resource "guestinfos" in API group '
        '"guestinfo.kubevirt.io" at the cluster scope') in err.decode()


async def test_kubectl_get_gi_watch(api: str, store: Store, pki: PKI, tmp_path: Path) -> None:
    alice = kubeconfig_for(api, pki, tmp_path, cert="alice")
    process = await asyncio.create_subprocess_exec(
        tools.kubectl(), "--kubeconfig", str(alice), "--cache-dir", str(tmp_path / "cache"), "get", "gi", "-n",
        "allowed", "-w", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert process.stdout is not None
    try:
        async def line() -> list[str]:
            return (await asyncio.wait_for(process.stdout.readline(), 20)).decode().split()  # type: ignore[union-attr]

        assert (await line())[:2] == ["NAME", "NODE"]
        assert [(await line())[0] for _ in range(2)] == ["full", "rhel"]
        await upsert(store, rhel_record("allowed", "rhel", hostname="renamed", revision=2))
        changed = await line()
        assert changed[0] == "rhel" and "renamed" in changed
        await upsert(store, rhel_record("allowed", "new-vm"))
        assert (await line())[0] == "new-vm"
    finally:
        process.kill()
        await process.wait()
