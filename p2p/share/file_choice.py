"""Which file a pull fetches, from whom, and by which manifest.

The file: by sha256, exactly that one; by name, the sha256 the most providers serve under that
name (the others are reported, so the user can pull one of them by sha256). The providers are
the nodes whose signed records list it.

The manifest: asked of up to `MANIFEST_PEERS` providers at once; the (size, manifest root) most
of them agree on is used, and a provider whose manifest disagrees is not asked for chunks. A
manifest cannot be checked against the file's sha256 before the whole file is there, so this
vote is what keeps one lying provider from steering a pull; providers that were not asked are
held to the chosen manifest chunk by chunk.
"""

from __future__ import annotations

from collections import Counter

import attrs
import trio

from p2p.client.network import Client, describe_offer, lookup_key
from p2p.dht.records import CapabilityRecord
from p2p.errors import ErrorCode
from p2p.model_match import model_matches
from p2p.protocol import wire
from p2p.protocol.share_wire import MANIFEST_PAGE
from p2p.session.pool import MultiplexedSession
from p2p.session.secure import SessionError
from p2p.share.manifest import manifest_root
from p2p.share.pull_files import PullError
from p2p.share.suspects import SuspectPeers

MANIFEST_PEERS = 3
MANIFEST_TIMEOUT_S = 15.0  # one page: at most 512 KiB of hashes
DIAL_TIMEOUT_S = 10.0


@attrs.frozen
class FileChoice:
    sha256: str
    name: str
    providers: tuple[CapabilityRecord, ...]
    others: tuple[tuple[str, int], ...] = ()  # (sha256, providers) of other files of the name


@attrs.frozen
class Manifest:
    size: int
    hashes: tuple[bytes, ...]
    root: bytes
    senders: tuple[str, ...] = ()  # the peers that sent it (set on the one agreed on)


async def choose_file(client: Client, wanted: str) -> FileChoice:
    """The file *wanted* names and its providers; `PullError(UNKNOWN_MODEL)` when nobody
    serves it."""
    records, _ = await client.find_records(lookup_key(wanted, client.network_id), fresh=True)
    by_sha: dict[str, dict[str, CapabilityRecord]] = {}
    names: dict[str, str] = {}
    for r in records:
        if r.withdrawn or r.peer_id == client.identity.peer_id:
            continue
        for m in r.models:
            if model_matches(wanted, m.sha256, m.name):
                by_sha.setdefault(m.sha256, {})[r.peer_id] = r
                names.setdefault(m.sha256, m.name)
    if not by_sha:
        raise PullError(
            f"no node serves {wanted!r:.80}; the network offers: {await describe_offer(client)}",
            ErrorCode.UNKNOWN_MODEL,
        )
    counts = Counter({sha: len(peers) for sha, peers in by_sha.items()})
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    sha256 = ranked[0][0]
    return FileChoice(sha256, names[sha256], tuple(by_sha[sha256].values()), tuple(ranked[1:]))


async def open_session(client: Client, record: CapabilityRecord) -> MultiplexedSession:
    with trio.move_on_after(DIAL_TIMEOUT_S):
        return await client.pool.get(record.peer_id, record.addresses, record.relays)
    raise SessionError(f"no session with {record.peer_id[:12]} within {DIAL_TIMEOUT_S:g} s")


async def ask(
    session: MultiplexedSession, msg: wire.Request, timeout_s: float
) -> wire.Message | str:
    """The one answer to *msg*, or why none came in time; `SessionError` when the session
    broke (the caller drops that peer)."""
    async with session.request(msg) as (_rid, inbox):
        with trio.move_on_after(timeout_s):
            answer = await inbox.receive()
            if isinstance(answer, SessionError):
                raise answer
            return answer
    return f"no answer within {timeout_s:g} s"


async def fetch_manifest(session: MultiplexedSession, sha256: str) -> Manifest | str:
    """One peer's manifest of *sha256*, page by page, or why it gave none."""
    hashes: list[bytes] = []
    size = 0
    total = 1
    while len(hashes) < total:
        first = len(hashes)
        answer = await ask(session, wire.FetchManifest(0, sha256, first), MANIFEST_TIMEOUT_S)
        if isinstance(answer, str):
            return answer
        if isinstance(answer, wire.Error):
            return f"{answer.code.value}: {answer.message:.200}"
        if not isinstance(answer, wire.ManifestPage):
            return f"answered a manifest request with {type(answer).__name__}"
        if answer.sha256 != sha256 or answer.first != first or (size and answer.size != size):
            return "sent a manifest page of another file or place"
        size, total = answer.size, answer.total_chunks
        hashes.extend(answer.hashes)
        if first + MANIFEST_PAGE < total and len(answer.hashes) != MANIFEST_PAGE:
            return "sent a short manifest page"
    return Manifest(size, tuple(hashes), manifest_root(hashes))


async def agreed_manifest(
    client: Client, choice: FileChoice, suspects: SuspectPeers | None = None
) -> tuple[Manifest, list[CapabilityRecord], list[str]]:
    """The manifest most of the first providers that answer agree on, the providers that may
    be asked for chunks (those whose manifest agreed, and those not asked), and the problems
    met on the way. *suspects*: peers that lied to an earlier pull are asked last, and a peer
    whose manifest disagrees here is noted there."""
    answers: dict[str, Manifest] = {}
    problems: list[str] = []
    pending = list(choice.providers)
    if suspects is not None:
        pending = list(suspects.order(pending, lambda r: r.peer_id))
    asked: set[str] = set()

    async def one(record: CapabilityRecord) -> None:
        try:
            session = await open_session(client, record)
            got = await fetch_manifest(session, choice.sha256)
        except SessionError as exc:
            got = str(exc)
        if isinstance(got, Manifest):
            answers[record.peer_id] = got
        else:
            problems.append(f"{record.peer_id[:12]}: {got}")

    while pending and len(answers) < MANIFEST_PEERS:
        batch = pending[: MANIFEST_PEERS - len(answers)]
        pending = pending[len(batch) :]
        asked.update(r.peer_id for r in batch)
        async with trio.open_nursery() as nursery:
            for record in batch:
                nursery.start_soon(one, record)
    if not answers:
        raise PullError(
            f"no provider of {choice.name} ({choice.sha256[:12]}) sent its manifest: "
            + "; ".join(problems[-3:]),
            ErrorCode.UNAVAILABLE,
        )
    votes = Counter((m.size, m.root) for m in answers.values())
    (size, root), _n = max(votes.items(), key=lambda kv: kv[1])
    manifest = next(m for m in answers.values() if (m.size, m.root) == (size, root))
    for peer, m in answers.items():
        if (m.size, m.root) != (size, root):
            problems.append(f"{peer[:12]}: its manifest disagrees with the others'; not asked")
            if suspects is not None:
                suspects.note(peer, "its manifest disagreed with the majority's")
    senders = tuple(p for p, m in answers.items() if (m.size, m.root) == (size, root))
    manifest = attrs.evolve(manifest, senders=senders)
    usable = [
        r
        for r in choice.providers
        if (r.peer_id in answers and answers[r.peer_id].root == root) or r.peer_id not in asked
    ]
    if suspects is not None:
        usable = list(suspects.order(usable, lambda r: r.peer_id))
    return manifest, usable, problems
