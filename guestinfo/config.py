"""Command-line values that need parsing, with errors a person can act on."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from schemas.events import split_vmi_key

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class UsageError(ValueError):
    """A command-line value that cannot be used; the message says which and why."""


#: The Kafka engines `broker` and `run` can start (`guestinfo.engines`).
ENGINES = ("tansu", "kafka")


class Listen(BaseModel):
    model_config = ConfigDict(frozen=True)
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_listen(value: str, flag: str = "--api-listen") -> Listen:
    """`HOST:PORT` (or `[IPv6]:PORT`) for `flag`."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"{flag} {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return Listen(host=host.strip("[]"), port=int(port))


def parse_agent_socket(value: str) -> tuple[str, str]:
    """`NAMESPACE/NAME=PATH` for --agent-socket; returns (`namespace/name`, absolute path)."""
    key, sep, path = value.partition("=")
    identity = split_vmi_key(key)
    if not sep or identity is None or not path:
        raise UsageError(f"--agent-socket {value!r}: expected NAMESPACE/NAME=PATH, e.g. default/demo=/run/qga.sock")
    namespace, name = identity
    for part, what in ((namespace, "namespace"), (name, "name")):
        if not _NAME.match(part):
            raise UsageError(f"--agent-socket {value!r}: {what} {part!r} is not a valid Kubernetes name")
    return f"{namespace}/{name}", str(Path(path).absolute())


def parse_bootstrap_servers(value: str) -> str:
    """`HOST:PORT[,HOST:PORT...]` for --bootstrap-servers."""
    servers = [s.strip() for s in value.split(",") if s.strip()]
    if not servers:
        raise UsageError("--bootstrap-servers is empty")
    for server in servers:
        host, sep, port = server.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise UsageError(f"--bootstrap-servers {value!r}: {server!r} is not HOST:PORT")
    return ",".join(servers)


def store_url_for(state_dir: Path) -> str:
    return f"sqlite:///{(state_dir / 'guestinfo.db').absolute()}"


def checked_store_url(value: str | None, state_dir: Path) -> str:
    """--store, or SQLite in the state dir; a URL no backend takes is a `UsageError` before anything starts."""
    from sinks.store import StoreError, check_url

    url = value or store_url_for(state_dir)
    try:
        check_url(url)
    except StoreError as exc:
        raise UsageError(f"--store: {exc}") from None
    return url


def agent_sockets(values: list[str]) -> dict[str, str]:
    """All --agent-socket values as `{"namespace/name": path}`."""
    return dict(parse_agent_socket(value) for value in values)


def launcher_options(pods_dir: str | None, template: str | None) -> dict[str, str]:
    """`--launcher-pods-dir` (made absolute) and `--launcher-uri` as collector settings (the ones given)."""
    options: dict[str, str] = {}
    if template is not None:
        if "{socket}" not in template:
            raise UsageError(f"--launcher-uri {template!r}: it must contain {{socket}}, the launcher's socket path")
        options["launcher_uri"] = template
    if pods_dir is not None:
        options["launcher_pods_dir"] = str(Path(pods_dir).absolute())
    elif template is not None:
        raise UsageError("--launcher-uri needs --launcher-pods-dir")
    return options


def parse_shard(value: str) -> tuple[int, int]:
    """`I/N` for --shard: this replica is shard I of N (0 <= I < N)."""
    index, sep, count = value.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or not 0 <= int(index) < int(count):
        raise UsageError(f"--shard {value!r}: expected I/N with 0 <= I < N, e.g. 0/1 (all partitions) or 1/3")
    return int(index), int(count)
