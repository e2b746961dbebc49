"""`status.interfaces`: domain interfaces merged with what the guest agent reports (docs/upstream-behaviour.md §6).

Rules, in order:
1. Domain `<interface>`s in domain order: `name` (alias without `ua-`), `mac`, `queueCount`,
   `linkState`, `infoSource: "domain"`; then SR-IOV host devices (`sriov-` alias).
2. Guest interfaces are matched by exact, case-sensitive MAC string equality; the one named `lo`
   is dropped. A match gets `interfaceName`, the agent's addresses (IPv4 first, then IPv6, each in
   agent order; `ipAddress` is the first) and the `guest-agent` info source.
3. Unmatched guest interfaces are appended in agent order, at most 10, with no `name` and
   `infoSource: "guest-agent"`.
4. For an interface bound with masquerade, link-local (fe80::/10, 169.254/16) and unparsable
   addresses are dropped (upstream v1.8).
5. Guest interfaces that share a MAC (legacy aliases like `eth0:1`) are one interface: the first
   one's name, all their addresses. Upstream lets the alias overwrite eth0 (kubevirt#9600).
The output depends only on the input, so an unchanged input never yields a different list.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence
from typing import Any

from schemas.limits import GUEST_ONLY_INTERFACE_LIMIT
from streams.reports import DomainInterface, GuestInterface

#: A VirtualMachineInstanceNetworkInterface's JSON (`schemas.kubevirt.NetworkInterface`).
NetworkInterface = dict[str, Any]

SOURCE_DOMAIN = "domain"
SOURCE_GUEST_AGENT = "guest-agent"
SOURCE_MULTUS = "multus-status"
_SOURCE_ORDER = (SOURCE_DOMAIN, SOURCE_GUEST_AGENT, SOURCE_MULTUS)
LOOPBACK = "lo"
MASQUERADE = "masquerade"


def add_info_source(info_source: str, token: str) -> str:
    """Add `token` to an infoSource, keeping the canonical order domain, guest-agent, multus-status."""
    tokens = {t for t in info_source.split(", ") if t} | {token}
    return ", ".join(t for t in _SOURCE_ORDER if t in tokens)


def ordered_addresses(interfaces: Sequence[GuestInterface]) -> list[str]:
    """The addresses of guest interfaces that share one MAC: IPv4 first, then IPv6, each family in
    agent order, without duplicates."""
    ipv4: dict[str, None] = {}
    ipv6: dict[str, None] = {}
    for interface in interfaces:
        for ip in interface.ip_addresses:
            (ipv4 if ip.family == "ipv4" else ipv6).setdefault(ip.address)
    return [*ipv4, *ipv6]


def group_by_mac(guest: Sequence[GuestInterface]) -> list[list[GuestInterface]]:
    """Guest interfaces in agent order, those sharing a MAC (aliases such as `eth0:1`) grouped under
    the first one; `lo` dropped. An interface without a MAC stands alone."""
    groups: list[list[GuestInterface]] = []
    by_mac: dict[str, list[GuestInterface]] = {}
    for interface in guest:
        if interface.name == LOOPBACK:
            continue
        group = by_mac.get(interface.mac) if interface.mac else None
        if group is None:
            group = []
            groups.append(group)
            if interface.mac:
                by_mac[interface.mac] = group
        group.append(interface)
    return groups


@functools.lru_cache(maxsize=8192)
def is_link_local_or_invalid(address: str) -> bool:
    """fe80::/10 and 169.254/16 (Go's netip IsLinkLocalUnicast), or not an address at all.

    Cached (bounded): the same addresses come back in every report, and parsing is most of the cost."""
    try:
        return ipaddress.ip_address(address).is_link_local
    except ValueError:
        return True


def network_interface(*, ip_address: str = "", mac: str = "", name: str = "", ip_addresses: list[str] | None = None,
                      interface_name: str = "", info_source: str = "", queue_count: int = 0,
                      link_state: str = "") -> NetworkInterface:
    """One entry in the model's key order; every field is omitempty."""
    entry = {
        "ipAddress": ip_address, "mac": mac, "name": name, "ipAddresses": ip_addresses,
        "interfaceName": interface_name, "infoSource": info_source, "queueCount": queue_count,
        "linkState": link_state,
    }
    return {key: value for key, value in entry.items() if value}


def domain_interfaces(domain: Sequence[DomainInterface]) -> list[NetworkInterface]:
    """Step 1: the domain's interfaces, then its SR-IOV host devices."""
    plain = [i for i in domain if not i.sriov]
    sriov = [i for i in domain if i.sriov]
    return [
        network_interface(name=i.name, mac=i.mac, info_source=SOURCE_DOMAIN, queue_count=i.queue_count,
                          link_state=i.link_state)
        for i in plain
    ] + [network_interface(name=i.name, mac=i.mac, info_source=SOURCE_DOMAIN) for i in sriov]


def merge_interfaces(
    domain: Sequence[DomainInterface], guest: Sequence[GuestInterface] | None
) -> list[NetworkInterface]:
    """The full `status.interfaces` list for one VMI."""
    merged = domain_interfaces(domain)
    by_mac = {entry["mac"]: index for index, entry in enumerate(merged) if entry.get("mac")}
    masquerade = {i.mac for i in domain if i.binding == MASQUERADE and i.mac}
    guest_only: list[NetworkInterface] = []
    for group in group_by_mac(guest or ()):
        first = group[0]
        addresses = ordered_addresses(group)
        index = by_mac.get(first.mac) if first.mac else None
        if index is not None:
            entry = merged[index]
            if first.mac in masquerade:
                addresses = [a for a in addresses if not is_link_local_or_invalid(a)]
            info_source = entry.get("infoSource", "")
            if first.name:
                info_source = add_info_source(info_source, SOURCE_GUEST_AGENT)
            merged[index] = network_interface(
                ip_address=addresses[0] if addresses else "", mac=entry.get("mac", ""), name=entry.get("name", ""),
                ip_addresses=addresses, interface_name=first.name, info_source=info_source,
                queue_count=entry.get("queueCount", 0), link_state=entry.get("linkState", ""),
            )
        elif len(guest_only) < GUEST_ONLY_INTERFACE_LIMIT:
            guest_only.append(network_interface(
                mac=first.mac, ip_address=addresses[0] if addresses else "", ip_addresses=addresses,
                interface_name=first.name, info_source=SOURCE_GUEST_AGENT,
            ))
    return merged + guest_only
