"""Bounds on guest-provided data. Everything the guest agent says is written by the tenant."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

#: Longest string kept from the guest (names, versions, paths, addresses).
MAX_STRING = 1024
#: Longest list of users, filesystems, interfaces or commands kept from one reply.
MAX_ITEMS = 1024
#: Addresses kept per guest interface; disks kept per filesystem.
MAX_ADDRESSES = 256
MAX_DISKS = 64
#: Largest reply accepted from the guest agent for one command, in bytes.
MAX_REPLY_BYTES = 1024 * 1024
#: Deepest JSON nesting accepted in an agent reply.
MAX_REPLY_DEPTH = 16
#: Guest-only interfaces (MAC matching no domain interface) added to status.interfaces (upstream: 10).
GUEST_ONLY_INTERFACE_LIMIT = 10
#: Users and filesystems in the guestosinfo body (upstream GetUsers(10) / GetFS(10)).
GUESTOSINFO_LIST_LIMIT = 10

GuestString = Annotated[str, Field(max_length=MAX_STRING)]
#: Longest Prometheus label value made of guest data (the guest metrics sink cuts longer ones).
MAX_LABEL_VALUE = 256
#: Filesystems and guest interfaces of one VMI in series, at most (the first ones, in the agent's order):
#: one guest's mounts or interfaces cannot blow up the cardinality of the fleet's metrics.
MAX_FILESYSTEM_SERIES = 32
MAX_INTERFACE_SERIES = 32
