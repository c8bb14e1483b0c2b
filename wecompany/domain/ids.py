"""Identifiers made by the server."""

from __future__ import annotations

import secrets

#: The largest id: every id (users, meetings, messages, files...) is a signed
#: 64-bit integer in every database, so a larger number names nothing.
MAX_ID = 2**63 - 1

# 2020-01-01T00:00:00Z: ids stay 63-bit positive for ~69 years from here.
_EPOCH_MS = 1577836800000


class IdGenerator:
    """
    Time-ordered 63-bit ids (milliseconds since 2020 | node | sequence).

    Unique across restarts (time moves on) and across up to 1024 nodes of a
    cluster (``node``). ``clock`` is an ``IReactorTime``; if the clock stands
    still or goes backwards the last timestamp is reused with the sequence, so
    ids still increase strictly.
    """

    def __init__(self, clock, node: int | None = None) -> None:
        self._clock = clock
        self._node = (secrets.randbelow(1024) if node is None else node) & 0x3FF
        self._last_ms = 0
        self._seq = 0

    @property
    def node(self) -> int:
        return self._node

    def use_node(self, node: int) -> None:
        """Number the ids from now on with ``node`` (one the cluster gave this node alone)."""
        if not 0 <= node <= 0x3FF:
            raise ValueError("a node number is 0-1023")
        self._node = node

    def next_id(self) -> int:
        now_ms = int(self._clock.seconds() * 1000) - _EPOCH_MS
        if now_ms > self._last_ms:
            self._last_ms = now_ms
            self._seq = 0
        else:
            self._seq += 1
            if self._seq > 0xFFF:  # 4096 ids in one ms: borrow the next ms
                self._last_ms += 1
                self._seq = 0
        return (self._last_ms << 22) | (self._node << 12) | self._seq


def new_call_id() -> str:
    """An unguessable call id (knowing it still grants nothing: parties are checked)."""
    return secrets.token_hex(8)
