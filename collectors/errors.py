"""The collector's error tree: everything an agent call can fail with is an `AgentError`."""

from __future__ import annotations


class CollectorError(Exception):
    """Root of the errors raised by the collector stage."""


class DomainXMLError(CollectorError):
    """A domain XML that cannot be parsed safely (malformed, too large, DTD or entities)."""


class AgentError(CollectorError):
    """An agent call failed."""


class AgentUnavailable(AgentError):
    """The agent cannot be reached: no socket, connection refused or closed, channel not connected."""


class AgentTimeout(AgentError):
    """The agent did not answer within the call's timeout."""


class AgentCommandError(AgentError):
    """The agent answered with `{"error": {"class": ..., "desc": ...}}`."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"{command}: {error_class}: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


class AgentProtocolError(AgentError):
    """The agent answered something that is not a valid reply: bad JSON, too large, too deep, bad shape."""


class AgentReplyError(AgentProtocolError):
    """A well-formed reply whose `return` value does not have the shape documented for its command."""

    def __init__(self, command: str, reason: str) -> None:
        super().__init__(f"{command}: {reason}")
        self.command = command
        self.reason = reason
