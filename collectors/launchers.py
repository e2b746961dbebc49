"""virt-launcher pods on this node, and the libvirt URI of each one's own daemon.

On a KubeVirt node every virt-launcher pod runs a libvirt daemon (virtqemud) for its one VMI. Its
socket is `/var/run/libvirt/virtqemud-sock` in the pod, where `/var/run/libvirt` is the pod's
emptyDir volume `libvirt-runtime`; the kubelet keeps that volume on the node at
`<pods dir>/<pod uid>/volumes/kubernetes.io~empty-dir/libvirt-runtime/`. virt-launcher itself connects
with `qemu+unix:///session?socket=/var/run/libvirt/virtqemud-sock` (docs/upstream-behaviour.md §7).

A launcher is present while its `libvirt-runtime` folder is: when the kubelet removes the pod's
folder, the launcher is gone and so are its VMIs. A launcher whose socket is missing or whose daemon
does not answer is still present (starting, restarting, or busy): its listing fails and nothing of it is
reported removed.

A unix socket's address holds at most 107 bytes, and `/var/lib/kubelet/pods/<uid>/volumes/
kubernetes.io~empty-dir/libvirt-runtime/virtqemud-sock` is 121: libvirt refuses to connect to it. A
socket whose path is too long is reached through a symbolic link with a short path (`links_dir`);
the kernel follows it when connecting.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from urllib.parse import quote

#: Where a pod's `libvirt-runtime` emptyDir lives below its folder in the kubelet's pods folder.
RUNTIME_DIR = os.path.join("volumes", "kubernetes.io~empty-dir", "libvirt-runtime")
#: The daemon's socket in that folder.
SOCKET_NAME = "virtqemud-sock"
#: How virt-launcher reaches its daemon; `{socket}` is the socket's path on this node.
DEFAULT_LAUNCHER_URI = "qemu+unix:///session?socket={socket}"


@dataclass(frozen=True, slots=True)
class Launcher:
    """One virt-launcher pod's daemon: the pod's uid, its socket on this node and the URI to reach it."""

    pod_uid: str
    socket: str
    uri: str


def launcher_uri(template: str, socket: str) -> str:
    """The URI of the daemon listening on `socket`, from a template with `{socket}`."""
    return template.replace("{socket}", quote(socket, safe="/~-_."))


#: The longest path a unix socket address holds (`sun_path` is 108 bytes with its NUL).
SOCKET_PATH_MAX = 107
#: Pod folder names are pod uids; anything else in the pods folder is not a pod.
_POD_UID = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]{0,63}")


def find_launchers(pods_dir: str, template: str, links_dir: str) -> tuple[dict[str, Launcher], dict[str, str]]:
    """The launchers under `pods_dir` (the kubelet's pods folder), by URI, and the pods (by uid) that
    have a launcher's folder but could not be linked to, with why. A pod folder that cannot be read (torn
    down as it is read) is left out; the pods folder itself missing is an `OSError`. Sockets whose path
    is too long are reached through a link in `links_dir` (made here)."""
    launchers: dict[str, Launcher] = {}
    failed: dict[str, str] = {}
    with os.scandir(pods_dir) as entries:
        for entry in entries:
            if not _POD_UID.fullmatch(entry.name):
                continue
            runtime = os.path.join(entry.path, RUNTIME_DIR)
            try:
                if not entry.is_dir(follow_symlinks=False) or not os.path.isdir(runtime):
                    continue
            except OSError:
                continue
            socket = os.path.join(runtime, SOCKET_NAME)
            try:
                uri = launcher_uri(template, short_path(socket, links_dir, entry.name))
            except OSError as exc:
                failed[entry.name] = f"no short link to its socket in {links_dir}: {exc}"
                continue
            launchers[uri] = Launcher(entry.name, socket, uri)
    return launchers, failed


def short_path(socket: str, links_dir: str, name: str) -> str:
    """`socket`, or when its path is too long for a socket address, a link to it `links_dir/name.sock`."""
    if len(os.fsencode(socket)) <= SOCKET_PATH_MAX:
        return socket
    link = os.path.join(links_dir, f"{name}.sock")
    if len(os.fsencode(link)) > SOCKET_PATH_MAX:
        raise OSError(f"the links folder {links_dir} has too long a path for socket addresses")
    with contextlib.suppress(FileNotFoundError):
        if os.readlink(link) == socket:
            return link
    staged = f"{link}.new"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(staged)
    os.symlink(socket, staged)
    os.replace(staged, link)
    return link


def forget_link(links_dir: str, name: str) -> None:
    """Remove the link of a launcher gone, if it had one."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(links_dir, f"{name}.sock"))
