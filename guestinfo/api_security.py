"""The REST API's security flags (TLS, authentication, authorization): their names, help and defaults
are those of Kubernetes' aggregated API servers. `serve` reads them; `run` checks them and passes them
through to its `serve` process unchanged."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from guestinfo.config import UsageError

if TYPE_CHECKING:
    from sinks.security import SecurityConfig

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str, flag: str) -> float:
    """A Go duration (`10s`, `1m30s`, `500ms`) or plain seconds, as seconds."""
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION.findall(text)
        if not parts or "".join(number + unit for number, unit in parts) != text:
            raise UsageError(f"{flag} {value!r}: expected a duration such as 10s, 1m or 500ms") from None
        seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if seconds < 0:
        raise UsageError(f"{flag} {value!r}: a duration cannot be negative")
    return seconds


def watch_history(value: str) -> float:
    """`--watch-history`: a duration of at least one second."""
    seconds = parse_duration(value, "--watch-history")
    if seconds < 1:
        raise UsageError(f"--watch-history {value!r}: must be at least 1s")
    return seconds


@dataclass(frozen=True)
class Flag:
    """One security flag: `kind` is `file`, `list` (comma-separated, repeatable), `duration` or `switch`."""

    name: str
    kind: str
    help: str

    @property
    def field(self) -> str:
        return self.name.removeprefix("--").replace("-", "_")


FLAGS = (
    Flag("--tls-cert-file", "file", "serving certificate (PEM); a rotated file is picked up without a restart. "
         "Without it, TLS uses a self-signed pair made in STATE_DIR/certificates"),
    Flag("--tls-private-key-file", "file", "key of --tls-cert-file (PEM)"),
    Flag("--client-ca-file", "file", "trust client certificates signed by this CA: CN is the user, O the groups"),
    Flag("--requestheader-client-ca-file", "file",
         "trust the front proxy's certificate signed by this CA, and then its X-Remote-* headers"),
    Flag("--requestheader-allowed-names", "list", "common names the front proxy may have (empty: any)"),
    Flag("--requestheader-username-headers", "list", "headers holding the user name (default X-Remote-User)"),
    Flag("--requestheader-group-headers", "list", "headers holding the groups (default X-Remote-Group)"),
    Flag("--requestheader-extra-headers-prefix", "list",
         "prefixes of headers holding extra user attributes (default X-Remote-Extra-)"),
    Flag("--authentication-kubeconfig", "file",
         "kubeconfig of the cluster that reviews bearer tokens (TokenReview); default in a cluster: its account"),
    Flag("--authentication-token-webhook-cache-ttl", "duration", "how long a token review is kept (default 10s)"),
    Flag("--authentication-skip-lookup", "switch",
         "do not read the CAs from kube-system/extension-apiserver-authentication"),
    Flag("--authorization-kubeconfig", "file",
         "kubeconfig of the cluster that reviews access (SubjectAccessReview); default in a cluster: its account"),
    Flag("--authorization-webhook-cache-authorized-ttl", "duration", "how long an allow is kept (default 10s)"),
    Flag("--authorization-webhook-cache-unauthorized-ttl", "duration", "how long a deny is kept (default 10s)"),
    Flag("--authorization-always-allow-paths", "list",
         "paths served without authentication or authorization (default /healthz,/readyz,/livez)"),
    Flag("--insecure-no-auth", "switch",
         "serve off loopback with no authentication: anyone reaching the port reads all guest data"),
)


def add_security_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "API security",
        "TLS, authentication (front proxy, client certificates, bearer tokens) and authorization "
        "(SubjectAccessReview), as Kubernetes' aggregated API servers. On 127.0.0.1 with none of these the API "
        "is open; on any other address it needs authentication or --insecure-no-auth.",
    )
    for flag in FLAGS:
        if flag.kind == "switch":
            group.add_argument(flag.name, action="store_true", help=flag.help)
        elif flag.kind == "list":
            group.add_argument(flag.name, action="append", metavar="A[,B...]", help=flag.help)
        elif flag.kind == "duration":
            group.add_argument(flag.name, metavar="DURATION", help=flag.help)
        else:
            group.add_argument(flag.name, metavar="PATH", help=flag.help)


def security_config(args: argparse.Namespace, host: str) -> SecurityConfig:
    """The flags as a checked `SecurityConfig` for an API on `host`; bad values are a `UsageError`."""
    # Imported here: the Kubernetes client behind it costs every other command (a collector) a second.
    from sinks.security import SecurityConfig, SecurityError, check

    values: dict[str, object] = {"cert_dir": str((Path(args.state_dir) / "certificates").absolute())}
    for flag in FLAGS:
        value = getattr(args, flag.field)
        if value is None or value is False:
            continue
        if flag.kind == "list":
            value = tuple(item.strip() for entry in value for item in entry.split(",") if item.strip())
        elif flag.kind == "duration":
            value = parse_duration(value, flag.name)
        elif flag.kind == "file":
            value = str(Path(value).absolute())
        values[flag.field] = value
    config = SecurityConfig.model_validate(values)
    try:
        check(config, host)
    except (SecurityError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return config


def security_argv(args: argparse.Namespace) -> list[str]:
    """The security flags given, as a command line for a `serve` process (files made absolute)."""
    argv: list[str] = []
    for flag in FLAGS:
        value = getattr(args, flag.field)
        if value is None or value is False:
            continue
        if flag.kind == "switch":
            argv.append(flag.name)
        elif flag.kind == "list":
            for entry in value:
                argv += [flag.name, entry]
        elif flag.kind == "file":
            argv += [flag.name, str(Path(value).absolute())]
        else:
            argv += [flag.name, value]
    return argv
