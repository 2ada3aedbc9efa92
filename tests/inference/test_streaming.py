"""TextAssembler: chunks of text with the token ids they came from, and replay after failover."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from inference.generation import TokenChunk
from inference.streaming import TextAssembler, split_at_stop


def run(
    pieces: list[bytes], stops: tuple[str, ...] = (), replayed: int = 0
) -> tuple[list[TokenChunk], tuple[int, ...], bool]:
    """Token i has id i and bytes pieces[i]; the first `replayed` are replayed."""
    asm = TextAssembler(stops)
    for piece in pieces[:replayed]:
        asm.replay(piece)
    chunks = []
    for token in range(replayed, len(pieces)):
        chunk = asm.add(token, pieces[token])
        if chunk is not None:
            chunks.append(chunk)
        if asm.stopped:
            break
    if not asm.stopped:
        chunk = asm.finish()
        if chunk is not None:
            chunks.append(chunk)
    return chunks, asm.unreleased, asm.stopped


def test_plain_tokens_go_out_one_by_one() -> None:
    chunks, rest, stopped = run([b"hello", b" ", b"world"])
    assert [(c.text, c.token_ids, c.token_count) for c in chunks] == [
        ("hello", (0,), 1),
        (" ", (1,), 1),
        ("world", (2,), 1),
    ]
    assert rest == () and not stopped


def test_a_split_utf8_character_waits_for_its_second_token() -> None:
    chunks, _, _ = run([b"caf", b"\xc3", b"\xa9", b"!"])
    assert [(c.text, c.token_ids) for c in chunks] == [("caf", (0,)), ("é", (1, 2)), ("!", (3,))]


def test_a_possible_stop_string_holds_back_whole_tokens() -> None:
    asm = TextAssembler(("rld",))
    assert asm.add(0, b"hello") == TokenChunk("hello", 1, (0,))
    # " wor" ends in "r", which may begin "rld": the whole token waits, not just the "r"
    assert asm.add(1, b" wor") is None
    chunk = asm.add(2, b"ld!")
    assert asm.stopped
    assert chunk == TokenChunk(" wo", 1, (1,))
    assert asm.unreleased == (2,)


def test_stop_string_at_the_very_start_releases_nothing() -> None:
    chunks, rest, stopped = run([b"ST", b"OP", b"more"], ("STOP",))
    assert chunks == [] and rest == (0, 1) and stopped


def test_held_text_is_released_at_the_end() -> None:
    chunks, rest, stopped = run([b"abc", b" wo"], ("world",))
    assert [c.text for c in chunks] == ["abc", " wo"] and not stopped
    assert chunks[-1].token_ids == (1,) and rest == ()


def test_unfinished_character_at_the_end_becomes_a_replacement_character() -> None:
    chunks, _, _ = run([b"x", b"\xe2\x82"])
    assert "".join(c.text for c in chunks) == "x\ufffd"
    assert [c.token_ids for c in chunks] == [(0,), (1,)]


def test_a_token_ending_inside_a_character_is_never_released_alone() -> None:
    # the second token completes an invalid sequence (U+FFFD) and starts another character
    chunks, _, _ = run([b"\xe2\x82", b"\xe2\x82", b"!"])
    assert [(c.text, c.token_ids) for c in chunks] == [("\ufffd\ufffd!", (0, 1, 2))]


def test_tokens_without_text_ride_with_the_next_text_or_end_in_done() -> None:
    chunks, rest, _ = run([b"", b"a", b""])
    assert [(c.text, c.token_ids) for c in chunks] == [("a", (0, 1))]
    assert rest == (2,)


def test_replayed_half_character_is_completed_by_the_next_token() -> None:
    chunks, _, _ = run([b"\xc3", b"\xa9t\xc3\xa9"], replayed=1)
    assert [c.text for c in chunks] == ["été"]


def test_split_at_stop() -> None:
    assert split_at_stop("hello wor", ("world",)) == ("hello ", "wor", False)
    assert split_at_stop("hello world!", ("world",)) == ("hello ", "", True)
    assert split_at_stop("abc", ()) == ("abc", "", False)


PIECES = st.lists(
    st.sampled_from(
        [b"a", b"b", b" ", b"ab", b"ba ", b"\xc3", b"\xa9", b"\xc3\xa9", b"\xe2\x82", b"\xac", b""]
    ),
    min_size=1,
    max_size=30,
)
STOPS = st.lists(st.text(alphabet="ab é€", min_size=1, max_size=4), max_size=2).map(tuple)


@given(PIECES, STOPS)
def test_chunks_and_done_account_for_every_token(
    pieces: list[bytes], stops: tuple[str, ...]
) -> None:
    chunks, rest, stopped = run(pieces, stops)
    ids = [t for c in chunks for t in c.token_ids] + list(rest)
    assert ids == list(range(len(ids)))
    assert all(c.text and c.token_count == len(c.token_ids) >= 1 for c in chunks)
    if not stopped:
        assert len(ids) == len(pieces)
        assert "".join(c.text for c in chunks) == b"".join(pieces).decode("utf-8", "replace")


@given(PIECES, STOPS, st.data())
def test_resuming_from_any_chunk_gives_the_uninterrupted_text(
    pieces: list[bytes], stops: tuple[str, ...], data: st.DataObject
) -> None:
    """Failover: a client that has received chunks[:k] replays their ids on another node; that
    node's text appended to what the client has is the uninterrupted text."""
    chunks, rest, stopped = run(pieces, stops)
    k = data.draw(st.integers(0, len(chunks)))
    received = chunks[:k]
    have = [t for c in received for t in c.token_ids]
    assert have == list(range(len(have)))  # a prefix of the generation
    if len(have) == len(pieces) or (stopped and k == len(chunks)):
        return  # the generation had ended: nothing to resume
    resumed, resumed_rest, resumed_stopped = run(pieces, stops, replayed=len(have))
    assert "".join(c.text for c in received + resumed) == "".join(c.text for c in chunks)
    assert [t for c in received + resumed for t in c.token_ids] + list(resumed_rest) == [
        t for c in chunks for t in c.token_ids
    ] + list(rest)
    assert resumed_stopped == stopped
