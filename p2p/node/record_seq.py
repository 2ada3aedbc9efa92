"""The record sequence number: never backwards, across restarts and a clock set back.

Milliseconds since the epoch already move forward; the file in the data dir holds the last number
signed, so a restarted node whose clock went back still publishes records that sort after its
old ones (a store keeps the record with the higher number).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

SEQ_FILE = "record-seq"


class RecordSequence:
    def __init__(self, data_dir: Path) -> None:
        self._path = data_dir / SEQ_FILE
        self._last = _read(self._path)

    def next(self, now: float) -> int:
        """A number above every one handed out before (here or by an earlier run), persisted."""
        self._last = max(self._last + 1, int(now * 1000))
        _write(self._path, self._last)
        return self._last


def _read(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


def _write(path: Path, seq: int) -> None:
    try:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(seq))
        tmp.replace(path)
    except OSError as exc:
        log.warning("cannot persist the record sequence number in %s: %s", path, exc)
