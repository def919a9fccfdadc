"""Membership by heartbeat: pure logic with no sockets and an injected clock.

The control daemon feeds it heartbeats and asks it which members have gone
quiet; tests drive it with a fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Membership"]


@dataclass
class _Member:
    info: dict[str, Any]
    last_seen: float


@dataclass
class Membership:
    """Members that have sent a heartbeat within `dead_after` seconds."""

    dead_after: float
    _members: dict[str, _Member] = field(default_factory=dict)

    def beat(self, member_id: str, info: dict[str, Any], now: float) -> bool:
        """Record a heartbeat; True when this is a new member."""
        member = self._members.get(member_id)
        if member is None:
            self._members[member_id] = _Member(info, now)
            return True
        member.info = info
        member.last_seen = now
        return False

    def leave(self, member_id: str) -> bool:
        return self._members.pop(member_id, None) is not None

    def expire(self, now: float) -> list[str]:
        """Drop and return the members silent for longer than `dead_after`."""
        gone = [
            mid
            for mid, m in self._members.items()
            if now - m.last_seen > self.dead_after
        ]
        for mid in gone:
            del self._members[mid]
        return gone

    def next_expiry(self) -> float | None:
        """The earliest time at which some member would expire."""
        if not self._members:
            return None
        return min(m.last_seen for m in self._members.values()) + self.dead_after

    def members(self) -> list[dict[str, Any]]:
        return [dict(m.info, id=mid) for mid, m in sorted(self._members.items())]

    def __len__(self) -> int:
        return len(self._members)
