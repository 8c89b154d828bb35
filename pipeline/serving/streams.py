"""The open streams of one replica: who they are, when they were last used, when they expire.

Pure Python with an injectable clock (no Ray, no torch), so expiry is tested without waiting. Each entry holds
whatever the replica keeps per stream (an `OnlineStream`) and an asyncio lock that serialises its requests.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

# Stream ids are minted by the server (128 random bits, hex); anything else is refused before any lookup.
_ID = re.compile(r"^[0-9a-f]{32}$")
# How many expired ids are remembered, to tell "expired" from "unknown" in the 404's message.
_REMEMBERED = 4096


def new_stream_id() -> str:
    return secrets.token_hex(16)


def valid_stream_id(stream_id: str) -> bool:
    return bool(_ID.match(stream_id))


class StreamError(Exception):
    """A request about a stream that cannot be served: `status` is the HTTP code, `reason` a stable code."""

    def __init__(self, status: int, reason: str, detail: str):
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail


@dataclass
class _Entry:
    state: Any
    idle_s: float
    last_used: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class StreamTable:
    """At most `max_streams` streams; one unused for its idle time is expired on the next look at it (and by
    `sweep`, which the replica calls periodically to free memory)."""

    def __init__(self, *, max_streams: int, clock: Callable[[], float] = time.monotonic):
        self.max_streams = max_streams
        self.clock = clock
        self._entries: dict[str, _Entry] = {}
        self._expired: OrderedDict[str, float] = OrderedDict()  # id -> idle time it expired after

    def __len__(self) -> int:
        return len(self._entries)

    def create(self, stream_id: str, state: Any, *, idle_s: float) -> None:
        self.sweep()
        if len(self._entries) >= self.max_streams:
            raise StreamError(429, "too_many_streams",
                              f"{self.max_streams} streams are open on this replica; end one (DELETE) or retry "
                              f"after idle streams expire")
        self._entries[stream_id] = _Entry(state, idle_s, self.clock())

    def get(self, stream_id: str, *, touch: bool = True) -> _Entry:
        """The live entry (its idle clock restarted unless `touch` is False: looking at a stream does not keep it
        alive), or StreamError 404 saying unknown or expired."""
        entry = self._entries.get(stream_id)
        now = self.clock()
        if entry is not None and now - entry.last_used > entry.idle_s:
            self._expire(stream_id, entry)
            entry = None
        if entry is None:
            if stream_id in self._expired:
                raise StreamError(404, "expired_stream",
                                  f"stream {stream_id} expired after {self._expired[stream_id]:g} s without "
                                  f"frames; open a new one (POST /v1/streams)")
            raise StreamError(404, "unknown_stream", f"no stream {stream_id}; open one with POST /v1/streams")
        if touch:
            entry.last_used = now
        return entry

    def touch(self, entry: _Entry) -> None:
        """Restart the idle clock after a request finished (a long forward pass must not count as idle)."""
        entry.last_used = self.clock()

    def remove(self, stream_id: str) -> None:
        self._entries.pop(stream_id, None)

    def sweep(self) -> int:
        """Expire every stream past its idle time; how many were expired."""
        now = self.clock()
        stale = [(k, e) for k, e in self._entries.items() if now - e.last_used > e.idle_s and not e.lock.locked()]
        for k, e in stale:
            self._expire(k, e)
        return len(stale)

    def _expire(self, stream_id: str, entry: _Entry) -> None:
        self._entries.pop(stream_id, None)
        self._expired[stream_id] = entry.idle_s
        while len(self._expired) > _REMEMBERED:
            self._expired.popitem(last=False)
