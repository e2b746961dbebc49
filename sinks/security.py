"""The REST API's security settings and the guard every request passes: TLS, authentication, authorization.

The flags and their behaviour are those of Kubernetes' aggregated API servers (k8s.io/apiserver's
delegated authentication and authorization; docs/api-security.md). The rules of when the API is open:

- on a loopback address with no authentication setting, it is open (plain HTTP unless a certificate is
  given): the demo and local tools;
- authentication is on when a client CA, a requestheader CA, an authentication kubeconfig is given, or
  when running in a cluster (the in-cluster account); it then needs an authorizer too (an
  authorization kubeconfig or the in-cluster account), else the server refuses to start;
- on any other address without authentication it refuses to start, unless `insecure_no_auth` says so
  on purpose (logged at WARNING);
- off loopback, or with authentication on, it serves TLS: the given pair, or a self-signed one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from cryptography import x509
from pydantic import BaseModel, ConfigDict, Field

from sinks.authn import CLIENT_CA, REQUESTHEADER, Authenticator, RequestHeaderRules, TokenCache
from sinks.authz import Authorizer, forbidden_details, forbidden_message, request_attributes
from sinks.kube_client import in_cluster
from sinks.kube_status import Handler, status_response
from sinks.reviews import KubeReviews, ReviewError, open_reviews
from sinks.tls import ClientCertificates, ServingTLS, check_pair, peer_der, read_ca_bundle, self_signed_pair

log = logging.getLogger(__name__)


class SecurityError(ValueError):
    """Security settings the API cannot start with; the message says which and why."""


class SecurityConfig(BaseModel):
    """The API's TLS, authentication and authorization settings (flag names as Kubernetes' servers)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tls_cert_file: str | None = Field(default=None, description="Serving certificate (PEM); reloaded on change.")
    tls_private_key_file: str | None = Field(default=None, description="Key of the serving certificate (PEM).")
    cert_dir: str | None = Field(
        default=None, description="Where a self-signed pair is made when TLS is on and no pair is given."
    )
    cert_reload_interval: float = Field(default=10.0, gt=0, description="Seconds between checks of the pair's files.")
    client_ca_file: str | None = Field(default=None, description="CA of client certificates: CN = user, O = groups.")
    requestheader_client_ca_file: str | None = Field(default=None, description="CA of the front proxy's certificate.")
    requestheader_allowed_names: tuple[str, ...] = Field(
        default=(), description="Common names the front proxy may have; empty: any signed by its CA."
    )
    requestheader_username_headers: tuple[str, ...] = ("X-Remote-User",)
    requestheader_group_headers: tuple[str, ...] = ("X-Remote-Group",)
    requestheader_extra_headers_prefix: tuple[str, ...] = ("X-Remote-Extra-",)
    authentication_kubeconfig: str | None = Field(default=None, description="Where TokenReviews go.")
    authentication_token_webhook_cache_ttl: float = Field(default=10.0, ge=0)
    authentication_skip_lookup: bool = Field(
        default=False, description="Do not read kube-system/extension-apiserver-authentication."
    )
    authorization_kubeconfig: str | None = Field(default=None, description="Where SubjectAccessReviews go.")
    authorization_webhook_cache_authorized_ttl: float = Field(default=10.0, ge=0)
    authorization_webhook_cache_unauthorized_ttl: float = Field(default=10.0, ge=0)
    authorization_always_allow_paths: tuple[str, ...] = ("/healthz", "/readyz", "/livez")
    insecure_no_auth: bool = Field(default=False, description="Serve without authentication off loopback.")

    @property
    def authentication_asked(self) -> bool:
        """True when a setting (or the cluster around us) turns authentication on."""
        return bool(
            self.client_ca_file or self.requestheader_client_ca_file or self.authentication_kubeconfig
            or self.authorization_kubeconfig or in_cluster()
        )

    @property
    def authorization_source(self) -> bool:
        return bool(self.authorization_kubeconfig) or in_cluster()


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses; every other name or address counts as reachable."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serves_tls(config: SecurityConfig, host: str) -> bool:
    """Whether the API on `host` serves HTTPS: a pair is given, authentication is on, or it is off loopback."""
    return bool(config.tls_cert_file) or config.authentication_asked or not is_loopback(host)


def check(config: SecurityConfig, host: str) -> None:
    """Refuse settings the API cannot start with, before anything starts (a `SecurityError` saying why).

    Reads every file named (pair and CA bundles), as the server will; the kubeconfigs are read when
    the server starts.
    """
    if (config.tls_cert_file is None) != (config.tls_private_key_file is None):
        raise SecurityError("--tls-cert-file and --tls-private-key-file go together: give both or neither")
    if config.tls_cert_file and config.tls_private_key_file:
        check_pair(config.tls_cert_file, config.tls_private_key_file)
    for path, flag in (
        (config.client_ca_file, "--client-ca-file"),
        (config.requestheader_client_ca_file, "--requestheader-client-ca-file"),
    ):
        if path:
            read_ca_bundle(path, flag)
    for path, flag in (
        (config.authentication_kubeconfig, "--authentication-kubeconfig"),
        (config.authorization_kubeconfig, "--authorization-kubeconfig"),
    ):
        if path and not Path(path).is_file():
            raise SecurityError(f"{flag} {path!r}: no such file")
    if config.insecure_no_auth and config.authentication_asked:
        raise SecurityError("--insecure-no-auth contradicts the authentication settings given: drop one")
    if config.authentication_asked and not config.authorization_source:
        raise SecurityError(
            "authentication is on but nothing can authorize: give --authorization-kubeconfig (or run in a cluster)"
        )
    if not config.authentication_asked and not config.insecure_no_auth and not is_loopback(host):
        raise SecurityError(
            f"the API would listen on {host} with no authentication: anyone reaching the port could read every "
            "VMI's guest data. Give --client-ca-file, --requestheader-client-ca-file or "
            "--authentication-kubeconfig (with --authorization-kubeconfig), listen on 127.0.0.1, "
            "or pass --insecure-no-auth to serve it open on purpose"
        )


@dataclass
class Guard:
    """What every request passes before its handler; `open` lets everything through."""

    authenticator: Authenticator | None = None
    authorizer: Authorizer | None = None
    always_allow: tuple[str, ...] = ("/healthz", "/readyz", "/livez")
    tls: ServingTLS | None = None
    reviews: list[KubeReviews] = field(default_factory=list)

    @property
    def open(self) -> bool:
        return self.authenticator is None

    async def close(self) -> None:
        """Cancel the reviews in flight, then close the review clients."""
        if self.authenticator is not None and self.authenticator.tokens is not None:
            await self.authenticator.tokens.cache.close()
        if self.authorizer is not None:
            await self.authorizer.cache.close()
        await asyncio.gather(*(reviews.close() for reviews in self.reviews))

    def __post_init__(self) -> None:
        # As k8s.io/apiserver: leading slashes do not count, and an entry ending in `*` is a prefix.
        entries = [allowed.removeprefix("/") for allowed in self.always_allow]
        self._allowed_paths = frozenset(entry for entry in entries if not entry.endswith("*"))
        self._allowed_prefixes = tuple(entry[:-1] for entry in entries if entry.endswith("*"))

    def always_allowed(self, path: str) -> bool:
        path = path.removeprefix("/")
        return path in self._allowed_paths or path.startswith(self._allowed_prefixes)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """401 for nobody, 403 for a caller the cluster does not allow, 500 when a review fails; else on."""
        if self.authenticator is None or self.always_allowed(request.path):
            return await handler(request)
        identity = await self.authenticator.authenticate(peer_der(request.transport), request.headers)
        if identity is None:
            return status_response(401, "Unauthorized", "Unauthorized")
        attributes = request_attributes(request.method, request.raw_path.partition("?")[0], request.query)
        try:
            if self.authorizer is None:  # never so after open_guard; refuse rather than allow
                raise ReviewError("no authorizer is configured")
            decision = await self.authorizer.authorize(identity, attributes)
        except ReviewError as exc:
            log.error("SubjectAccessReview for %s %s failed: %s", identity.user, request.path, exc)
            message = f"Internal error occurred: the authorization review failed: {exc}"
            return status_response(500, "InternalError", message, {"causes": [{"message": str(exc)}]})
        if not decision.allowed:
            message = forbidden_message(identity.user, attributes, decision.reason)
            return status_response(403, "Forbidden", message, forbidden_details(attributes))
        return await handler(request)


def _json_list(data: dict[str, str], key: str) -> tuple[str, ...] | None:
    value = data.get(key)
    if not value:
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    return tuple(str(item) for item in parsed) if isinstance(parsed, list) else None


def _pem_certificates(data: dict[str, str], key: str) -> list[x509.Certificate]:
    value = data.get(key)
    if not value:
        return []
    try:
        return x509.load_pem_x509_certificates(value.encode())
    except ValueError:
        log.warning("extension-apiserver-authentication: %s holds no PEM certificate; ignored", key)
        return []


async def _lookup(
    config: SecurityConfig, reviews: KubeReviews | None
) -> tuple[dict[str, list[x509.Certificate]], RequestHeaderRules]:
    """The CA bundles and front-proxy rules: from the flags, completed from the cluster's ConfigMap (the rules
    apply only with a requestheader bundle: no other certificate is ever sorted into it)."""
    bundles: dict[str, list[x509.Certificate]] = {}
    if config.client_ca_file:
        bundles[CLIENT_CA] = read_ca_bundle(config.client_ca_file, "--client-ca-file")
    if config.requestheader_client_ca_file:
        bundles[REQUESTHEADER] = read_ca_bundle(config.requestheader_client_ca_file, "--requestheader-client-ca-file")
    rules = RequestHeaderRules(
        config.requestheader_allowed_names, config.requestheader_username_headers,
        config.requestheader_group_headers, config.requestheader_extra_headers_prefix,
    )
    complete = CLIENT_CA in bundles and REQUESTHEADER in bundles
    if complete or config.authentication_skip_lookup or reviews is None:
        return bundles, rules
    data = await reviews.authentication_configmap()
    if data is None:
        log.warning("kube-system/extension-apiserver-authentication not found: only the CA flags given are trusted")
        return bundles, rules
    # As k8s.io/apiserver: each CA not given by a flag is taken from the ConfigMap.
    if CLIENT_CA not in bundles and (client_cas := _pem_certificates(data, "client-ca-file")):
        bundles[CLIENT_CA] = client_cas
    if REQUESTHEADER not in bundles and (proxy_cas := _pem_certificates(data, "requestheader-client-ca-file")):
        bundles[REQUESTHEADER] = proxy_cas
        rules = RequestHeaderRules(
            _json_list(data, "requestheader-allowed-names") or (),
            _json_list(data, "requestheader-username-headers") or rules.username_headers,
            _json_list(data, "requestheader-group-headers") or rules.group_headers,
            _json_list(data, "requestheader-extra-headers-prefix") or rules.extra_prefixes,
        )
    log.info("read kube-system/extension-apiserver-authentication: trusting %s", ", ".join(bundles) or "no CA")
    return bundles, rules


def _serving_pair(config: SecurityConfig, host: str) -> tuple[Path, Path]:
    if config.tls_cert_file and config.tls_private_key_file:
        return Path(config.tls_cert_file), Path(config.tls_private_key_file)
    if config.cert_dir is None:
        raise SecurityError("TLS is on but there is no --tls-cert-file and no folder for a self-signed pair")
    return self_signed_pair(Path(config.cert_dir), host)


@contextlib.asynccontextmanager
async def open_guard(config: SecurityConfig, host: str) -> AsyncIterator[Guard]:
    """The guard (and the TLS context) for an API on `host`, its review clients closed on exit."""
    check(config, host)
    guard = Guard(always_allow=config.authorization_always_allow_paths)
    try:
        if config.authentication_asked:
            await _secure(guard, config)
        elif config.insecure_no_auth and not is_loopback(host):
            log.warning("--insecure-no-auth: the API on %s serves every VMI's guest data to anyone", host)
        else:
            log.info("the API on %s is open (loopback, no authentication settings)", host)
        certificates = guard.authenticator.certificates if guard.authenticator else None
        bundles = certificates.bundles if certificates else {}
        if serves_tls(config, host):
            cert_file, key_file = _serving_pair(config, host)
            guard.tls = ServingTLS(cert_file, key_file, [ca for cas in bundles.values() for ca in cas])
        watcher = (
            asyncio.create_task(guard.tls.watch(config.cert_reload_interval), name="serving-certificate")
            if guard.tls is not None
            else None
        )
        try:
            yield guard
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
    finally:
        await guard.close()


async def _secure(guard: Guard, config: SecurityConfig) -> None:
    try:
        authentication = await open_reviews(config.authentication_kubeconfig, "TokenReview")
        if authentication is not None:
            guard.reviews.append(authentication)
        authorization = await open_reviews(config.authorization_kubeconfig, "SubjectAccessReview")
    except ReviewError as exc:  # a kubeconfig that cannot be used: configuration, not an outage
        raise SecurityError(str(exc)) from None
    if authorization is None:  # check() made sure there is a source
        raise SecurityError("nothing can authorize: give --authorization-kubeconfig (or run in a cluster)")
    guard.reviews.append(authorization)
    bundles, rules = await _lookup(config, authentication)
    tokens = (
        TokenCache(authentication.token_review, config.authentication_token_webhook_cache_ttl)
        if authentication is not None
        else None
    )
    guard.authenticator = Authenticator(ClientCertificates(bundles) if bundles else None, rules, tokens)
    guard.authorizer = Authorizer(
        authorization.access_review,
        config.authorization_webhook_cache_authorized_ttl,
        config.authorization_webhook_cache_unauthorized_ttl,
    )
    ways = (("front proxy", REQUESTHEADER in bundles), ("client certificates", CLIENT_CA in bundles),
            ("bearer tokens", tokens is not None))
    paths = [name for name, on in ways if on]
    log.info("API authentication: %s; authorization: SubjectAccessReview", ", ".join(paths) or "nothing (all 401)")
