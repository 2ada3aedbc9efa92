"""The partial file's in-order sha256: chunks written in any order, from several threads at once
(as the fetcher's worker threads write them), give the whole file's sha256, fed from the disk;
resumed chunks count as written."""

from __future__ import annotations

import hashlib
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from p2p.protocol.share_wire import CHUNK_SIZE, chunk_count, chunk_digest
from p2p.share.pull_files import PartFile

SIZE = 9 * CHUNK_SIZE + 12345


def chunks(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)]


def test_chunks_written_out_of_order_by_many_threads_give_the_whole_sha256(
    tmp_path: Path,
) -> None:
    data = os.urandom(SIZE)
    pieces = chunks(data)
    order = list(range(len(pieces)))
    random.Random(7).shuffle(order)
    part = PartFile(tmp_path / "x.part", SIZE)
    try:
        assert part.whole_sha256 is None
        with ThreadPoolExecutor(4) as pool:
            written = list(
                pool.map(
                    lambda i: part.check_and_write(
                        i, pieces[i], chunk_digest(pieces[i]), len(pieces[i])
                    ),
                    order,
                )
            )
        assert all(written)
        assert part.hashed == chunk_count(SIZE)
        assert part.whole_sha256 == hashlib.sha256(data).hexdigest()
    finally:
        part.close()


def test_a_bad_chunk_is_not_written_and_stops_the_hash_at_its_place(tmp_path: Path) -> None:
    data = os.urandom(SIZE)
    pieces = chunks(data)
    part = PartFile(tmp_path / "x.part", SIZE)
    try:
        part.mark_written([0, 1])  # resumed: assumed on disk (here they are zeros)
        bad = bytes(len(pieces[2]))
        assert not part.check_and_write(2, bad, chunk_digest(pieces[2]), len(pieces[2]))
        for i in range(3, len(pieces)):
            assert part.check_and_write(i, pieces[i], chunk_digest(pieces[i]), len(pieces[i]))
        assert part.hashed == 2 and part.whole_sha256 is None
        assert part.check_and_write(2, pieces[2], chunk_digest(pieces[2]), len(pieces[2]))
        zeros = bytes(2 * CHUNK_SIZE)  # what the resumed chunks hold on disk: hashed as it is
        assert part.whole_sha256 == hashlib.sha256(zeros + data[2 * CHUNK_SIZE :]).hexdigest()
    finally:
        part.close()
