"""Peers a pull caught lying, asked last next time.

A provider whose manifest disagreed with the majority, or whose manifest made a pull fail at the
whole-file check, sent something false under its own signature. It is not banned (a disk error
looks the same from here, and the pull still checks every byte), only put behind the others when
a later pull picks the providers to ask for a manifest: with three honest providers asked first,
a liar no longer gets the chance to make the pull fail at the end.

Remembered for the process (`PROCESS_SUSPECTS`, what `pull` uses by default) and, when given a
file (`SuspectPeers(path)`, e.g. `<data dir>/suspect-peers.json`), for `SUSPECT_FOR_S` (a day)
across processes. The file is small (at most `MAX_SUSPECTS` entries) and a broken one counts as
empty: it only orders providers, so losing it costs nothing but the ordering.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

SUSPECT_FOR_S = 24 * 3600.0
MAX_SUSPECTS = 1024
_MAX_FILE = 1 << 20
_MAX_REASON = 200

T = TypeVar("T")


class SuspectPeers:
    """peer id -> (until, reason), optionally kept in *path*. Not thread-safe: trio's thread."""

    def __init__(self, path: Path | None = None, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._entries: dict[str, tuple[float, str]] = {}
        if path is not None:
            self._entries = _load(path)

    def note(self, peer_id: str, reason: str) -> None:
        """Remember *peer_id* as a liar for `SUSPECT_FOR_S` (again from now, if it was)."""
        self._entries.pop(peer_id, None)
        self._entries[peer_id] = (self._clock() + SUSPECT_FOR_S, reason[:_MAX_REASON])
        while len(self._entries) > MAX_SUSPECTS:  # the oldest note goes first
            self._entries.pop(next(iter(self._entries)))
        self._save()

    def reason(self, peer_id: str) -> str | None:
        """Why *peer_id* is suspect, or None when it is not (or no longer)."""
        entry = self._entries.get(peer_id)
        if entry is None or entry[0] <= self._clock():
            return None
        return entry[1]

    def is_suspect(self, peer_id: str) -> bool:
        return self.reason(peer_id) is not None

    def order(self, items: Iterable[T], peer_id: Callable[[T], str]) -> tuple[T, ...]:
        """*items* with the suspects moved to the end, each group in its given order."""
        listed = list(items)
        return tuple(
            sorted(listed, key=lambda item: self.is_suspect(peer_id(item)))  # stable sort
        )

    def _save(self) -> None:
        if self.path is None:
            return
        now = self._clock()
        body = {p: [until, why] for p, (until, why) in self._entries.items() if until > now}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(OSError):  # a lost note costs the ordering, not the pull
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(body))
            os.replace(tmp, self.path)


def _load(path: Path) -> dict[str, tuple[float, str]]:
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_FILE + 1)
        data = json.loads(raw) if len(raw) <= _MAX_FILE else {}
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    entries: dict[str, tuple[float, str]] = {}
    for peer, value in list(data.items())[-MAX_SUSPECTS:]:
        if (
            isinstance(peer, str)
            and isinstance(value, list)
            and len(value) == 2
            and isinstance(value[0], int | float)
            and isinstance(value[1], str)
        ):
            entries[peer] = (float(value[0]), value[1][:_MAX_REASON])
    return entries


# What `pull` remembers when it is given no other: for the life of the process.
PROCESS_SUSPECTS = SuspectPeers()
