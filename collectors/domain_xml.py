"""Domain XML → `DomainReport`: the domain side of a KubeVirt VMI, as libvirt describes it.

The XML comes from libvirt, but parts of it (aliases, metadata) derive from tenant-written specs, so it
is parsed defensively: bounded size, no DTD, no entities.

guestinfo's own domain metadata
-------------------------------
KubeVirt's `<kubevirt:kubevirt>` metadata cannot say which binding an interface uses or which access
credentials the VMI propagates through the agent (its `<kubevirt:accessCredential>` only carries
`succeeded`/`message`). guestinfo therefore defines a metadata element of its own, beside KubeVirt's
(libvirt keeps one metadata element per namespace, so it never collides with KubeVirt's)::

    <metadata>
      <kubevirt:kubevirt xmlns:kubevirt="http://kubevirt.io">...</kubevirt:kubevirt>
      <guestinfo:vmi xmlns:guestinfo="http://guestinfo.kubevirt.io/v1">
        <guestinfo:interface name="default" binding="masquerade"/>
        <guestinfo:interface name="blue" binding="bridge"/>
        <guestinfo:accessCredentials sshPublicKeys="true" userPassword="false"/>
      </guestinfo:vmi>
    </metadata>

- `<guestinfo:interface name binding>`: the VMI spec's binding of the interface `name` (the name of the
  domain interface: its alias without `ua-`, or the SR-IOV network). A binding is a KubeVirt binding
  (`masquerade`, `bridge`, `sriov`, ...) or a network binding plugin's name: letters, digits, `.`, `_`,
  `-`, at most 64 characters. The first element of a name wins; names matching no domain interface
  are ignored.
- `<guestinfo:accessCredentials sshPublicKeys userPassword>`: whether the VMI has access credentials
  propagated through the guest agent, of each kind; `true`/`false` (or `1`/`0`), absent meaning false.

Whoever writes the element (a hook sidecar or the domain's author) is trusted no more than the rest of
the XML: a bad value is ignored with a log line, and only the first `MAX_ITEMS` interface elements
are read. Log lines about the XML's content are rate-limited per VMI and kind (tenant-written data is
read every tick). Without the element, an `<interface type='user'>` with `<backend type='passt'/>` has the
binding `passt`; any other interface's binding is `""` (unknown).
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Literal

from pydantic import ValidationError

from collectors.errors import DomainXMLError
from plumbing.logs import RateLimitedLog
from schemas.events import AccessCredentialNeeds, DomainInterface, DomainReport, ReportOrder, VMIRef, split_domain_name
from schemas.kubevirt import GUEST_AGENT_CHANNEL
from schemas.limits import MAX_ITEMS

log = logging.getLogger(__name__)
_notes = RateLimitedLog(log)


def _note(key: str, kind: str, message: str, *args: object) -> None:
    """A warning about domain `key`'s XML, at most once per VMI and kind per repeat period."""
    _notes.note(logging.WARNING, (key, kind), message, *args)

#: Largest domain XML accepted (a KubeVirt domain is a few tens of kilobytes).
MAX_DOMAIN_XML_BYTES = 4 * 1024 * 1024
KUBEVIRT_NS = "http://kubevirt.io"
GUESTINFO_NS = "http://guestinfo.kubevirt.io/v1"
USER_ALIAS_PREFIX = "ua-"
SRIOV_ALIAS_PREFIX = "sriov-"

DomainState = Literal["running", "paused", "shutoff", "other"]

_BINDING = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}
_PASST_BINDING = "passt"


def parse_domain(
    xml: str, *, node: str, observed_at: float, state: DomainState, order: ReportOrder | None = None
) -> DomainReport | None:
    """The `DomainReport` of a KubeVirt domain, or None when the domain is not KubeVirt's.

    Raises `DomainXMLError` when the XML cannot be parsed safely.
    """
    root = _parse_xml(xml)
    vmi = _vmi_ref(root)
    if vmi is None:
        return None
    metadata = _guestinfo_metadata(root, vmi.key)
    interfaces = _interfaces(root, vmi.key, metadata.bindings)
    unmatched = metadata.bindings.keys() - {interface.name for interface in interfaces}
    if unmatched:
        _notes.note(logging.INFO, (vmi.key, "unmatched"),
                    "domain %s: <guestinfo:interface> names matching no interface ignored: %.300s",
                    vmi.key, ", ".join(sorted(unmatched)))
    try:
        return DomainReport(
            vmi=vmi,
            node=node,
            observed_at=observed_at,
            order=order,
            state=state,
            interfaces=interfaces,
            agent_connected=_agent_connected(root),
            access_credentials=metadata.access_credentials,
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
        _note(name[:300], "bounds", "domain %.300s: name or uid out of bounds, not treated as a KubeVirt domain", name)
        return None


@dataclass
class _GuestinfoMetadata:
    """What guestinfo's own `<guestinfo:vmi>` metadata element says (see the module docstring)."""

    bindings: dict[str, str] = field(default_factory=dict)
    access_credentials: AccessCredentialNeeds = field(default_factory=AccessCredentialNeeds)


def _guestinfo_metadata(root: ET.Element, key: str) -> _GuestinfoMetadata:
    metadata = _GuestinfoMetadata()
    elements = root.findall(f"metadata/{{{GUESTINFO_NS}}}vmi")
    if not elements:
        return metadata
    if len(elements) > 1:
        _note(key, "metadata", "domain %s: %d <guestinfo:vmi> metadata elements, reading the first", key, len(elements))
    element = elements[0]
    interfaces = element.findall(f"{{{GUESTINFO_NS}}}interface")
    if len(interfaces) > MAX_ITEMS:
        _note(key, "metadata-interfaces", "domain %s: %d <guestinfo:interface> elements, reading the first %d",
              key, len(interfaces), MAX_ITEMS)
    for interface in interfaces[:MAX_ITEMS]:
        name, binding = interface.get("name", ""), interface.get("binding", "")
        if not name or len(name) > 253:
            _note(key, "binding-name", "domain %s: <guestinfo:interface> without a valid name ignored", key)
        elif not _BINDING.fullmatch(binding):
            _note(key, "binding", "domain %s: interface %.253s: binding %.80r ignored", key, name, binding)
        elif name in metadata.bindings:
            _note(key, "binding-twice", "domain %s: interface %.253s named twice in <guestinfo:vmi>, keeping the first",
                  key, name)
        else:
            metadata.bindings[name] = binding
    credentials = element.find(f"{{{GUESTINFO_NS}}}accessCredentials")
    if credentials is not None:
        metadata.access_credentials = AccessCredentialNeeds(
            ssh_public_keys=_boolean(credentials, "sshPublicKeys", key),
            user_password=_boolean(credentials, "userPassword", key),
        )
    return metadata


def _boolean(element: ET.Element, attribute: str, key: str) -> bool:
    raw = element.get(attribute)
    if raw is None:
        return False
    value = _BOOLEANS.get(raw.strip())
    if value is None:
        _note(key, "credentials", "domain %s: <guestinfo:accessCredentials %s=%.80r> ignored", key, attribute, raw)
        return False
    return value


def _interfaces(root: ET.Element, key: str, bindings: dict[str, str]) -> list[DomainInterface]:
    devices = root.find("devices")
    if devices is None:
        return []
    found: list[DomainInterface] = []
    for element in devices:
        try:
            if element.tag == "interface":
                found.append(_interface(element, bindings))
            elif element.tag == "hostdev":
                sriov = _sriov_hostdev(element, bindings)
                if sriov is not None:
                    found.append(sriov)
        except ValidationError as exc:
            _note(key, "interface", "domain %s: skipping a <%s> out of bounds: %s", key, element.tag, _first_error(exc))
    if len(found) > MAX_ITEMS:
        _note(key, "interfaces", "domain %s: %d interfaces, keeping the first %d", key, len(found), MAX_ITEMS)
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


def _interface(element: ET.Element, bindings: dict[str, str]) -> DomainInterface:
    alias = _alias(element)
    name = alias.removeprefix(USER_ALIAS_PREFIX) if alias.startswith(USER_ALIAS_PREFIX) else ""
    link = element.find("link")
    link_state: Literal["up", "down"] = "down" if link is not None and link.get("state") == "down" else "up"
    binding = bindings.get(name) if name else None
    if binding is None:
        binding = _binding_from_devices(element)
    return DomainInterface(
        name=name, mac=_mac(element), queue_count=_queues(element), link_state=link_state, binding=binding
    )


def _binding_from_devices(element: ET.Element) -> str:
    """The binding told by the device itself: only passt's user-mode backend says which it is."""
    backend = element.find("backend")
    if element.get("type") == "user" and backend is not None and backend.get("type") == _PASST_BINDING:
        return _PASST_BINDING
    return ""


def _queues(element: ET.Element) -> int:
    driver = element.find("driver")
    raw = driver.get("queues") if driver is not None else None
    try:
        queues = int(raw) if raw is not None else 1
    except ValueError:
        return 1
    return min(max(queues, 1), 1024)


def _sriov_hostdev(element: ET.Element, bindings: dict[str, str]) -> DomainInterface | None:
    # KubeVirt names SR-IOV host devices `ua-sriov-<network>`; older releases used `sriov-<network>`.
    alias = _alias(element).removeprefix(USER_ALIAS_PREFIX)
    if not alias.startswith(SRIOV_ALIAS_PREFIX) or alias == SRIOV_ALIAS_PREFIX:
        return None
    name = alias.removeprefix(SRIOV_ALIAS_PREFIX)
    return DomainInterface(name=name, mac=_mac(element), sriov=True, binding=bindings.get(name, ""))


def _agent_connected(root: ET.Element) -> bool:
    for target in root.iterfind("devices/channel/target"):
        if target.get("name") == GUEST_AGENT_CHANNEL and target.get("state") == "connected":
            return True
    return False
