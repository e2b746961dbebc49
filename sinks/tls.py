"""TLS of the REST API: the serving certificate (given, or self-signed), its rotation, and client certificates.

As Kubernetes' aggregated API servers do:
- `--tls-cert-file`/`--tls-private-key-file` name the serving pair; when the files change on disk
  (a rotated certificate), the next handshakes use the new pair, without a restart;
- without them, a self-signed pair is made once in the state dir (`certificates/apiserver.crt|key`)
  and reused on later starts while it is valid for the listen host;
- a client certificate is asked for but not required; when one is sent, the handshake verifies it
  against the union of the client CA bundles (`--client-ca-file`, `--requestheader-client-ca-file`),
  and `issuing_ca` tells afterwards which bundle signed it (CA files are read at start).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
import ssl
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)


class CertificateError(ValueError):
    """A certificate, key or CA file that cannot be used; the message says which and why."""


def read_ca_bundle(path: str, flag: str) -> list[x509.Certificate]:
    """The certificates of a PEM CA bundle; a missing, unreadable or empty file is a `CertificateError`."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CertificateError(f"{flag} {path!r}: cannot read it: {exc.strerror or exc}") from None
    try:
        with warnings.catch_warnings():  # old CAs of system bundles carry serials RFC 5280 now disallows
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateError(f"{flag} {path!r}: no PEM certificate in it") from None
    return certificates


def check_pair(cert_file: str, key_file: str) -> None:
    """Load the pair once, as the server will; a bad pair is a `CertificateError` naming the flags."""
    for path, flag in ((cert_file, "--tls-cert-file"), (key_file, "--tls-private-key-file")):
        if not os.access(path, os.R_OK):
            raise CertificateError(f"{flag} {path!r}: cannot read it (missing, or no permission)")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(
            f"--tls-cert-file {cert_file!r} / --tls-private-key-file {key_file!r}: not a usable "
            f"certificate and key: {getattr(exc, 'reason', None) or exc}"
        ) from None


def _host_names(host: str) -> tuple[list[x509.GeneralName], str]:
    """The subject alternative names of a self-signed certificate for `host`, and its common name."""
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host:
            names.insert(0, x509.DNSName(host))
        return names, host or "localhost"
    if not address.is_unspecified and str(address) != "127.0.0.1":
        names.insert(0, x509.IPAddress(address))
    return names, "localhost" if address.is_unspecified else str(address)


def _valid_for(cert_file: Path, names: list[x509.GeneralName]) -> bool:
    try:
        certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
        present = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    fresh = certificate.not_valid_after_utc > datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    return fresh and all(name in present for name in names)


def self_signed_pair(directory: Path, host: str) -> tuple[Path, Path]:
    """A self-signed serving pair for `host` in `directory` (`apiserver.crt`, `apiserver.key`).

    An existing pair valid for `host` (and not about to expire) is reused; otherwise a new one is made
    (ECDSA P-256, one year) and logged, as Kubernetes' aggregated servers do.
    """
    cert_file, key_file = directory / "apiserver.crt", directory / "apiserver.key"
    names, common_name = _host_names(host)
    if key_file.exists() and _valid_for(cert_file, names):
        return cert_file, key_file
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name}@guestinfo")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(key_pem)
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    log.info("generated a self-signed serving certificate for %s in %s", common_name, cert_file)
    return cert_file, key_file


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


class ServingTLS:
    """The server's TLS: `context` is given to the server once; each handshake is switched (in its SNI
    callback, which OpenSSL runs for every ClientHello) to `current`, the context of the newest pair
    that loaded. A changed pair is loaded into a fresh context, so a half-rotated pair (new certificate,
    old key) fails to load there and the pair before it keeps being served."""

    def __init__(self, cert_file: Path, key_file: Path, client_cas: list[x509.Certificate]) -> None:
        self.cert_file, self.key_file = cert_file, key_file
        self._bundle = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in client_cas)
        self.context = self.current = self._load()
        self.context.sni_callback = self._switch  # stays on the first context, which every handshake starts on
        self._stamps = (_stamp(cert_file), _stamp(key_file))

    def _load(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        if self._bundle:
            context.load_verify_locations(cadata=self._bundle)
            context.verify_mode = ssl.CERT_OPTIONAL
        return context

    def _switch(self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext) -> None:
        connection.context = self.current

    def reload_if_changed(self) -> bool:
        """Load the pair again if either file changed; a pair that does not load yet is retried next time."""
        stamps = (_stamp(self.cert_file), _stamp(self.key_file))
        if stamps == self._stamps:
            return False
        try:
            self.current = self._load()
        except (OSError, ssl.SSLError) as exc:
            log.warning("serving certificate %s changed but cannot be loaded yet: %s", self.cert_file, exc)
            return False
        self._stamps = stamps
        log.info("serving certificate %s reloaded", self.cert_file)
        return True

    async def watch(self, interval: float) -> None:
        """Check the files every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            self.reload_if_changed()


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """What the API uses of a verified client certificate."""

    issuer: str  #: which CA bundle signed it: "client-ca" or "requestheader"
    common_name: str
    organizations: tuple[str, ...]


def _issued_by(certificate: x509.Certificate, cas: list[x509.Certificate]) -> bool:
    for ca in cas:
        try:
            certificate.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError):  # not this CA's signature, or another key type
            continue
        return True
    return False


class ClientCertificates:
    """Tells which CA bundle signed a client certificate the handshake already verified.

    The handshake checked the chain against both bundles at once; this only sorts the leaf into one
    of them (signed directly by a CA of the bundle). Results are kept per certificate (bounded).
    """

    def __init__(self, bundles: dict[str, list[x509.Certificate]], size: int = 4096) -> None:
        self.bundles = bundles
        self.size = size
        self._known: OrderedDict[bytes, ClientCertificate | None] = OrderedDict()

    def identify(self, der: bytes) -> ClientCertificate | None:
        if der in self._known:
            self._known.move_to_end(der)
            return self._known[der]
        found = self._classify(der)
        self._known[der] = found
        while len(self._known) > self.size:
            self._known.popitem(last=False)
        return found

    def _classify(self, der: bytes) -> ClientCertificate | None:
        try:
            certificate = x509.load_der_x509_certificate(der)
        except ValueError:
            return None
        for issuer, cas in self.bundles.items():
            if _issued_by(certificate, cas):
                subject = certificate.subject
                names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
                orgs = subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
                return ClientCertificate(
                    issuer,
                    str(names[0].value) if names else "",
                    tuple(str(org.value) for org in orgs),
                )
        return None


def peer_der(transport: asyncio.BaseTransport | None) -> bytes | None:
    """The DER bytes of the client certificate the TLS handshake verified on this connection, if any."""
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der: bytes | None = ssl_object.getpeercert(binary_form=True)
    return der
