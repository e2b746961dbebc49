"""Domain XML → `DomainReport`: the domain side of a KubeVirt VMI, as libvirt describes it.

The XML comes from libvirt, but parts of it (aliases, metadata) derive from tenant-written specs, so it
is parsed defensively: bounded size, no DTD, no entities.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from typing import Literal

from pydantic import ValidationError

from collectors.errors import DomainXMLError
from schemas.events import DomainInterface, DomainReport, VMIRef, split_domain_name
from schemas.kubevirt import GUEST_AGENT_CHANNEL
from schemas.limits import MAX_ITEMS

log = logging.getLogger(__name__)

#: Largest domain XML accepted (a KubeVirt domain is a few tens of kilobytes).
MAX_DOMAIN_XML_BYTES = 4 * 1024 * 1024
KUBEVIRT_NS = "http://kubevirt.io"
USER_ALIAS_PREFIX = "ua-"
SRIOV_ALIAS_PREFIX = "sriov-"

DomainState = Literal["running", "paused", "shutoff", "other"]


def parse_domain(xml: str, *, node: str, observed_at: float, state: DomainState) -> DomainReport | None:
    """The `DomainReport` of a KubeVirt domain, or None when the domain is not KubeVirt's.

    Raises `DomainXMLError` when the XML cannot be parsed safely.
    """
    root = _parse_xml(xml)
    vmi = _vmi_ref(root)
    if vmi is None:
        return None
    try:
        return DomainReport(
            vmi=vmi,
            node=node,
            observed_at=observed_at,
            state=state,
            interfaces=_interfaces(root, vmi.key),
            agent_connected=_agent_connected(root),
        )
    except ValidationError as exc:
        raise DomainXMLError(f"domain {vmi.key}: {exc}") from exc


def _parse_xml(xml: str) -> ET.Element:
    if len(xml) > MAX_DOMAIN_XML_BYTES:
        raise DomainXMLError(f"domain XML too large ({len(xml)} characters)")
    # libvirt never writes a DTD; refusing one rules out entity expansion of any kind.
    if "<!DOCTYPE" in xml or "<!ENTITY" in xml:
        raise DomainXMLError("domain XML with a DTD or entity declarations is refused")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise DomainXMLError(f"malformed domain XML: {exc}") from exc
    if root.tag != "domain":
        raise DomainXMLError(f"root element is <{root.tag}>, not <domain>")
    return root


def _vmi_ref(root: ET.Element) -> VMIRef | None:
    name = (root.findtext("name") or "").strip()
    identity = split_domain_name(name)
    if identity is None:
        return None
    namespace, vmi_name = identity
    uid = (root.findtext(f"metadata/{{{KUBEVIRT_NS}}}kubevirt/{{{KUBEVIRT_NS}}}uid") or "").strip()
    try:
        return VMIRef(namespace=namespace, name=vmi_name, uid=uid)
    except ValidationError:
        log.warning("domain %.300s: name or uid out of bounds, not treated as a KubeVirt domain", name)
        return None


def _interfaces(root: ET.Element, key: str) -> list[DomainInterface]:
    devices = root.find("devices")
    if devices is None:
        return []
    found: list[DomainInterface] = []
    for element in devices:
        try:
            if element.tag == "interface":
                found.append(_interface(element))
            elif element.tag == "hostdev":
                sriov = _sriov_hostdev(element)
                if sriov is not None:
                    found.append(sriov)
        except ValidationError as exc:
            log.warning("domain %s: skipping a <%s> out of bounds: %s", key, element.tag, _first_error(exc))
    if len(found) > MAX_ITEMS:
        log.warning("domain %s: %d interfaces, keeping the first %d", key, len(found), MAX_ITEMS)
        found = found[:MAX_ITEMS]
    return found


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    return f"{errors[0]['loc']}: {errors[0]['msg']}" if errors else str(exc)


def _alias(element: ET.Element) -> str:
    alias = element.find("alias")
    return "" if alias is None else alias.get("name", "")


def _mac(element: ET.Element) -> str:
    mac = element.find("mac")
    return "" if mac is None else mac.get("address", "")


def _interface(element: ET.Element) -> DomainInterface:
    alias = _alias(element)
    name = alias.removeprefix(USER_ALIAS_PREFIX) if alias.startswith(USER_ALIAS_PREFIX) else ""
    link = element.find("link")
    link_state: Literal["up", "down"] = "down" if link is not None and link.get("state") == "down" else "up"
    return DomainInterface(name=name, mac=_mac(element), queue_count=_queues(element), link_state=link_state)


def _queues(element: ET.Element) -> int:
    driver = element.find("driver")
    raw = driver.get("queues") if driver is not None else None
    try:
        queues = int(raw) if raw is not None else 1
    except ValueError:
        return 1
    return min(max(queues, 1), 1024)


def _sriov_hostdev(element: ET.Element) -> DomainInterface | None:
    # KubeVirt names SR-IOV host devices `ua-sriov-<network>`; older releases used `sriov-<network>`.
    alias = _alias(element).removeprefix(USER_ALIAS_PREFIX)
    if not alias.startswith(SRIOV_ALIAS_PREFIX) or alias == SRIOV_ALIAS_PREFIX:
        return None
    return DomainInterface(name=alias.removeprefix(SRIOV_ALIAS_PREFIX), mac=_mac(element), sriov=True)


def _agent_connected(root: ET.Element) -> bool:
    for target in root.iterfind("devices/channel/target"):
        if target.get("name") == GUEST_AGENT_CHANNEL and target.get("state") == "connected":
            return True
    return False
