"""KubeVirt-like domain XML for libvirt's test driver: the demo's and the simulated fleet's domains."""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr


def kubevirt_domain_xml(namespace: str, name: str, uid: str, macs: list[str]) -> str:
    """A running test-driver domain as KubeVirt names it (`<namespace>_<name>`), with the KubeVirt uid
    metadata, one interface per MAC (aliases `ua-default`, `ua-net1`, …) and the guest-agent channel."""
    interfaces = "".join(
        f"""
    <interface type='ethernet'><mac address={quoteattr(mac)}/><model type='virtio'/>"""
        f"""<alias name='ua-{"default" if index == 0 else f"net{index}"}'/></interface>"""
        for index, mac in enumerate(macs)
    )
    return f"""
<domain type='test'>
  <name>{escape(namespace)}_{escape(name)}</name>
  <metadata>
    <kubevirt:kubevirt xmlns:kubevirt="http://kubevirt.io"><kubevirt:uid>{escape(uid)}</kubevirt:uid></kubevirt:kubevirt>
  </metadata>
  <memory unit='KiB'>1048576</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>{interfaces}
    <channel type='unix'><source mode='bind'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
  </devices>
</domain>"""
