"""What a pull reports while it runs and when it ends, for the CLI's progress bar and `--json`.

The fetcher calls a `ProgressCallback` with a `PullProgress` after each verified chunk (the CLI
draws a tqdm bar from it: tqdm derives the rate and the ETA from the byte counts), and returns a
`PullResult`, which `result_json` turns into the one JSON object `gpunet pull --json` prints.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs


@attrs.frozen
class PullProgress:
    total_bytes: int
    verified_bytes: int  # on disk and checked, resumed chunks included
    resumed_bytes: int  # of those, found on disk from an earlier pull
    peers: int  # peers still fetching
    strikes: int  # chunks that failed their hash so far


ProgressCallback = Callable[[PullProgress], None]


def no_progress(_p: PullProgress) -> None:
    return None


@attrs.frozen
class PeerShare:
    peer_id: str
    chunks: int
    dropped: str  # why it was dropped, "" if it stayed to the end


@attrs.frozen
class PullResult:
    path: Path
    sha256: str
    name: str
    size: int
    fetched_bytes: int  # over the network in this run
    resumed_bytes: int
    seconds: float
    peers: tuple[PeerShare, ...] = ()
    strikes: int = 0
    already_present: bool = False  # nothing fetched: the cache held it
    other_files: tuple[tuple[str, int], ...] = ()  # (sha256, providers) of the name's others

    @property
    def rate_mb_s(self) -> float:
        return self.fetched_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


def result_json(result: PullResult) -> dict[str, Any]:
    return {
        "path": str(result.path),
        "sha256": result.sha256,
        "name": result.name,
        "size": result.size,
        "fetched_bytes": result.fetched_bytes,
        "resumed_bytes": result.resumed_bytes,
        "seconds": round(result.seconds, 3),
        "mb_per_s": round(result.rate_mb_s, 1),
        "already_present": result.already_present,
        "strikes": result.strikes,
        "peers": [
            {"peer_id": p.peer_id, "chunks": p.chunks, "dropped": p.dropped or None}
            for p in result.peers
        ],
        "other_files": [{"sha256": s, "providers": n} for s, n in result.other_files],
    }
