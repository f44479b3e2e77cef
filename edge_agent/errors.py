"""The exception tree of edge-agent.

    EdgeAgentError
    ├── ConfigError            the YAML file is unreadable or invalid (carries every problem)
    ├── SourceError            a meter could not be read
    │   ├── SourceTimeout      no answer within the timeout
    │   ├── SourceUnavailable  connection refused, reset or not yet established
    │   ├── SourceRejected     the device answered with an exception / bad status
    │   │                      (illegal address, wrong unit id, bad node id)
    │   └── SourceSecurityError  OPC UA security policy, certificate or user rejected
    ├── DecodeError            register contents cannot be turned into a value
    ├── EventRejected          an MES event failed validation (reason and code)
    ├── StoreError             the local database failed
    └── FootprintError         records that cannot become a PACT footprint (names the lot)

Adapters catch library exceptions and raise these ``from`` the original, so the shell never
depends on pymodbus, asyncua or paho exception types.
"""

from __future__ import annotations

import sys


class EdgeAgentError(Exception):
    """Base of every error edge-agent raises on purpose."""


class ConfigError(EdgeAgentError):
    """Invalid configuration; ``problems`` lists every ``key.path: message`` found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))

    def report(self, source: str) -> None:
        """On stderr, as every command prints them: a count, then one line per problem."""
        print(f"{source}: {len(self.problems)} problem(s)", file=sys.stderr)
        for problem in self.problems:
            print(f"  {problem}", file=sys.stderr)


class SourceError(EdgeAgentError):
    """A meter could not be read."""


class SourceTimeout(SourceError):
    """The device did not answer in time."""


class SourceUnavailable(SourceError):
    """No connection to the device (refused, reset, unreachable)."""


class SourceRejected(SourceError):
    """The device answered with an error (Modbus exception, OPC UA bad status)."""


class SourceSecurityError(SourceError):
    """OPC UA security mismatch: policy, certificate trust or user identity rejected."""


class DecodeError(EdgeAgentError):
    """Register or node contents cannot be decoded to a value."""


class EventRejected(EdgeAgentError):
    """An MES event is malformed or inconsistent with known state.

    ``code`` is short and countable (metrics, dead letters); the message names the field, the
    bad value and what was expected.
    """

    def __init__(self, reason: str, code: str = "invalid_field") -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class StoreError(EdgeAgentError):
    """The local SQLite store failed."""


class FootprintError(EdgeAgentError):
    """Records that cannot become a footprint: an incomplete lot, no good quantity, a product
    without the information PACT requires. The message names the lot or product and why."""
